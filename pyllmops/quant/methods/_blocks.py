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

Another architecture declares its layout by setting `model.quant_block_spec = BlockSpec(...)` or by
passing `block_spec=` to pyllmops.quantize. The bundled Llama (and any model with a ModuleList of
blocks carrying the Llama names above) is recognised automatically. Without a spec, the whole
model is one block and every linear its own group (no folding; GPTQ then runs one forward pass of
the model per linear, fine for small models).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from torch import nn

LLAMA_GROUPS = (  # (prev, linears, inspect)
    ("input_layernorm", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"), "self_attn"),
    ("self_attn.v_proj", ("self_attn.o_proj",), None),
    ("post_attention_layernorm", ("mlp.gate_proj", "mlp.up_proj"), "mlp"),
    ("mlp.up_proj", ("mlp.down_proj",), None),
)


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


def llama_spec(model: nn.Module) -> Optional[BlockSpec]:
    """The Llama layout when `model` has a ModuleList of blocks with the Llama module names."""
    for path, mod in model.named_modules():
        if isinstance(mod, nn.ModuleList) and len(mod) and all(
                _has(mod[0], name) for prev, linears, inspect in LLAMA_GROUPS
                for name in (prev, *linears) + ((inspect,) if inspect else ())):
            return BlockSpec(path, tuple(ScaleGroup(*g) for g in LLAMA_GROUPS))
    return None


def resolve_spec(model: nn.Module, block_spec: Optional[BlockSpec]) -> BlockSpec:
    if block_spec is not None:
        return block_spec
    declared = getattr(model, "quant_block_spec", None)
    if declared is not None:
        return declared
    return llama_spec(model) or BlockSpec(None)
