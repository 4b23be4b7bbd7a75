"""W8A8 methods for pyllmops.quantize: int8 weights (per output channel) and int8 activations.

    "w8a8"            activations quantized per token at run time; no calibration
    "w8a8-sq"         per token + SmoothQuant smoothing (calibrated)
    "w8a8-static"     one calibrated activation scale per layer (per-tensor, absmax / 127)
    "w8a8-static-sq"  per-tensor static + SmoothQuant; the static scales are calibrated AFTER
                      smoothing, on the activations the quantized layers will actually see

Options: smooth_alpha (migration strength: a number in [0, 1], or "auto", the default as in the
CLI: per smoothing group the alpha of 0.3, 0.35, ..., 0.9 with the smallest W8A8 output error on
calibration rows, see quant.smoothquant.auto_alpha; a fixed 0.5 leaves per-tensor static scales
dominated by the outlier channels; `alpha` is accepted as its alias, which is what the CLI's
--alpha passes), layer_alpha
({fnmatch pattern: alpha} per-layer overrides, e.g. {"*.down_proj": 0.8}), smooth_groups (which
norm / linear feeds which linears: a list of quant.smoothquant.SmoothGroup or (producer,
[linears]) pairs, or a function model -> that list; default: the architecture's groups from
_blocks.FAMILIES, for Llama/Mistral/Qwen2, Phi-3 and GPT-2 module names; a linear in no group
is quantized unsmoothed and reported by name), skip (linear
names left in float, default the LM head), progress (tqdm bars).

The alpha sweep on SmolLM2 (bench/quality_w8a8.py) is in docs/quality.md.

Every eligible nn.Linear becomes a pyllmops.nn.W8A8Linear. To load a saved quantized state_dict,
first give a float model the same structure with `prepare_for_load(model, method)`.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping, Sequence

import torch
from torch import nn

from pyllmops.nn.w8a8 import W8A8Linear
from pyllmops.quant.calibration import input_absmax, input_samples
from pyllmops.quant.smoothquant import SmoothGroup, auto_alpha, smooth_
from pyllmops.quant.methods import register_method, report
from pyllmops.quant.methods._blocks import family_smooth_groups
from pyllmops.quant.methods._walk import linear_layers, replace_module

METHODS = {"w8a8": (False, False), "w8a8-sq": (False, True), "w8a8-static": (True, False), "w8a8-static-sq": (True, True)}
GroupsSpec = Sequence[SmoothGroup | tuple[str, Sequence[str]]] | Callable[[nn.Module], Sequence[SmoothGroup]] | None


def _eligible(model: nn.Module, skip: Iterable[str]) -> list[tuple[str, nn.Linear]]:
    skip = tuple(skip)
    return list(linear_layers(model, lambda name, _: not any(name == s or name.endswith("." + s) for s in skip)))


def _groups(model: nn.Module, spec: GroupsSpec) -> list[SmoothGroup]:
    groups = family_smooth_groups(model) if spec is None else spec(model) if callable(spec) else [
        g if isinstance(g, SmoothGroup) else SmoothGroup(g[0], tuple(g[1])) for g in spec]
    if not groups:
        raise ValueError("SmoothQuant found no norm -> linear groups in this model (it knows the Llama, Phi-3 and "
                         "GPT-2 module names); "
                         "pass smooth_groups=[SmoothGroup(producer, (linear, ...)), ...]")
    return list(groups)


def _progress(items, enabled: bool, desc: str):
    if not enabled:
        return items
    from tqdm.auto import tqdm

    return tqdm(items, desc=desc, unit="layer", leave=False)


def _quantize(model: nn.Module, calib: Iterable[Any] | None, static: bool, smooth: bool, *, smooth_alpha: float | str,
              layer_alpha: Mapping[str, float] | None, smooth_groups: GroupsSpec, skip: Iterable[str],
              progress: bool) -> nn.Module:
    layers = _eligible(model, skip)
    names = [n for n, _ in layers]
    if static or smooth:
        calib = list(calib)  # iterated once or twice
        if not calib:
            raise ValueError("calib is empty: pass at least one calibration batch")
    if smooth:
        groups = _groups(model, smooth_groups)
        consumers = sorted({n for g in groups for n in g.linears})
        report(f"w8a8{'-static' if static else ''}-sq", set(names) - set(consumers),
               "no smoothing group reads these linears (quantized unsmoothed; pass smooth_groups= to smooth them)")
        stats = input_absmax(model, calib, consumers, desc="smoothquant calibration", progress=progress)
        group_alpha = None
        if smooth_alpha == "auto":
            samples = input_samples(model, calib, sorted({g.linears[0] for g in groups}), progress=progress)
            group_alpha = auto_alpha(model, groups, stats, samples, "tensor" if static else "token")
        smooth_(model, groups, stats, alpha=0.5 if smooth_alpha == "auto" else smooth_alpha, layer_alpha=layer_alpha,
                group_alpha=group_alpha)
    absmax = input_absmax(model, calib, names, desc="activation ranges", progress=progress) if static else {}
    for name, lin in _progress(layers, progress, "w8a8"):
        if static:
            if name not in absmax:
                raise ValueError(f"w8a8 static: {name} never ran on the calibration data, so it has no activation range")
            scale = absmax[name].amax().clamp(min=torch.finfo(torch.float32).tiny * 127) / 127
            replace_module(model, name, W8A8Linear.from_linear(lin, "static", scale))
        else:
            replace_module(model, name, W8A8Linear.from_linear(lin, "dynamic"))
    return model


def _method(name: str):
    static, smooth = METHODS[name]

    @register_method(name, needs_calib=static or smooth)
    def method(model: nn.Module, *, calib: Iterable[Any] | None = None, smooth_alpha: float | str = "auto",
               alpha: float | str | None = None, layer_alpha: Mapping[str, float] | None = None,
               smooth_groups: GroupsSpec = None, skip: Iterable[str] = ("lm_head",), progress: bool = True,
               **_ignored: Any) -> nn.Module:
        if alpha is not None:  # the CLI's --alpha
            smooth_alpha = alpha
        if isinstance(smooth_alpha, str) and smooth_alpha != "auto":
            raise ValueError(f"smooth_alpha must be a number in [0, 1] or 'auto', got {smooth_alpha!r}")
        return _quantize(model, calib, static, smooth, smooth_alpha=smooth_alpha, layer_alpha=layer_alpha,
                         smooth_groups=smooth_groups, skip=skip, progress=progress)

    method.__name__ = method.__qualname__ = f"quantize_{name.replace('-', '_')}"
    method.__doc__ = f"pyllmops.quantize(model, {name!r}, ...): see the module docstring."
    return method


for _name in METHODS:
    _method(_name)


def prepare_for_load(model: nn.Module, method: str, skip: Iterable[str] = ("lm_head",)) -> nn.Module:
    """Swap each eligible nn.Linear for an empty W8A8Linear of the same shape (static activations
    for the -static methods), so that `model.load_state_dict(...)` of a model quantized with
    `method` fits. Smoothing changes only float parameters, which the state_dict carries too."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {sorted(METHODS)}, got {method!r}")
    act = "static" if METHODS[method][0] else "dynamic"
    for name, lin in _eligible(model, skip):
        replace_module(model, name, W8A8Linear(lin.in_features, lin.out_features, lin.bias is not None, act,
                                               device=lin.weight.device))
    return model
