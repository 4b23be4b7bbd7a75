"""How a model's repeated blocks are laid out, for the calibrated weight-only methods.

GPTQ quantizes block by block so that each layer is calibrated on inputs produced by the already
quantized layers before it; AWQ folds its per-channel scales into the op that feeds a group of
linears. Both need to know the block structure, declared as a BlockSpec:

    BlockSpec(blocks="layers", groups=(
        ScaleGroup(prev="input_layernorm", linears=("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
                   inspect="self_attn"),
        ScaleGroup(prev="self_attn.v_proj", linears=("self_attn.o_proj",)),
        ScaleGroup(prev="post_attention_layernorm", linears=("mlp.gate_proj", "mlp.up_proj"), inspect="mlp"),
        ScaleGroup(prev="mlp.up_proj", linears=("mlp.down_proj",)),
    ))

`blocks` is the dotted path of the nn.ModuleList of blocks; each block is called as
block(hidden, *other_args, **kwargs) and returns the next hidden state (or a tuple starting with
it). `groups` lists, in forward order, the linears that read the same input and the module that
produces that input: a norm with a `weight` [K] (scales divide it) or an nn.Linear (scales divide
its output rows), or None when the scales cannot be folded (AWQ then keeps them as the layer's
input_scale). `inspect` optionally names the submodule whose output
the group's linears feed (here the attention and the MLP): AWQ with inspect=True then searches
its scales on that module's output error (softmax, RoPE, SiLU gating included), as llm-awq and AutoAWQ do, rather
than on each linear's own output. Linears of a block not named in any group are quantized on their own, after the
named ones.

The layouts of the families transformers builds are declared once, in FAMILIES, by the module
names of one block (found in the module tree: the first nn.ModuleList whose first block has every
name of a family): Llama (also Mistral, Qwen2, SmolLM2 and pyllmops.models' Llama), Phi-3 (fused
qkv_proj / gate_up_proj) and GPT-2 (c_attn / c_fc; its Conv1D layers become nn.Linear first). A
producer that is a row slice of a fused linear (the value rows of qkv_proj feed o_proj, the up
rows of gate_up_proj feed down_proj) is folded into by SmoothQuant (SmoothGroup.rows); AWQ's
scales for those groups stay on the layer as its input_scale (ScaleGroup with prev=None).
Another architecture declares its layout by setting `model.quant_block_spec = BlockSpec(...)` or by
passing `block_spec=` to pyllmops.quantize. Without a spec, the whole model is one block and every
linear its own group (no folding; GPTQ then runs one forward pass of the model per linear, fine
for small models).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from pyllmops.quant.smoothquant import SmoothGroup


def _value_rows(prev: nn.Linear, consumer: nn.Linear) -> tuple[int, int]:
    """The value rows of a fused [q; k; v] projection: q has consumer.in_features rows, k and v
    the rest in halves."""
    kv = (prev.out_features - consumer.in_features) // 2
    return prev.out_features - kv, prev.out_features


def _up_rows(prev: nn.Linear, consumer: nn.Linear) -> tuple[int, int]:
    """The up rows of a fused [gate; up] projection (its second half)."""
    return prev.out_features - consumer.in_features, prev.out_features


# (prev, linears, inspect, rows): rows(prev, consumer) -> (start, stop) when prev is a fused
# linear of which only those output rows are the linears' input.
LLAMA_GROUPS = (
    ("input_layernorm", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"), "self_attn", None),
    ("self_attn.v_proj", ("self_attn.o_proj",), None, None),
    ("post_attention_layernorm", ("mlp.gate_proj", "mlp.up_proj"), "mlp", None),
    ("mlp.up_proj", ("mlp.down_proj",), None, None),
)
PHI3_GROUPS = (
    ("input_layernorm", ("self_attn.qkv_proj",), "self_attn", None),
    ("self_attn.qkv_proj", ("self_attn.o_proj",), None, _value_rows),
    ("post_attention_layernorm", ("mlp.gate_up_proj",), "mlp", None),
    ("mlp.gate_up_proj", ("mlp.down_proj",), None, _up_rows),
)
GPT2_GROUPS = (  # mlp.c_proj reads gelu(c_fc(x)): no linear producer, quantized on its own
    ("ln_1", ("attn.c_attn",), "attn", None),
    ("attn.c_attn", ("attn.c_proj",), None, _value_rows),
    ("ln_2", ("mlp.c_fc",), "mlp", None),
)
FAMILIES = {"llama": LLAMA_GROUPS, "phi3": PHI3_GROUPS, "gpt2": GPT2_GROUPS}


@dataclass(frozen=True)
class ScaleGroup:
    prev: Optional[str]
    linears: tuple[str, ...]
    inspect: Optional[str] = None  # the block submodule whose output AWQ's scale search watches


@dataclass(frozen=True)
class BlockSpec:
    blocks: Optional[str]  # None: the model itself is the only block
    groups: tuple[ScaleGroup, ...] = ()


def _has(module: nn.Module, name: str) -> bool:
    try:
        module.get_submodule(name)
        return True
    except AttributeError:
        return False


def find_family(model: nn.Module) -> Optional[tuple[str, str, tuple]]:
    """(blocks path, family name, groups) of the first nn.ModuleList whose first block has every
    module name of a family in FAMILIES; None when no family matches."""
    for path, mod in model.named_modules():
        if not (isinstance(mod, nn.ModuleList) and len(mod)):
            continue
        for family, groups in FAMILIES.items():
            if all(_has(mod[0], name) for prev, linears, inspect, _ in groups
                   for name in (prev, *linears) + ((inspect,) if inspect else ())):
                return path, family, groups
    return None


def family_spec(model: nn.Module) -> Optional[BlockSpec]:
    """The BlockSpec of a model of a known family (see FAMILIES); None otherwise."""
    found = find_family(model)
    if found is None:
        return None
    path, _, groups = found
    return BlockSpec(path, tuple(ScaleGroup(None if rows else prev, linears, inspect)
                                 for prev, linears, inspect, rows in groups))


def llama_spec(model: nn.Module) -> Optional[BlockSpec]:
    """The Llama layout when `model` has a ModuleList of blocks with the Llama module names."""
    found = find_family(model)
    return family_spec(model) if found is not None and found[1] == "llama" else None


def family_smooth_groups(model: nn.Module) -> list[SmoothGroup]:
    """SmoothQuant's groups for every block of a model of a known family: only nn.Linear
    consumers and producers (an already quantized layer is left out); grouped-query value
    projections get kv_head_dim from the attention module's head_dim."""
    found = find_family(model)
    if found is None:
        return []
    path, _, table = found
    out = []
    for i, block in enumerate(model.get_submodule(path)):
        pre = f"{path}.{i}."
        for prev, linears, _, rows in table:
            lins = tuple(n for n in linears if type(block.get_submodule(n)) is nn.Linear)
            producer = block.get_submodule(prev)
            is_norm = isinstance(getattr(producer, "weight", None), torch.Tensor) and producer.weight.dim() == 1
            if not lins or not (type(producer) is nn.Linear or is_norm):
                continue
            consumer = block.get_submodule(lins[0])
            span = rows(producer, consumer) if rows else None
            n_prev = (span[1] - span[0]) if span else (producer.out_features if isinstance(producer, nn.Linear)
                                                       else consumer.in_features)
            kv_head_dim = None
            if n_prev != consumer.in_features:
                attn = block.get_submodule(prev.rpartition(".")[0])
                kv_head_dim = getattr(attn, "head_dim", None)
                if kv_head_dim is None:
                    continue  # cannot tell the head layout: left unsmoothed (reported by the method)
            out.append(SmoothGroup(pre + prev, tuple(pre + n for n in lins), kv_head_dim=kv_head_dim, rows=span))
    return out


def resolve_spec(model: nn.Module, block_spec: Optional[BlockSpec]) -> BlockSpec:
    if block_spec is not None:
        return block_spec
    declared = getattr(model, "quant_block_spec", None)
    if declared is not None:
        return declared
    return family_spec(model) or BlockSpec(None)
