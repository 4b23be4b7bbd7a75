"""Quantized checkpoints in the formats other tools read: `save_quantized` and `load_quantized`
(exported as pyllmops.save_quantized / pyllmops.load_quantized).

    pyllmops.save_quantized(model, "out/", format="compressed-tensors" | "gptq" | "awq", tokenizer=None)
    model = pyllmops.load_quantized("out/")

save_quantized writes config.json (the model's config with the format's quantization_config),
model.safetensors (the quantized layers in the format's layout, everything else as is), the
format's own extra files (GPTQ: quantize_config.json), and the tokenizer and generation config:
`tokenizer.save_pretrained` when a tokenizer is given, else the tokenizer files found in the
directory the model was loaded from (config._name_or_path). The model is a transformers causal LM
or a registered model class (pyllmops.models.Llama registers itself and is written as a
transformers Llama) quantized by pyllmops.quantize; a layer the format cannot hold raises
FormatError naming it, before anything is written.

load_quantized reads any of the three formats (detected from the config) into a model whose
quantized linears are pyllmops modules (WeightOnlyLinear, W8A8Linear): a transformers model built
from config.json when transformers is installed, else a registered model (pyllmops.models.Llama for
a plain Llama config).

Layering: this module sits above pyllmops.formats (file layouts) and pyllmops.nn (modules).
pyllmops.models sits above it and registers its Llama with register_model(); the one place that
reaches up is load_quantized's lookup of that registration by package name (PLUGINS), made only
when transformers is missing.
"""
from __future__ import annotations

import importlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch
from torch import nn

from pyllmops.formats import FORMATS, FormatError, QuantizedLinear, detect, format_module
from pyllmops.nn.huge_pages import pack_huge_pages
from pyllmops.nn.w8a8 import W8A8Linear
from pyllmops.nn.weight_only import WeightOnlyLinear
from pyllmops.quant.methods import replace_module

PLUGINS = ("pyllmops.models",)  # packages whose import registers model classes (register_model)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt",
                   "tokenizer.model", "added_tokens.json", "chat_template.jinja", "generation_config.json")


# ----------------------------------------------------------------------------- modules <-> layers
def _describe(name: str, mod: nn.Module) -> QuantizedLinear:
    if isinstance(mod, WeightOnlyLinear):
        if mod.input_scale is not None:
            raise FormatError(f"{name} divides its input by an AWQ input_scale that no checkpoint format holds (its "
                              f"scales had no norm or linear to fold into)")
        return QuantizedLinear(mod.quantized_weight(), mod.bias)
    from pyllmops.quant.packing import Int8Weight

    return QuantizedLinear(Int8Weight(mod.weight, mod.weight_scale.reshape(-1)), mod.bias, mod.act, mod.input_scale)


def _module(layer: QuantizedLinear) -> nn.Module:
    if layer.act is None:
        return WeightOnlyLinear(layer.weight, layer.bias)
    n, k = layer.shape
    mod = W8A8Linear(k, n, layer.bias is not None, layer.act)
    mod.weight.copy_(layer.weight.qweight)
    mod.weight_scale.copy_(layer.weight.scales.reshape(1, -1).float())
    if layer.bias is not None:
        mod.bias.copy_(layer.bias.float())
    if layer.act == "static":
        mod.input_scale.copy_(layer.input_scale.reshape(1).float())
    return mod


# ----------------------------------------------------------------------------- model kinds
@dataclass(frozen=True)
class ModelKind:
    """A non-transformers model class that checkpoints can hold: to_config(model) -> a transformers
    config dict; build(config dict) -> an empty float model, or None when the config does not fit
    the class; prefix: what the checkpoint's tensor names carry in front of the model's own
    (e.g. "model."), names starting with one of `unprefixed` excepted."""
    cls: type
    to_config: Callable[[nn.Module], dict]
    build: Callable[[dict], Optional[nn.Module]]
    prefix: str = ""
    unprefixed: tuple[str, ...] = ()

    def file_name(self, name: str) -> str:
        return name if name.startswith(self.unprefixed) else self.prefix + name

    def model_name(self, name: str) -> str:
        return name[len(self.prefix):] if name.startswith(self.prefix) else name


_KINDS: list[ModelKind] = []
_TRANSFORMERS = ModelKind(nn.Module, lambda m: m.config.to_dict(), lambda c: None)


def register_model(kind: ModelKind) -> None:
    """Let save_quantized / load_quantized handle `kind.cls` (pyllmops.models registers its Llama)."""
    _KINDS.append(kind)


def _kind_of(model: nn.Module) -> ModelKind:
    for kind in _KINDS:
        if isinstance(model, kind.cls):
            return kind
    if hasattr(getattr(model, "config", None), "to_dict"):
        return _TRANSFORMERS
    raise TypeError(f"model must be a transformers PreTrainedModel or a registered model class such as "
                    f"pyllmops.models.Llama, got {type(model).__name__}")


# ----------------------------------------------------------------------------- save
def save_quantized(model: nn.Module, path: str | os.PathLike, format: str = "compressed-tensors", *,
                   tokenizer=None) -> Path:
    """Write `model` (quantized by pyllmops.quantize) to directory `path` in `format`; returns the path."""
    fmt = format_module(format)
    kind = _kind_of(model)
    layers, floats, owned = {}, [], set()
    for name, mod in model.named_modules():
        if isinstance(mod, (WeightOnlyLinear, W8A8Linear)):
            try:
                layers[kind.file_name(name)] = _describe(name, mod)
            except FormatError as e:
                raise FormatError(f"{format}: {e}") from None
            owned.add(name)
        elif isinstance(mod, nn.Linear):
            floats.append(kind.file_name(name))
    if not layers:
        raise FormatError(f"{format}: the model has no pyllmops quantized layers: run pyllmops.quantize first")
    tensors, qconfig = fmt.export(layers, floats)
    tensors.update(_float_tensors(model, owned, kind))

    cfg = kind.to_config(model)
    cfg["quantization_config"] = qconfig
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    from safetensors.torch import save_file

    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(out / "model.safetensors"),
              metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True, default=str) + "\n")
    for file, body in fmt.extra_files(qconfig).items():
        (out / file).write_text(json.dumps(body, indent=2) + "\n")
    _write_tokenizer(model, out, tokenizer)
    return out


def _float_tensors(model: nn.Module, owned: set[str], kind: ModelKind) -> dict[str, torch.Tensor]:
    """The model's other parameters and persistent buffers, a tied weight once (under its first name)."""
    out, seen = {}, set()
    for key, value in model.state_dict(keep_vars=True).items():
        owner = key.rpartition(".")[0]
        if owner in owned or value is None:
            continue
        if id(value) in seen:  # tied (e.g. lm_head.weight = embed_tokens.weight)
            continue
        seen.add(id(value))
        out[kind.file_name(key)] = value.detach()
    return out


def _write_tokenizer(model: nn.Module, out: Path, tokenizer) -> None:
    if tokenizer is not None:
        if not hasattr(tokenizer, "save_pretrained"):
            raise TypeError(f"tokenizer must have save_pretrained (a transformers tokenizer), got {type(tokenizer).__name__}")
        tokenizer.save_pretrained(str(out))
    source = getattr(getattr(model, "config", None), "_name_or_path", "") or ""
    if source and Path(source).is_dir() and Path(source).resolve() != out.resolve():
        for file in TOKENIZER_FILES:
            if (Path(source) / file).is_file() and not (out / file).exists():
                shutil.copy2(Path(source) / file, out / file)
    generation = getattr(model, "generation_config", None)
    if generation is not None and hasattr(generation, "save_pretrained") and not (out / "generation_config.json").exists():
        generation.save_pretrained(str(out))


# ----------------------------------------------------------------------------- load
def read_config(path: Path) -> dict:
    """config.json, with quantize_config.json (GPTQ) as its quantization_config when it has none."""
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path} has no config.json")
    config = json.loads((path / "config.json").read_text())
    if "quantization_config" not in config and (path / "quantize_config.json").is_file():
        config["quantization_config"] = {"quant_method": "gptq", **json.loads((path / "quantize_config.json").read_text())}
    return config


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    """The checkpoint's tensors, from the files transformers reads: the shards that
    model.safetensors.index.json lists, else model.safetensors. Other .safetensors files in the
    directory (a Mistral repo's consolidated.safetensors, adapters) are not the model's."""
    from safetensors.torch import load_file

    index = path / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text()).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise FormatError(f"{index} has no weight_map")
        files = [path / f for f in sorted(set(weight_map.values()))]
        absent = [f.name for f in files if not f.is_file()]
        if absent:
            raise FileNotFoundError(f"{index} lists shards that are not in {path}: {absent[:4]}")
    elif (path / "model.safetensors").is_file():
        files = [path / "model.safetensors"]
    else:
        raise FileNotFoundError(f"{path} has neither model.safetensors nor model.safetensors.index.json")
    tensors = {}
    for f in files:
        tensors.update(load_file(str(f)))
    return tensors


def load_quantized(path: str | os.PathLike, *, device: str | torch.device = "cpu",
                   dtype: Optional[torch.dtype] = None) -> nn.Module:
    """A model with pyllmops modules from a compressed-tensors, GPTQ or AWQ checkpoint directory,
    in eval mode. dtype: of the float parameters (default float32)."""
    path = Path(path)
    config = read_config(path)
    name = detect(config)
    tensors = read_tensors(path)
    layers = format_module(name).import_(tensors, config["quantization_config"])
    model, kind = _build(path, config)
    dtype = dtype or torch.float32
    model.to(dtype)
    replaced = set()
    for hf, layer in layers.items():
        local = kind.model_name(hf)
        replaced.add(local)
        try:
            target = model.get_submodule(local)
        except AttributeError:
            raise FormatError(f"{name}: checkpoint layer {hf} is not a module of {type(model).__name__}") from None
        if not isinstance(target, nn.Linear) or (target.out_features, target.in_features) != layer.shape:
            shape = (target.out_features, target.in_features) if isinstance(target, nn.Linear) else type(target).__name__
            raise FormatError(f"{name}: checkpoint layer {hf} is {list(layer.shape)} but the model's is {shape}")
        replace_module(model, local, _module(layer))
    state = {kind.model_name(k): v.to(dtype) if v.is_floating_point() else v for k, v in tensors.items()}
    result = model.load_state_dict(state, strict=False)
    if result.unexpected_keys:
        raise FormatError(f"{name}: tensors that belong to no module of {type(model).__name__}: "
                          f"{sorted(result.unexpected_keys)[:8]}")
    tied = {"lm_head.weight"} if (config.get("tie_word_embeddings", True) and "lm_head" not in layers) else set()
    missing = [k for k in result.missing_keys if k not in tied and k.rpartition(".")[0] not in replaced]
    if missing:
        raise FormatError(f"{name}: the checkpoint lacks {sorted(missing)[:8]}")
    if tied and hasattr(model, "tie_weights"):
        model.tie_weights()
    model = model.to(device).eval()
    pack_huge_pages(model)  # the packed weights a decode step streams, in 2 MB pages
    return model


def _build(path: Path, config: dict) -> tuple[nn.Module, ModelKind]:
    """(the float model skeleton, how its names map to the checkpoint's)."""
    try:
        import transformers
    except ImportError:
        transformers = None
    if transformers is not None:
        cfg = transformers.AutoConfig.from_pretrained(str(path))
        if hasattr(cfg, "quantization_config"):
            del cfg.quantization_config
        return transformers.AutoModelForCausalLM.from_config(cfg, dtype=torch.float32), _TRANSFORMERS
    for package in PLUGINS:  # registration happens on import (see the module docstring)
        importlib.import_module(package)
    for kind in _KINDS:
        model = kind.build(config)
        if model is not None:
            return model, kind
    raise FormatError(f"without transformers only checkpoints of a registered model class load (pyllmops.models' "
                      f"Llama: plain Llama configs); this one is model_type {config.get('model_type')!r}: "
                      f"pip install transformers")


__all__ = ["FORMATS", "FormatError", "ModelKind", "load_quantized", "register_model", "save_quantized"]
