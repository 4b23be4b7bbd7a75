"""Shared test set-up. Without a CUDA GPU, TRITON_INTERPRET=1 is set here, before any pyllmops
kernel module is imported (triton.jit reads it then): Triton kernels then run on the CPU. With a
GPU it is left unset, so the `gpu` tests run compiled Triton; an explicit TRITON_INTERPRET wins."""
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


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
