"""The compiled extensions, loaded once. Either may be missing (a source tree that was not built,
a machine without CUDA); callers ask `has_cpp()` / `has_cuda()` rather than catching ImportError."""
from __future__ import annotations

import functools
import importlib
from types import ModuleType


@functools.cache
def _load(name: str) -> ModuleType | None:
    try:
        return importlib.import_module(f"pyllmops.{name}")
    except ImportError:
        return None


def cpp() -> ModuleType:
    """pyllmops._C, the torch-free C++ core; raises a clear error when it was not built."""
    mod = _load("_C")
    if mod is None:
        raise RuntimeError(
            "pyllmops._C is not built: install with `pip install --no-build-isolation -e .`")
    return mod


def cuda() -> ModuleType:
    mod = _load("_cuda")
    if mod is None:
        raise RuntimeError("pyllmops._cuda is not built (no nvcc at build time, or PYLLMOPS_CUDA=0)")
    return mod


def has_cpp() -> bool:
    return _load("_C") is not None


def has_cuda() -> bool:
    import torch

    return _load("_cuda") is not None and torch.cuda.is_available()
