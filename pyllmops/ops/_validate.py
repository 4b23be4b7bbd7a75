"""Argument checks for the op front doors. Each raises TypeError (wrong type/dtype) or ValueError
(wrong shape/value/device) with a message that names the argument, so bad input never reaches
a kernel. Shape and dtype checks run under torch.compile's fake tensors; value checks (NaN, range)
need real data and run inside the ops."""
from __future__ import annotations

import math
from typing import Iterable, Sequence

import torch

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _names(dtypes: Iterable[torch.dtype]) -> str:
    return ", ".join(str(d).replace("torch.", "") for d in dtypes)


def check_tensor(name: str, t: object, *, dtypes: Sequence[torch.dtype] | None = None,
                 ndim: int | Sequence[int] | None = None, device: torch.device | None = None,
                 allow_empty: bool = False) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if dtypes is not None and t.dtype not in dtypes:
        raise TypeError(f"{name} must have dtype in ({_names(dtypes)}), got {str(t.dtype).replace('torch.', '')}")
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if t.dim() not in allowed:
            raise ValueError(f"{name} must have {' or '.join(map(str, allowed))} dimensions, got shape {tuple(t.shape)}")
    if device is not None and t.device != device:
        raise ValueError(f"{name} is on {t.device} but must be on {device} (same device as the other inputs)")
    if not allow_empty and t.numel() == 0:
        raise ValueError(f"{name} must not be empty, got shape {tuple(t.shape)}")
    return t


def check_shape(name: str, t: torch.Tensor, *allowed: tuple[int, ...]) -> None:
    if tuple(t.shape) not in allowed:
        raise ValueError(f"{name} must have shape {' or '.join(map(str, allowed))}, got {tuple(t.shape)}")


def check_choice(name: str, value: object, choices: Sequence[object]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")


def check_int(name: str, value: object, *, min_value: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if min_value is not None and value < min_value:
        raise ValueError(f"{name} must be >= {min_value}, got {value}")
    return value


def check_finite(name: str, t: torch.Tensor) -> None:
    """Value check (syncs on GPU): run inside ops, on real tensors only."""
    # One number (a per-tensor scale, every call of a static W8A8 layer): read it, skip two ops.
    ok = math.isfinite(t.item()) if t.numel() == 1 else bool(torch.isfinite(t).all())
    if not ok:
        raise ValueError(f"{name} contains NaN or inf")
