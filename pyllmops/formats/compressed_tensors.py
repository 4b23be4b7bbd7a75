"""compressed-tensors checkpoints (what llmcompressor writes and vLLM / transformers load).

config.json's quantization_config: {"quant_method": "compressed-tensors", "format": ...,
"config_groups": {"group_0": {"targets": [...], "weights": {QuantizationArgs},
"input_activations": {QuantizationArgs} | null, "format": ...}}, "ignore": [float linears],
"quantization_status": "compressed"}. Per layer, by format:

  "pack-quantized" (weight-only, num_bits 2, 4 or 8): `weight_packed` [N, ceil(K / p)] int32 with
      p = 32 // num_bits values per word along K, value i of a word in bits [i*b, i*b + b), each
      stored as q + 2**(b-1) (so exactly pyllmops' unsigned int4 values), the tail zero-padded;
      `weight_scale` [N, G]; `weight_zero_point` [ceil(N / p), G] int32 packed the same way along
      N (asymmetric only; the stored value is again pyllmops' unsigned zero); `weight_shape` [2]
      int32; `weight_g_idx` [K] int32 with actorder "group" (act-order as vLLM and compressed-tensors
      read it before compressed-tensors removed actorder "group": 0.19 and 0.20 refuse it, so
      current transformers and vLLM cannot load such a layer; save warns, FormatWarning).
      W = (q - zp) * scale.
  "int-quantized" (W8A8): `weight` [N, K] int8, `weight_scale` [N, 1], and for static per-tensor
      activations `input_scale` [1]; dynamic activations are per token.

group_size must divide K: compressed-tensors refuses a ragged last group, so save refuses it too
(the reader accepts G = ceil(K / group_size)). 3-bit weights are refused: compressed-tensors 0.19 packs widths that do
not divide 32 densely across word boundaries, older versions padded each word, so no one file
serves both.
"""
from __future__ import annotations

import json
import re
import warnings

import torch

from pyllmops.formats._common import layer_names
from pyllmops.formats._layer import FormatError, FormatWarning, QuantizedLinear, require, take
from pyllmops.quant.packing import Int4Weight, Int8Weight, default_g_idx, pack_int32, pack_int4, unpack_int32

NAME = "compressed-tensors"
PACKED, INT = "pack-quantized", "int-quantized"


def matches(qconfig: dict) -> bool:
    return qconfig.get("quant_method") == "compressed-tensors"


def _args(bits: int, strategy: str, symmetric: bool = True, group_size=None, actorder=None, dynamic=False) -> dict:
    return {"num_bits": bits, "type": "int", "symmetric": symmetric, "strategy": strategy, "group_size": group_size,
            "block_structure": None, "dynamic": dynamic, "actorder": actorder, "observer": None if dynamic else "minmax",
            "observer_kwargs": {}}


def _pack(values: torch.Tensor, bits: int, dim: int) -> torch.Tensor:
    """Unsigned values packed 32 // bits per int32 along dim, the tail padded with zeros."""
    per = 32 // bits
    pad = -values.shape[dim] % per
    if pad:
        shape = list(values.shape)
        shape[dim] = pad
        values = torch.cat((values, values.new_zeros(shape)), dim)
    return pack_int32(values, bits, dim)


def _unpack(words: torch.Tensor, bits: int, dim: int, size: int, what: str) -> torch.Tensor:
    if words.dtype != torch.int32:
        raise FormatError(f"{what} must be int32, got {words.dtype}")
    if words.shape[dim] != -(-size // (32 // bits)):
        raise FormatError(f"{what} has {words.shape[dim]} words along dim {dim}; {size} values of {bits} bits "
                          f"need {-(-size // (32 // bits))}")
    return unpack_int32(words, bits, dim).narrow(dim, 0, size)


def _scheme(name: str, layer: QuantizedLinear) -> tuple[dict, str]:
    """(config group body without targets, format) for one layer."""
    w = layer.weight
    if isinstance(w, Int4Weight):
        n, k = w.shape
        if 32 % w.bits:
            raise FormatError(f"compressed-tensors: {name}: {w.bits}-bit weights have no packing that every "
                              f"compressed-tensors version reads the same way (use 4 bits)")
        sym = bool((w.zeros == 2 ** (w.bits - 1)).all())
        channel = w.group_size >= k
        if not channel and k % w.group_size:
            raise FormatError(f"compressed-tensors: {name} has K={k}, not a multiple of group_size={w.group_size} and "
                              f"compressed-tensors loads only whole groups (quantize with a group size that divides "
                              f"K, or per channel)")
        weights = _args(w.bits, "channel" if channel else "group", sym, None if channel else w.group_size,
                        "group" if w.g_idx is not None else None)
        return {"weights": weights, "input_activations": None, "output_activations": None}, PACKED
    if layer.act is None:
        return {"weights": _args(8, "channel"), "input_activations": None, "output_activations": None}, PACKED
    acts = _args(8, "token", dynamic=True) if layer.act == "dynamic" else _args(8, "tensor")
    return {"weights": _args(8, "channel"), "input_activations": acts, "output_activations": None}, INT


def _layer_tensors(name: str, layer: QuantizedLinear, fmt: str) -> dict[str, torch.Tensor]:
    w = layer.weight
    out = {}
    if isinstance(w, Int4Weight):
        n, k = w.shape
        out[f"{name}.weight_packed"] = _pack(w.values(), w.bits, 1)
        out[f"{name}.weight_scale"] = w.scales
        if not bool((w.zeros == 2 ** (w.bits - 1)).all()):
            out[f"{name}.weight_zero_point"] = _pack(w.zeros, w.bits, 0)
        if w.g_idx is not None:
            out[f"{name}.weight_g_idx"] = w.g_idx.to(torch.int32)
        out[f"{name}.weight_shape"] = torch.tensor([n, k], dtype=torch.int32)
    elif fmt == PACKED:  # W8A16
        out[f"{name}.weight_packed"] = _pack((w.qweight.to(torch.int16) + 128).to(torch.uint8), 8, 1)
        out[f"{name}.weight_scale"] = w.scales.reshape(-1, 1)
        out[f"{name}.weight_shape"] = torch.tensor(list(w.shape), dtype=torch.int32)
    else:  # W8A8
        out[f"{name}.weight"] = w.qweight
        out[f"{name}.weight_scale"] = w.scales.reshape(-1, 1).float()
        if layer.act == "static":
            out[f"{name}.input_scale"] = layer.input_scale.reshape(1).float()
    if layer.bias is not None:
        out[f"{name}.bias"] = layer.bias
    return out


def export(layers: dict[str, QuantizedLinear], ignore: list[str] = ()) -> tuple[dict[str, torch.Tensor], dict]:
    """ignore: the float linear layers (written to the config's "ignore")."""
    if not layers:
        raise FormatError("compressed-tensors: the model has no quantized linear layers to save")
    schemes: dict[str, tuple[dict, str, list[str]]] = {}
    tensors = {}
    for name, layer in layers.items():
        if layer.act == "static" and layer.input_scale is None:
            raise FormatError(f"compressed-tensors: {name} has static activations but no input_scale")
        body, fmt = _scheme(name, layer)
        key = json.dumps([body, fmt], sort_keys=True)
        schemes.setdefault(key, (body, fmt, []))[2].append(name)
        tensors.update(_layer_tensors(name, layer, fmt))
    act_order = [name for name, layer in layers.items() if getattr(layer.weight, "g_idx", None) is not None]
    if act_order:
        # Measured 2026-12-07: compressed-tensors 0.19 and 0.20 reject actorder='group' ("has been removed"),
        # and transformers 5.25 fails to load such a checkpoint (bench/checkpoint_roundtrip.py, act-order).
        warnings.warn(f"compressed-tensors: {len(act_order)} layers ({act_order[0]}, ...) have act-order groups "
                      f"(g_idx), written as actorder 'group' with weight_g_idx: pyllmops.load_quantized reads them, "
                      f"but compressed-tensors removed actorder 'group' (0.19 and 0.20 refuse the config), so current "
                      f"transformers and vLLM cannot load this checkpoint. For them, save with format='gptq' "
                      f"(desc_act + g_idx) or quantize with static_groups=True (or act_order=False).", FormatWarning, stacklevel=3)
    formats = {fmt for _, fmt, _ in schemes.values()}
    groups = {}
    for i, (body, fmt, names) in enumerate(schemes.values()):
        targets = ["Linear"] if len(schemes) == 1 else names
        groups[f"group_{i}"] = {"targets": targets, **body, "format": fmt}
    qconfig = {"quant_method": "compressed-tensors", "format": formats.pop() if len(formats) == 1 else "mixed-precision",
               "quantization_status": "compressed", "config_groups": groups, "ignore": sorted(ignore),
               "kv_cache_scheme": None, "sparsity_config": {}}
    return tensors, qconfig


def extra_files(qconfig: dict) -> dict[str, dict]:
    return {}


def _matches(target: str, name: str) -> bool:
    if target.startswith("re:"):
        return re.match(target[3:], name) is not None
    return target == name or target == "Linear" or name.endswith("." + target)


def _group_for(name: str, groups: dict) -> dict:
    # an exact or regex target wins over the class target "Linear", as compressed-tensors matches
    for exact in (True, False):
        for g in groups.values():
            targets = require(g, "targets", "quantization_config.config_groups[...]")
            if any(_matches(t, name) and (t != "Linear") == exact for t in targets):
                return g
    raise FormatError(f"compressed-tensors: no config group targets layer {name}")


def _int4(name: str, tensors: dict, args: dict) -> Int4Weight:
    bits, strategy = require(args, "num_bits", "weights"), require(args, "strategy", "weights")
    shape = take(tensors, f"{name}.weight_shape", f"compressed-tensors layer {name}")
    n, k = (int(v) for v in shape.tolist())
    values = _unpack(take(tensors, f"{name}.weight_packed", name), bits, 1, k, f"{name}.weight_packed")
    if values.shape[0] != n:
        raise FormatError(f"{name}.weight_packed has {values.shape[0]} rows, weight_shape says {n}")
    scales = take(tensors, f"{name}.weight_scale", name)
    if strategy == "channel":
        group_size = k
    elif strategy == "group":
        group_size = require(args, "group_size", "weights")
    else:
        raise FormatError(f"compressed-tensors: {name}: weight strategy {strategy!r}; int{bits} layers need "
                          f"'group' or 'channel'")
    g = -(-k // group_size)
    if tuple(scales.shape) != (n, g):
        raise FormatError(f"{name}.weight_scale must be [{n}, {g}] for K={k}, group_size={group_size}, got "
                          f"{tuple(scales.shape)}")
    if args.get("symmetric", True):
        tensors.pop(f"{name}.weight_zero_point", None)
        zeros = torch.full((n, g), 2 ** (bits - 1), dtype=torch.uint8)
    else:
        zeros = _unpack(take(tensors, f"{name}.weight_zero_point", name), bits, 0, n, f"{name}.weight_zero_point")
        if zeros.shape[1] != g:
            raise FormatError(f"{name}.weight_zero_point has {zeros.shape[1]} groups, expected {g}")
    g_idx = tensors.pop(f"{name}.weight_g_idx", None)
    if g_idx is not None:
        if g_idx.numel() != k:
            raise FormatError(f"{name}.weight_g_idx must have K={k} entries, got {tuple(g_idx.shape)}")
        if torch.equal(g_idx.to(torch.int32), default_g_idx(k, group_size)):
            g_idx = None
    try:
        w = Int4Weight(pack_int4(values), scales.contiguous(), zeros.contiguous(), group_size, bits,
                       None if g_idx is None else g_idx.to(torch.int32))
        w.validate()
    except ValueError as e:
        raise FormatError(f"compressed-tensors: {name}: {e}") from None
    return w


def _check_int8_weight(name: str, args: dict) -> None:
    if (args.get("num_bits"), args.get("type", "int"), args.get("symmetric", True), args.get("strategy")) != \
            (8, "int", True, "channel"):
        raise FormatError(f"compressed-tensors: {name}: 8-bit weights must be int, symmetric, per channel; got "
                          f"{ {k: args.get(k) for k in ('num_bits', 'type', 'symmetric', 'strategy')} }")


def import_(tensors: dict[str, torch.Tensor], qconfig: dict) -> dict[str, QuantizedLinear]:
    groups = require(qconfig, "config_groups")
    status = qconfig.get("quantization_status", "compressed")
    if status not in ("compressed", "frozen"):
        raise FormatError(f"compressed-tensors: quantization_status {status!r}: only compressed checkpoints are read")
    out = {}
    packed = layer_names(tensors, ".weight_packed")
    plain = [n for n in layer_names(tensors, ".weight_scale") if n not in packed]
    for name in packed:
        group = _group_for(name, groups)
        args = require(group, "weights", f"config group of {name}")
        if group.get("input_activations"):
            raise FormatError(f"compressed-tensors: {name}: packed weights with quantized activations are not supported")
        if args.get("type", "int") != "int":
            raise FormatError(f"compressed-tensors: {name}: weight type {args.get('type')!r} (only int)")
        if args.get("num_bits") == 8:
            _check_int8_weight(name, args)
            shape = take(tensors, f"{name}.weight_shape", name)
            n, k = (int(v) for v in shape.tolist())
            q = _unpack(take(tensors, f"{name}.weight_packed", name), 8, 1, k, f"{name}.weight_packed")
            scales = take(tensors, f"{name}.weight_scale", name).reshape(-1)
            if q.shape[0] != n or scales.numel() != n:
                raise FormatError(f"compressed-tensors: {name}: weight_packed / weight_scale do not match shape [{n}, {k}]")
            weight = Int8Weight((q.to(torch.int16) - 128).to(torch.int8), scales)
        elif args.get("num_bits") in (2, 4):
            weight = _int4(name, tensors, args)
        else:
            raise FormatError(f"compressed-tensors: {name}: num_bits={args.get('num_bits')} (pyllmops reads 2, 4 and 8)")
        out[name] = QuantizedLinear(weight, tensors.pop(f"{name}.bias", None))
    for name in plain:
        if f"{name}.weight" not in tensors or tensors[f"{name}.weight"].dtype != torch.int8:
            continue  # a float layer's own scale-named tensor is not ours to take
        group = _group_for(name, groups)
        _check_int8_weight(name, require(group, "weights", f"config group of {name}"))
        q = tensors.pop(f"{name}.weight")
        scales = tensors.pop(f"{name}.weight_scale").reshape(-1)
        if scales.numel() != q.shape[0]:
            raise FormatError(f"{name}.weight_scale has {scales.numel()} entries for {q.shape[0]} output rows")
        zp = tensors.pop(f"{name}.weight_zero_point", None)
        if zp is not None and bool(zp.any()):
            raise FormatError(f"{name}.weight_zero_point is not zero: asymmetric int8 weights are not supported")
        acts = group.get("input_activations")
        act, input_scale = None, None
        if acts:
            if (acts.get("num_bits"), acts.get("type", "int"), acts.get("symmetric", True)) != (8, "int", True):
                raise FormatError(f"compressed-tensors: {name}: activations must be symmetric int8, got {acts}")
            if acts.get("dynamic") and acts.get("strategy") == "token":
                act = "dynamic"
            elif not acts.get("dynamic") and acts.get("strategy") == "tensor":
                act, input_scale = "static", take(tensors, f"{name}.input_scale", name).reshape(1).float()
            else:
                raise FormatError(f"compressed-tensors: {name}: activation strategy {acts.get('strategy')!r} "
                                  f"dynamic={acts.get('dynamic')!r}; pyllmops serves dynamic per-token and static "
                                  f"per-tensor int8")
        tensors.pop(f"{name}.input_zero_point", None)
        out[name] = QuantizedLinear(Int8Weight(q, scales.float() if act else scales), tensors.pop(f"{name}.bias", None),
                                    act, input_scale)
    if not out:
        raise FormatError("compressed-tensors: no quantized layer (<layer>.weight_packed or an int8 <layer>.weight) "
                          "in the checkpoint")
    return out
