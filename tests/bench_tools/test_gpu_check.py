"""bench/gpu_check.sh stops before building anything when prerequisites are missing, and names
every one of them: here pybind11, pytest-benchmark and safetensors are made unimportable (stub
packages that raise ImportError, first on PYTHONPATH), as on a GPU box that lacks them."""
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HIDDEN = {"pybind11": "pybind11", "pytest_benchmark": "pytest-benchmark", "safetensors": "safetensors"}


def test_dry_run_reports_missing_packages(tmp_path):
    stubs = tmp_path / "stubs"
    for mod in HIDDEN:
        (stubs / mod).mkdir(parents=True)
        (stubs / mod / "__init__.py").write_text("raise ImportError('uninstalled for this test')\n")
    env = dict(os.environ, PYTHON=sys.executable, PYTHONPATH=f"{stubs}{os.pathsep}{ROOT}")
    out = tmp_path / "out"
    done = subprocess.run(["bash", str(ROOT / "bench" / "gpu_check.sh"), "--dry-run", str(out)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    text = done.stdout + done.stderr
    assert done.returncode == 3, text
    for dist in HIDDEN.values():
        assert f"MISSING package {dist}" in text, text
    assert "torch" not in [line.split()[2] for line in text.splitlines() if line.startswith("MISSING package")]
    assert "nothing was run" in text
    assert (out / "prereqs.txt").exists() and (out / "steps.txt").read_text() == ""   # no step started


def test_script_parses_and_rejects_unknown_options():
    assert subprocess.run(["bash", "-n", str(ROOT / "bench" / "gpu_check.sh")]).returncode == 0
    done = subprocess.run(["bash", str(ROOT / "bench" / "gpu_check.sh"), "--fast"], capture_output=True, text=True)
    assert done.returncode == 2 and "unknown option --fast" in done.stderr
