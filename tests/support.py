"""Running an op forced onto one backend, with the support matrix asserted instead of skipped.

`_dispatch.serves` is the one declaration of what each backend serves (its `supports` function
plus availability). A test that forces a backend either gets a result to compare with its oracle
or, where the declaration says the backend does not serve the call, checks that the forced call is
refused with the dispatch's error. Nothing here turns into a skip: what a backend declines is an
asserted part of the matrix (and tests/ops/test_support_matrix.py pins the matrix itself)."""
from __future__ import annotations

import pytest
import torch

import pyllmops
from pyllmops.ops import _dispatch


def forced(backend: str, op: str, *args, **kwargs) -> torch.Tensor | None:
    """pyllmops.<op>(*args, **kwargs) run on `backend`, or None after asserting that the forced call
    raises because `backend` declares it does not serve these arguments."""
    fn = getattr(pyllmops, op)
    with pyllmops.use_backend(backend):
        if _dispatch.serves(op, backend, args[0].device, *_op_args(op, args, kwargs)):
            return fn(*args, **kwargs)
        with pytest.raises(RuntimeError, match=f"{op}: forced backend"):
            fn(*args, **kwargs)
    return None


def _op_args(op: str, args: tuple, kwargs: dict) -> tuple:
    # the backends' signature has every optional argument spelled out (the front doors' defaults)
    if op == "w4a16_matmul":
        x, qweight, scales, zeros, group_size, *rest = args
        return (x, qweight, scales, zeros, group_size, rest[0] if rest else kwargs.get("g_idx"))
    return args


def compiled(fn):
    """`fn` under torch.compile(fullgraph=True) with CPU inductor: the code around the custom ops
    is generated C++ (compared with an oracle by the compile tests, not with `fn` itself)."""
    return torch.compile(fn, fullgraph=True, backend="inductor")


def cpu_has(flag: str) -> bool:
    """Whether /proc/cpuinfo lists `flag` (e.g. "avx512f"); False where it cannot be read."""
    try:
        with open("/proc/cpuinfo") as f:
            return flag in f.read().split()
    except OSError:
        return False
