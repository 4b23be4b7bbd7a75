"""The one verb: `pyllmops.quantize(model, method, **options)` (defined here, exported at the top
level) quantizes a model in place and returns it.

It sits above its parent quant/ (algorithms on tensors) and nn/ (modules): a method walks the
model, runs an algorithm on each nn.Linear's weight (and, for calibrated methods, its recorded
inputs), and swaps in the matching module. Methods register themselves under their CLI names
from the modules in this package (w8a8.py, weight_only.py); `available_methods()` lists them.
"""
from __future__ import annotations

import contextvars
import warnings
from typing import Any, Callable, Iterable

import torch
from torch import nn

from pyllmops.nn.huge_pages import pack_huge_pages
from pyllmops.quant.methods._walk import linear_layers, replace_module

QuantizeFn = Callable[..., nn.Module]
_METHODS: dict[str, tuple[QuantizeFn, bool]] = {}
_STRICT = contextvars.ContextVar("pyllmops_quantize_strict", default=False)


class QuantizationWarning(UserWarning):
    """A layer that pyllmops.quantize could not treat as the method intends (named in the message)."""


def report(method: str, names: Iterable[str], why: str) -> None:
    """Tell the user that the layers `names` were not treated as `method` intends, and why: a
    QuantizationWarning, or a ValueError inside quantize(..., strict=True). Nothing when empty."""
    names = sorted(names)
    if not names:
        return
    shown = ", ".join(names[:8]) + (f" and {len(names) - 8} more" if len(names) > 8 else "")
    message = f"{method}: {why}: {shown}"
    if _STRICT.get():
        raise ValueError(message + " (strict=True)")
    warnings.warn(message, QuantizationWarning, stacklevel=3)


def register_method(name: str, *, needs_calib: bool) -> Callable[[QuantizeFn], QuantizeFn]:
    """Register fn(model, calib=..., **options) -> model under `name`."""

    def deco(fn: QuantizeFn) -> QuantizeFn:
        _METHODS[name] = (fn, needs_calib)
        return fn

    return deco


def available_methods() -> list[str]:
    _load_methods()
    return sorted(_METHODS)


def quantize(model: nn.Module, method: str, *, calib: Iterable[Any] | None = None, strict: bool = False,
             **options: Any) -> nn.Module:
    """Quantize every eligible nn.Linear of `model` in place with `method`; returns `model`.

    calib: an iterable of calibration batches, each passed as `model(batch)` (a dict as keyword
    arguments, a tuple as positional ones); required by the calibrated methods (see
    available_methods()), ignored by the others. strict: raise a ValueError naming the layers
    that the method could not treat as intended, instead of a QuantizationWarning.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    _load_methods()
    if method not in _METHODS:
        raise ValueError(f"method must be one of {sorted(_METHODS)}, got {method!r}")
    fn, needs_calib = _METHODS[method]
    if needs_calib and calib is None:
        raise ValueError(f"method {method!r} needs calibration data: pass calib=<iterable of model inputs>")
    _linearize_conv1d(model)
    token = _STRICT.set(bool(strict))
    try:
        fn(model, calib=calib, **options)
        skip = tuple(options.get("skip", ("lm_head",)))
        left = [name for name, mod in model.named_modules() if isinstance(mod, nn.Linear)
                and not any(name == s or name.endswith("." + s) for s in skip)]
        report(method, left, "these linear layers were left in float (not an nn.Linear the method handles, "
                             "and not named by skip=)")
    finally:
        _STRICT.reset(token)
    pack_huge_pages(model)  # the packed weights a decode step streams, in 2 MB pages
    return model


def _linearize_conv1d(model: nn.Module) -> None:
    """Replace each transformers-style Conv1D (y = x @ weight + bias, weight [in, out]) by the
    same nn.Linear (weight transposed)."""
    for name, mod in list(model.named_modules()):
        weight = getattr(mod, "weight", None)
        if type(mod).__name__ != "Conv1D" or not isinstance(weight, torch.Tensor) or weight.dim() != 2 \
                or getattr(mod, "nf", None) != weight.shape[1]:
            continue
        lin = nn.Linear(weight.shape[0], weight.shape[1], bias=mod.bias is not None, device="meta")
        lin.weight = nn.Parameter(weight.detach().t().contiguous(), requires_grad=weight.requires_grad)
        if mod.bias is not None:
            lin.bias = nn.Parameter(mod.bias.detach().clone(), requires_grad=mod.bias.requires_grad)
        replace_module(model, name, lin)


def _load_methods() -> None:
    # Importing the method modules registers them; done lazily so `import pyllmops` stays light.
    import importlib
    import pkgutil

    for info in pkgutil.iter_modules(__path__):
        if not info.name.startswith("_"):
            importlib.import_module(f"{__name__}.{info.name}")


__all__ = ["QuantizationWarning", "available_methods", "linear_layers", "quantize", "register_method", "replace_module",
           "report"]
