"""The Triton sources sit in kernels/triton/ (installed as pyllmops.kernels). Run from the
repository root, the top-level kernels/ folder is on sys.path ('' or pytest's rootdir); it must
never hide the PyPI package `kernels`, which transformers imports."""
import importlib.util
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_top_level_folder_does_not_shadow_a_kernels_package(tmp_path):
    fake = tmp_path / "site" / "kernels"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("CUDAProperties = 'the installed package'\n")
    code = "import kernels; print(kernels.CUDAProperties)"
    # '' (the repository root) comes first on sys.path, the installed package after it
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         env={"PYTHONPATH": str(tmp_path / "site"), "PATH": ""})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "the installed package"


def test_triton_sources_are_installed_as_pyllmops_kernels():
    for name in ("sampling", "w8a8", "weight_only", "quant_int8"):
        spec = importlib.util.find_spec(f"pyllmops.kernels.{name}")
        assert spec is not None and Path(spec.origin) == ROOT / "kernels" / "triton" / f"{name}.py"
