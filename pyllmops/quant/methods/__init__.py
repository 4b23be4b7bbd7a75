"""The one verb: `pyllmops.quantize(model, method, **options)` (defined here, exported at the top
level) quantizes a model in place and returns it.

It sits above its parent quant/ (algorithms on tensors) and nn/ (modules): a method walks the
model, runs an algorithm on each nn.Linear's weight (and, for calibrated methods, its recorded
inputs), and swaps in the matching module. Methods register themselves under their CLI names
from the modules in this package (w8a8.py, weight_only.py); `available_methods()` lists them.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable

from torch import nn

from pyllmops.quant.methods._walk import linear_layers, replace_module

QuantizeFn = Callable[..., nn.Module]
_METHODS: dict[str, tuple[QuantizeFn, bool]] = {}


def register_method(name: str, *, needs_calib: bool) -> Callable[[QuantizeFn], QuantizeFn]:
    """Register fn(model, calib=..., **options) -> model under `name`."""

    def deco(fn: QuantizeFn) -> QuantizeFn:
        _METHODS[name] = (fn, needs_calib)
        return fn

    return deco


def available_methods() -> list[str]:
    _load_methods()
    return sorted(_METHODS)


def quantize(model: nn.Module, method: str, *, calib: Iterable[Any] | None = None, **options: Any) -> nn.Module:
    """Quantize every eligible nn.Linear of `model` in place with `method`; returns `model`.

    calib: an iterable of calibration batches, each passed as `model(batch)`; required by the
    calibrated methods (see available_methods()), ignored by the others.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    _load_methods()
    if method not in _METHODS:
        raise ValueError(f"method must be one of {sorted(_METHODS)}, got {method!r}")
    fn, needs_calib = _METHODS[method]
    if needs_calib and calib is None:
        raise ValueError(f"method {method!r} needs calibration data: pass calib=<iterable of model inputs>")
    return fn(model, calib=calib, **options)


def _load_methods() -> None:
    # Importing the method modules registers them; done lazily so `import pyllmops` stays light.
    import importlib
    import pkgutil

    for info in pkgutil.iter_modules(__path__):
        if not info.name.startswith("_"):
            importlib.import_module(f"{__name__}.{info.name}")


__all__ = ["available_methods", "linear_layers", "quantize", "register_method", "replace_module"]
