"""Weight-only methods for pyllmops.quantize:

    "w4a16-rtn"   round-to-nearest int4 (group_size=128, bits=4 or 3, symmetric=False); no calib
    "w8a16"       int8 per output channel, symmetric; no calib
    "w4a16-gptq"  GPTQ (quant/gptq.py): act_order=True, mse=True (group range from a shrink
                  grid), block_size=128, damp=0.01, weighting="sink" (unit-norm tokens, the first
                  token of each sequence given sink_share=0.1 of the weight; "uniform" is the
                  paper's H = 2 X X^T). act_order costs the kernels nothing: WeightOnlyLinear
                  permutes its input instead of gathering groups. static_groups=False: True
                  keeps the groups contiguous (no g_idx; what compressed-tensors, which dropped
                  actorder "group", and so today's transformers and vLLM load). awq_scale=False: True runs
                  AWQ's scale search and fold first (awq_tokens rows) and GPTQ on the scaled
                  layers (the AWQ paper's AWQ + GPTQ combination; see docs/quality.md).
    "w4a16-awq"   AWQ (quant/awq.py): clip=True, cv_folds=1 (fit and score on the same rows, as
                  llm-awq/AutoAWQ do; k > 1 cross-validates the scale and clip searches over the
                  calibration batches: batch i is in fold i % k, each fold's error is measured
                  with what was fitted on the other folds, so "no scaling" and "no clipping" win
                  where the fit does not carry over; measured in docs/quality.md), awq_tokens=2048 (rows kept for
                  the scale search; the clip search uses CLIP_TOKENS of them), weighting="uniform"
                  ("sink" weighs each token's output error as GPTQ's Hessian does), no_clip=()
                  (layer names to leave unclipped), inspect=False (True, or names such as
                  ("self_attn",): score the scales of the groups whose ScaleGroup names an
                  `inspect` module on that module's output, e.g. the whole attention for q/k/v and
                  the MLP for gate/up, as llm-awq/AutoAWQ do), inspect_weighting="uniform"
                  ("sink": each token's error in that output divided by the squared norm of the
                  residual stream it is added to, first tokens given sink_share). Measurements
                  of these options on SmolLM2 are in docs/quality.md.

Common options: group_size (default 128, -1 per-channel; a ragged last group is fine), bits
(4 or 3; stored in the int4 container), skip (linear names to leave in float, default the LM head:
("lm_head",)), int8 (linear names to make int8 per-channel instead, e.g. ("lm_head",) as
llama.cpp's Q4 files keep the output layer in Q8_0: it cuts a decode step's largest GEMM, the
fp32 head, by 4x in bytes for a small loss, docs/quality.md), progress
(tqdm bar per block, default True), block_spec (see _blocks.py).

Every eligible nn.Linear becomes a pyllmops.nn.WeightOnlyLinear. The calibrated methods walk the
model's blocks in order (GPTQ's sequential scheme; AWQ uses it too): the block inputs are
captured once from the calibration batches, then for each block and each group of linears that
share an input (in forward order), the block runs on the current inputs until that group, the
group is calibrated and its float weights are replaced by their dequantized values, and once the
block is done its outputs become the next block's inputs. So every layer is calibrated on
activations that already went through the quantized layers before it.
"""
from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterable, Optional

import torch
from torch import nn

from pyllmops.nn.weight_only import WeightOnlyLinear
from pyllmops.quant.awq import awq_clip, awq_search_scale
from pyllmops.quant.gptq import WEIGHTINGS, Hessian, gptq_int4
from pyllmops.quant.packing import Int4Weight
from pyllmops.quant.rtn import rtn_int4
from pyllmops.quant.token_weights import token_weights
from pyllmops.quant.methods import register_method
from pyllmops.quant.methods._blocks import BlockSpec, ScaleGroup, resolve_spec
from pyllmops.quant.methods._walk import linear_layers, replace_module


def _check_bits(bits: int) -> None:
    if bits not in (2, 3, 4):
        raise ValueError(f"bits must be 4 or 3 (2 also works) for the w4a16 methods, got {bits!r}")


def _eligible(skip: Iterable[str]) -> Callable[[str, nn.Linear], bool]:
    skip = tuple(skip)
    return lambda name, _: not any(name == s or name.endswith("." + s) for s in skip)


def _progress(items, enabled: bool, desc: str):
    if not enabled:
        return items
    from tqdm.auto import tqdm

    return tqdm(items, desc=desc, unit="layer")


@register_method("w4a16-rtn", needs_calib=False)
def quantize_rtn(model: nn.Module, *, calib=None, group_size: int = 128, bits: int = 4, symmetric: bool = False,
                 skip: Iterable[str] = ("lm_head",), int8: Iterable[str] = (), progress: bool = True) -> nn.Module:
    _check_bits(bits)
    for name, lin in _progress(list(linear_layers(model, _eligible(tuple(skip) + tuple(int8)))), progress, "w4a16-rtn"):
        replace_module(model, name, WeightOnlyLinear.from_linear(lin, bits, group_size, symmetric))
    return _to_int8(model, int8)


def _to_int8(model: nn.Module, names: Iterable[str]) -> nn.Module:
    """The int8= option of the w4a16 methods: these linears (matched like skip) become int8 per
    channel (w8a16) instead of int4."""
    names = tuple(names)
    if names:
        matched = list(linear_layers(model, lambda name, _: any(name == s or name.endswith("." + s) for s in names)))
        if not matched:
            raise ValueError(f"int8: no nn.Linear named {names} in the model")
        for name, lin in matched:
            replace_module(model, name, WeightOnlyLinear.from_linear(lin, bits=8))
    return model


@register_method("w8a16", needs_calib=False)
def quantize_w8a16(model: nn.Module, *, calib=None, skip: Iterable[str] = ("lm_head",), progress: bool = True,
                   **_ignored: Any) -> nn.Module:
    for name, lin in _progress(list(linear_layers(model, _eligible(skip))), progress, "w8a16"):
        replace_module(model, name, WeightOnlyLinear.from_linear(lin, bits=8))
    return model


# ----------------------------------------------------------------------------- calibrated driver
class _Stop(Exception):
    """Raised by a capture hook to end a forward pass early."""


def _first(out):
    return out[0] if isinstance(out, (tuple, list)) else out


def _call(module: nn.Module, batch) -> Any:
    if isinstance(batch, dict):
        return module(**batch)
    if isinstance(batch, (tuple, list)):
        return module(*batch)
    return module(batch)


def _capture_block_inputs(model: nn.Module, block: nn.Module, calib) -> list[tuple[tuple, dict]]:
    """(args, kwargs) of `block` for each calibration batch, by running the model up to it."""
    captured = []

    def hook(_, args, kwargs):
        captured.append((args, kwargs))
        raise _Stop

    handle = block.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        for batch in calib:
            try:
                _call(model, batch)
            except _Stop:
                pass
    finally:
        handle.remove()
    if not captured:
        raise ValueError("calib produced no batches (or the model never reached its first block)")
    return captured


def _group_inputs(block: nn.Module, linear: nn.Module, inputs, sink: Callable[[torch.Tensor], None],
                  inspect: Optional[nn.Module] = None) -> list[tuple[tuple, dict]]:
    """Run `block` on every input until `linear` is reached and hand its input to sink. Returns
    the (args, kwargs) of each call of `inspect` (a submodule that encloses or precedes `linear`;
    none when inspect is None), so that it can be rerun on its own."""
    seen: list[tuple[tuple, dict]] = []

    def hook(_, args):
        sink(args[0].detach())
        raise _Stop

    handles = [linear.register_forward_pre_hook(hook)]
    if inspect is not None:
        handles.append(inspect.register_forward_pre_hook(lambda _, args, kwargs: seen.append((args, kwargs)),
                                                         with_kwargs=True))
    try:
        for args, kwargs in inputs:
            try:
                block(*args, **kwargs)
            except _Stop:
                pass
    finally:
        for handle in handles:
            handle.remove()
    return seen


CLIP_TOKENS = 512


class _TokenSample:
    """Keeps up to `limit` input rows [T, K] for AWQ's searches, with their loss weights
    (pyllmops.quant.token_weights) unless weighting is "uniform", and each row's fold: the
    index of the forward call (calibration batch) it came from modulo n_folds, for the
    searches' cross-validation. Thinning is even over the tokens; with "sink" it keeps every
    sequence's first token and rescales the others' weights so the first tokens keep their share."""

    def __init__(self, limit: int, weighting: str = "sink", sink_share: float = 0.1, n_folds: int = 2):
        if weighting not in WEIGHTINGS:
            raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")
        self.limit, self.weighting, self.sink_share, self.n_folds = limit, weighting, sink_share, max(n_folds, 1)
        self.rows, self.weights, self.first, self.folds = [], [], [], []

    def __call__(self, x: torch.Tensor) -> None:
        rows = x.reshape(-1, x.shape[-1]).float()
        t = x.shape[-2] if x.dim() >= 3 else 1
        self.folds.append(torch.full((rows.shape[0],), len(self.rows) % self.n_folds))
        self.rows.append(rows)
        self.first.append((torch.arange(rows.shape[0]) % t == 0) if t > 1 else torch.zeros(rows.shape[0], dtype=torch.bool))
        self.weights.append(token_weights(x, self.sink_share) if self.weighting == "sink" else torch.ones(rows.shape[0], dtype=torch.float64))

    def tensor(self, limit: Optional[int] = None) -> tuple[torch.Tensor, Optional[torch.Tensor], Optional[torch.Tensor]]:
        """(x [T', K] fp32, row weights [T'] or None for uniform, folds [T'] or None when every
        row is in one fold), T' <= limit (default self.limit)."""
        x, c, first = torch.cat(self.rows), torch.cat(self.weights), torch.cat(self.first)
        folds = torch.cat(self.folds)
        limit = self.limit if limit is None else limit
        if self.weighting == "uniform":  # plain even thinning (first tokens not singled out)
            idx = torch.linspace(0, x.shape[0] - 1, limit).long() if x.shape[0] > limit else torch.arange(x.shape[0])
            c = None
        else:
            idx = torch.arange(x.shape[0])
            if x.shape[0] > limit:
                heads, others = first.nonzero()[:, 0], (~first).nonzero()[:, 0]
                room = max(limit - heads.numel(), 1)
                kept = others[torch.linspace(0, others.numel() - 1, min(room, others.numel())).long()] if others.numel() else others
                c = c.clone()
                if kept.numel():
                    c[kept] *= c[others].sum() / c[kept].sum()
                idx = torch.cat((heads, kept)).sort().values
            c = c[idx]
        folds = folds[idx]
        return x[idx], c, (folds if folds.unique().numel() > 1 else None)


def _groups_of(block: nn.Module, spec: BlockSpec, skip) -> list[ScaleGroup]:
    eligible = {name for name, _ in linear_layers(block, _eligible(skip))}
    groups = [ScaleGroup(g.prev, tuple(n for n in g.linears if n in eligible), g.inspect) for g in spec.groups]
    named = {n for g in groups for n in g.linears}
    groups += [ScaleGroup(None, (n,)) for n, _ in linear_layers(block) if n in eligible and n not in named]
    return [g for g in groups if g.linears]


def _calibrated(model: nn.Module, calib, spec: BlockSpec, skip, progress: bool, desc: str,
                make_sink: Callable[[int], Any],
                quantize_group: Callable[[nn.Module, ScaleGroup, Any, dict, Optional["_Inspected"]],
                                         dict[str, tuple[Int4Weight, Optional[torch.Tensor]]]],
                inspect: bool | Iterable[str] = False) -> nn.Module:
    """inspect=True (or a collection of names): for groups that name an `inspect` module (one of
    those names), quantize_group also gets that module and the inputs it was called with (an
    _Inspected); else None."""
    inspect = inspect if isinstance(inspect, bool) else frozenset(inspect)
    if spec.blocks is None:
        blocks, prefix = [model], [""]
        inputs = [((b,), {}) if not isinstance(b, (dict, tuple, list)) else
                  ((), b) if isinstance(b, dict) else (tuple(b), {}) for b in calib]
    else:
        mlist = model.get_submodule(spec.blocks)
        blocks, prefix = list(mlist), [f"{spec.blocks}.{i}." for i in range(len(mlist))]
        with torch.no_grad():
            inputs = _capture_block_inputs(model, mlist[0], calib)
    done: dict[str, tuple[Int4Weight, Optional[torch.Tensor]]] = {}
    with torch.no_grad():
        for block, pre in zip(_progress(blocks, progress, desc), prefix):
            for group in _groups_of(block, spec if spec.blocks is not None else BlockSpec(None), skip):
                first = block.get_submodule(group.linears[0])
                sink = make_sink(first.in_features)
                wanted = group.inspect is not None and (inspect is True or (inspect is not False and group.inspect in inspect))
                watched = block.get_submodule(group.inspect) if wanted else None
                seen = _group_inputs(block, first, inputs, sink, watched)
                local = {n[len(pre):]: v for n, v in done.items() if n.startswith(pre)}
                inspected = None if watched is None else _Inspected(
                    watched, seen, [args[0] for args, _ in inputs] if spec.blocks is not None else None)
                for name, result in quantize_group(block, group, sink, local, inspected).items():
                    done[pre + name] = result
            if spec.blocks is not None:
                inputs = [((_first(block(*args, **kwargs)),) + tuple(args[1:]), kwargs) for args, kwargs in inputs]
    for name, (weight, input_scale) in done.items():
        lin = model.get_submodule(name)
        replace_module(model, name, WeightOnlyLinear(weight, lin.bias, input_scale))
    return model


class _Inspected:
    """A block submodule, the (args, kwargs) of its calibration calls, and the block's input
    hidden states [B, T, dim] for those calls (None when unknown), with the module's outputs for
    the current weights (computed once, here)."""

    def __init__(self, module: nn.Module, calls: list[tuple[tuple, dict]], residuals: Optional[list[torch.Tensor]]):
        self.module, self.calls, self.residuals = module, calls, residuals
        self.ref = [_first(module(*args, **kwargs)).float() for args, kwargs in calls]

    def token_weights(self, sink_share: float) -> list[torch.Tensor]:
        """Per call, [B*T] weights 1 / ||h_t||^2 of the residual stream h the module's output is
        added to (the next RMSNorm divides by its norm, so relative error is what propagates;
        massive-activation tokens do not rule the loss), first tokens given sink_share
        (pyllmops.quant.token_weights)."""
        if self.residuals is None or any(h.shape[:-1] != r.shape[:-1] for h, r in zip(self.residuals, self.ref)):
            raise ValueError(f"{type(self.module).__name__}: token weighting needs block inputs shaped like its outputs")
        return [token_weights(h, sink_share).float() for h in self.residuals]

    @contextlib.contextmanager
    def scoring(self, lins: list[nn.Linear], weights: Optional[list[torch.Tensor]] = None, n_folds: int = 1):
        """Yields output_error(candidates, fold) -> float: the module's squared output error (per
        token times weights [B*T] per call, when given) with the candidate weights in `lins` (tried
        in place; the weights are restored on exit), over the calls whose index modulo n_folds is
        `fold` (all calls for fold None), the folds _TokenSample gives the rows of those calls."""
        originals = [lin.weight.clone() for lin in lins]
        weights = weights or [None] * len(self.calls)

        def output_error(candidates: list[torch.Tensor], fold: Optional[int] = None) -> float:
            for lin, w in zip(lins, candidates):
                lin.weight.copy_(w.to(lin.weight.dtype))
            err = 0.0
            for i, ((args, kwargs), ref, c) in enumerate(zip(self.calls, self.ref, weights)):
                if fold is not None and i % n_folds != fold:
                    continue
                e = (_first(self.module(*args, **kwargs)).float() - ref).pow(2).reshape(-1, ref.shape[-1]).sum(-1)
                err += float(e.sum() if c is None else (e * c).sum())
            return err
        try:
            yield output_error
        finally:
            for lin, w in zip(lins, originals):
                lin.weight.copy_(w)


def _write_back(lin: nn.Linear, weight: Int4Weight, input_scale: Optional[torch.Tensor] = None) -> None:
    """Make the float layer compute what the quantized one will (for the later layers' calibration)."""
    w = weight.dequantize(torch.float32)
    if input_scale is not None:
        w = w / input_scale
    lin.weight.copy_(w.to(lin.weight.dtype))


@register_method("w4a16-gptq", needs_calib=True)
def quantize_gptq(model: nn.Module, *, calib, group_size: int = 128, bits: int = 4, symmetric: bool = False,
                  act_order: bool = True, static_groups: bool = False, block_size: int = 128, damp: float = 0.01,
                  weighting: str = "sink", sink_share: float = 0.1, mse: bool = True,
                  awq_scale: bool = False, awq_tokens: int = 2048,
                  skip: Iterable[str] = ("lm_head",), int8: Iterable[str] = (), progress: bool = True,
                  block_spec: Optional[BlockSpec] = None) -> nn.Module:
    _check_bits(bits)

    def quantize_group(block, group, sink, done, _inspected):
        lins = [block.get_submodule(n) for n in group.linears]
        hessian, input_scale = sink.hessian.matrix, None
        if awq_scale:
            s, input_scale = _scale_and_fold(block, group, lins, sink.sample.tensor()[0], None, None, done,
                                             group_size, bits, symmetric)
            if s is not None:  # the scaled layers read x / s: H becomes diag(1/s) H diag(1/s)
                inv = 1.0 / s.double()
                hessian = hessian * inv[:, None] * inv[None, :]
        out = {}
        for name, lin in zip(group.linears, lins):
            w = gptq_int4(lin.weight.float(), hessian, group_size, bits, symmetric, act_order, block_size, damp, mse,
                          static_groups)
            _write_back(lin, w, input_scale)
            out[name] = (w, input_scale)
        return out

    _calibrated(model, calib, resolve_spec(model, block_spec), tuple(skip) + tuple(int8), progress, "w4a16-gptq",
                lambda k: _GptqSink(k, weighting, sink_share, awq_tokens if awq_scale else 0), quantize_group)
    return _to_int8(model, int8)


class _GptqSink:
    """GPTQ's Hessian of a group's input and, for awq_scale, a sample of its rows for the scale search."""

    def __init__(self, in_features: int, weighting: str, sink_share: float, sample_tokens: int):
        self.hessian = Hessian(in_features, weighting=weighting, sink_share=sink_share)
        self.sample = _TokenSample(sample_tokens, "uniform", n_folds=1) if sample_tokens else None

    def __call__(self, x: torch.Tensor) -> None:
        self.hessian.add(x)
        if self.sample is not None:
            self.sample(x)


@register_method("w4a16-awq", needs_calib=True)
def quantize_awq(model: nn.Module, *, calib, group_size: int = 128, bits: int = 4, symmetric: bool = False,
                 clip: bool = True, cv_folds: int = 1, awq_tokens: int = 2048, weighting: str = "uniform",
                 sink_share: float = 0.1, no_clip: Iterable[str] = (), inspect: bool | Iterable[str] = False,
                 inspect_weighting: str = "uniform", skip: Iterable[str] = ("lm_head",), int8: Iterable[str] = (),
                 progress: bool = True, block_spec: Optional[BlockSpec] = None) -> nn.Module:
    _check_bits(bits)
    if inspect_weighting not in WEIGHTINGS:
        raise ValueError(f"inspect_weighting must be one of {WEIGHTINGS}, got {inspect_weighting!r}")
    if not isinstance(cv_folds, int) or cv_folds < 1:
        raise ValueError(f"cv_folds must be a positive integer (1: no cross-validation), got {cv_folds!r}")

    def quantize_group(block, group, sample, done, inspected):
        x, c, folds = sample.tensor()
        # the clip search thins the scale search's rows further (uniform) or keeps the first tokens (sink)
        x_clip, c_clip, folds_clip = (x, None, folds) if c is None else sample.tensor(CLIP_TOKENS)
        lins = [block.get_submodule(n) for n in group.linears]
        scoring = None if inspected is None else lambda: inspected.scoring(
            lins, None if inspect_weighting == "uniform" else inspected.token_weights(sink_share), cv_folds)
        s, input_scale = _scale_and_fold(block, group, lins, x, c, folds, done, group_size, bits, symmetric, scoring)
        if s is not None:
            x_clip = x_clip / s
        out = {}
        for lin, name in zip(lins, group.linears):
            w = lin.weight.float()
            if clip and not any(name == n or name.endswith("." + n) for n in no_clip):
                w = awq_clip(w, x_clip, group_size, bits, symmetric, row_weight=c_clip, folds=folds_clip)
            q = rtn_int4(w, group_size, bits, symmetric)
            _write_back(lin, q, input_scale)
            out[name] = (q, input_scale)
        return out

    _calibrated(model, calib, resolve_spec(model, block_spec), tuple(skip) + tuple(int8), progress, "w4a16-awq",
                lambda k: _TokenSample(awq_tokens, weighting, sink_share, cv_folds), quantize_group, inspect=inspect)
    return _to_int8(model, int8)


def _scale_and_fold(block: nn.Module, group: ScaleGroup, lins: list[nn.Linear], x: torch.Tensor,
                    row_weight: Optional[torch.Tensor], folds: Optional[torch.Tensor], done: dict, group_size: int,
                    bits: int, symmetric: bool, scoring: Optional[Callable[[], Any]] = None
                    ) -> tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
    """AWQ's scale step for one group of linears reading x [T, K]: search s [K] (cross-validated
    over folds [T] when given), multiply the linears' weights by it and divide the producer of x
    by it (_fold). Returns (s, input_scale):
    s is None when the producer cannot absorb it (a linear of another width, e.g. v_proj ->
    o_proj under grouped-query attention: left unscaled); input_scale is s when there is no
    producer at all (the layer divides its input at run time), else None. scoring() opens a
    context yielding a module-output error function for the search (see awq_search_scale)."""
    prev = block.get_submodule(group.prev) if group.prev is not None else None
    if isinstance(prev, nn.Linear) and prev.out_features != x.shape[-1]:
        return None, None
    with (contextlib.nullcontext() if scoring is None else scoring()) as error:
        s = awq_search_scale(x, [lin.weight for lin in lins], group_size, bits, symmetric, row_weight=row_weight,
                             output_error=error, folds=folds)
    _fold(prev, group.prev, s, done)
    for lin in lins:
        lin.weight.mul_(s.to(lin.weight.dtype))
    return s, (s if prev is None else None)


def _fold(prev: Optional[nn.Module], prev_name: Optional[str], s: torch.Tensor, done: dict) -> None:
    """Divide the producer of the scaled input by s: a norm's weight, or a linear's output rows
    (and, when that linear is already quantized, its int4 scales, which is exact)."""
    if prev is None:
        return  # no producer: the scale stays on the layer as its input_scale
    if isinstance(prev, nn.Linear):
        prev.weight.div_(s.to(prev.weight.dtype)[:, None])
        if prev.bias is not None:
            prev.bias.div_(s.to(prev.bias.dtype))
        if prev_name in done:
            q, input_scale = done[prev_name]
            q.scales = (q.scales.float() / s[:, None]).to(q.scales.dtype)
        return
    weight = getattr(prev, "weight", None)
    if not isinstance(weight, torch.Tensor) or weight.shape != s.shape:
        raise ValueError(f"cannot fold AWQ scales into {type(prev).__name__}: it needs a weight of shape {tuple(s.shape)}")
    weight.div_(s.to(weight.dtype))
