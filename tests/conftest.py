"""Shared test set-up. TRITON_INTERPRET must be set before triton.jit runs, so it is set here,
before any pyllmops kernel module is imported: Triton kernels then run on the CPU."""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (run with -m gpu on a GPU runner)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def seed():
    """A fresh seed per test run (printed on failure) so inputs are new each time."""
    s = int.from_bytes(os.urandom(4), "little")
    torch.manual_seed(s)
    return s


def cpu_backends(op: str) -> list[str]:
    """Every backend of `op` that can run on CPU here (reference excluded): the torch fallback,
    the C++ core, Triton under the interpreter."""
    from pyllmops.ops import available_backends

    return [b for b in available_backends(op, "cpu") if b != "reference"]
