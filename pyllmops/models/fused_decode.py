"""The Llama decode step as one C++ call (csrc/cpu/decode.cpp) instead of ~40 torch calls per layer.

    decoder = FusedDecoder.build(model)          # None where the C++ step cannot serve the model
    FusedDecoder.unsupported(model) -> str | None  # why not, naming the module
    logits = decoder.step(ids [B] int64, cache)  # == model(ids[:, None], cache=cache)[:, -1]

On a small model the decode step is dominated by what surrounds the projections: per layer the
modules run RMSNorm, three projections, RoPE on q and k (a cat, two products, a sum each), the
cache append, two batched matmuls and a softmax, SwiGLU and two residual adds, each a dispatcher
call of several microseconds. The C++ step runs the same arithmetic on the same weights (the
weight-only kernels the modules call for int4 / int8 projections, a float32 one for nn.Linear) and
writes the same KV cache (float32, or float16 rounded as torch's .half() rounds: F16C on the C++
side), so prefill (the modules) and decode (this) can alternate freely. The modules in
pyllmops/models/llama.py stay the specification: tests compare the two step by step.

It serves float32 Llama models on the CPU whose projections are all nn.Linear (no bias) or
WeightOnlyLinear (int4, act-order too: x's columns permuted as the module's x[:, perm], or int8;
no input scale, no bias; with its compute_dtype, x rounded to bfloat16 by the same kernels as its
own decode path); anything
else (tensor-parallel layers, bf16, hooks, CUDA) keeps the module path, and `unsupported` says why.
The embedding, the final norm and the LM head stay modules (one call each). The table holds
references to the weights it points at: build it after the model's weights are final (generate
builds one per call). No autograd: decode runs under torch.inference_mode.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from pyllmops import _ext
from pyllmops.models.llama import MLP, Attention, DecoderLayer, KVCache, Llama, RMSNorm
from pyllmops.nn.weight_only import WeightOnlyLinear

_PROJECTIONS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
_FLOAT32, _INT4, _INT8 = 0, 1, 2


def _f32(t: Optional[torch.Tensor]) -> bool:
    return t is not None and t.dtype == torch.float32 and t.is_contiguous() and t.device.type == "cpu"


def _linear_spec(name: str, m: nn.Module, in_features: int, out_features: int) -> tuple | str:
    """(kind, weight, scales, zeros, N, K, group_size, bf16_x, perm) for the C++ table and the tensors
    it points at, or why it cannot be served."""
    if type(m) is nn.Linear:
        if m.bias is not None or not _f32(m.weight) or in_features % 16:
            return f"{name}: nn.Linear needs float32 contiguous CPU weight, no bias, in_features % 16 == 0"
        w = m.weight
        spec = (_FLOAT32, w.data_ptr(), 0, 0, w.shape[0], w.shape[1], 0, False, 0), (w,)
    elif type(m) is WeightOnlyLinear:
        if m.bias is not None or m.input_scale is not None or not _f32(m.scales):
            return f"{name}: WeightOnlyLinear with bias, input_scale or non-float32 scales"
        perm = m.perm
        if perm is not None and not (m.int4 and perm.dtype == torch.int64 and perm.is_contiguous()
                                     and perm.device.type == "cpu" and tuple(perm.shape) == (m.in_features,)
                                     and int(perm.min()) >= 0 and int(perm.max()) < m.in_features):
            return f"{name}: act-order perm must be int4's, int64 [in_features] on the CPU, in range"
        if m.qweight.device.type != "cpu" or not m.qweight.is_contiguous():
            return f"{name}: WeightOnlyLinear weight must be contiguous on the CPU"
        bf16_x = m.compute_dtype is not None  # x rounded to bfloat16 as the module's own decode path does
        if m.int4:
            gs = m.in_features if m.group_size == -1 else m.group_size
            if m.g_idx is not None or m.in_features % 32 or gs % 32 or not m.zeros.is_contiguous():
                return f"{name}: int4 needs in_features and group_size multiples of 32 and no g_idx"
            spec = ((_INT4, m.qweight.data_ptr(), m.scales.data_ptr(), m.zeros.data_ptr(), m.out_features,
                     m.in_features, gs, bf16_x, 0 if perm is None else perm.data_ptr()),
                    (m.qweight, m.scales, m.zeros) + (() if perm is None else (perm,)))
        else:
            if m.in_features % 16:
                return f"{name}: int8 needs in_features % 16 == 0"
            spec = ((_INT8, m.qweight.data_ptr(), m.scales.data_ptr(), 0, m.out_features, m.in_features, 0, bf16_x,
                     0), (m.qweight, m.scales))
    else:
        return f"{name}: {type(m).__name__} (the fused step serves nn.Linear and WeightOnlyLinear)"
    if (spec[0][4], spec[0][5]) != (out_features, in_features):
        return f"{name}: shape [{spec[0][4]}, {spec[0][5]}], expected [{out_features}, {in_features}]"
    return spec


class FusedDecoder:
    """The C++ layer table of one model (see the module docstring)."""

    def __init__(self, model: Llama, table, keep: list[torch.Tensor]):
        self.model = model
        self._table = table
        self._keep = keep  # the tensors the table points at
        self._cache_ptrs: tuple[KVCache, torch.Tensor, torch.Tensor] | None = None

    @staticmethod
    def unsupported(model: nn.Module) -> Optional[str]:
        """Why `build` returns None for this model (None when it does not)."""
        return FusedDecoder._plan(model)[1]

    @classmethod
    def build(cls, model: nn.Module) -> Optional["FusedDecoder"]:
        plan, _ = cls._plan(model)
        return None if plan is None else cls(model, *plan)

    @staticmethod
    def _plan(model: nn.Module):
        if not isinstance(model, Llama):
            return None, f"{type(model).__name__} is not pyllmops.models.Llama"
        if not _ext.has_cpp():
            return None, "the C++ extension is not built"
        cfg = model.config
        if not (_f32(model.embed_tokens.weight) and _f32(model.rope_cos) and _f32(model.rope_sin)):
            return None, "embedding and RoPE tables must be float32 on the CPU (model dtype/device)"
        if cfg.head_dim % 2 or cfg.n_heads % cfg.n_kv_heads:
            return None, f"head_dim {cfg.head_dim} must be even and n_heads a multiple of n_kv_heads"
        hooked = [n for n, m in model.layers.named_modules() if m._forward_hooks or m._forward_pre_hooks]
        if hooked:
            return None, f"layers.{hooked[0]} has forward hooks (the fused step would skip them)"
        q_out, kv_out = cfg.n_heads * cfg.head_dim, cfg.n_kv_heads * cfg.head_dim
        shapes = ((cfg.dim, q_out), (cfg.dim, kv_out), (cfg.dim, kv_out), (q_out, cfg.dim),
                  (cfg.dim, cfg.ffn_dim), (cfg.dim, cfg.ffn_dim), (cfg.ffn_dim, cfg.dim))
        table = _ext.cpp().LlamaDecoder(cfg.dim, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.ffn_dim, cfg.norm_eps)
        keep: list[torch.Tensor] = []
        for i, layer in enumerate(model.layers):
            if (type(layer) is not DecoderLayer or type(layer.self_attn) is not Attention
                    or type(layer.mlp) is not MLP):
                return None, f"layers.{i} is not the plain DecoderLayer / Attention / MLP of llama.py"
            norms = (layer.input_layernorm, layer.post_attention_layernorm)
            if any(type(n) is not RMSNorm or not _f32(n.weight) or n.eps != cfg.norm_eps for n in norms):
                return None, f"layers.{i}: norms must be float32 RMSNorm with eps = config.norm_eps"
            specs = []
            for name, (k, n) in zip(_PROJECTIONS, shapes):
                spec = _linear_spec(f"layers.{i}.{name}", layer.get_submodule(name), k, n)
                if isinstance(spec, str):
                    return None, spec
                specs.append(spec[0])
                keep.extend(spec[1])
            table.add_layer(norms[0].weight.data_ptr(), norms[1].weight.data_ptr(), specs)
            keep.extend(n.weight for n in norms)
        keep.extend((model.rope_cos, model.rope_sin))
        return (table, keep), None

    def _cache_tables(self, cache: KVCache) -> tuple[torch.Tensor, torch.Tensor]:
        """The per-layer data pointers of cache.k and cache.v, as int64 tensors (made once per cache)."""
        if self._cache_ptrs is None or self._cache_ptrs[0] is not cache:
            cfg = self.model.config
            b = cache.key_mask.shape[0]
            want = (b, cfg.n_kv_heads, cache.capacity, cfg.head_dim)
            for t in (*cache.k, *cache.v):
                if t is None:
                    raise ValueError("cache holds no keys yet: run the prompt through the model first")
                if (tuple(t.shape) != want or t.dtype != cache.dtype or t.dtype not in (torch.float32, torch.float16)
                        or not t.is_contiguous() or t.device.type != "cpu"):
                    raise ValueError(f"cache tensors must be float32 or float16 (the cache's dtype {cache.dtype}), "
                                     f"contiguous {list(want)} on the CPU, got {t.dtype} {list(t.shape)}")
            if cache.dtype == torch.float16 and not _ext.cpp().has_f16c():
                raise ValueError("a float16 KV cache needs a CPU with F16C for the fused step (use dtype=torch.float32)")
            self._cache_ptrs = (cache, torch.tensor([t.data_ptr() for t in cache.k], dtype=torch.int64),
                                torch.tensor([t.data_ptr() for t in cache.v], dtype=torch.int64))
        return self._cache_ptrs[1], self._cache_ptrs[2]

    @torch.inference_mode()
    def step(self, ids: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """ids [B] int64, one new (real) token per row of `cache`; returns logits [B, V] float32
        and advances the cache by one slot, as model(ids[:, None], cache=cache)[:, -1] does."""
        if ids.dim() != 1 or ids.dtype != torch.long or ids.device.type != "cpu":
            raise ValueError(f"ids must be a [B] int64 CPU tensor, got {ids.dtype} {list(ids.shape)} on {ids.device}")
        b, start = ids.shape[0], cache.length
        if b != cache.key_mask.shape[0]:
            raise ValueError(f"ids has {b} rows but the cache holds {cache.key_mask.shape[0]}")
        if start >= cache.capacity:
            raise ValueError(f"KV cache full: {start} + 1 tokens > capacity {cache.capacity}")
        k_ptrs, v_ptrs = self._cache_tables(cache)
        model = self.model
        x = model.embed_tokens(ids).contiguous()  # [B, dim] float32, overwritten by the layers' output
        positions = cache.n_real.clone()
        cache.key_mask[:, start] = True
        cache.n_real += 1
        self._table.step(x.data_ptr(), b, positions.data_ptr(), model.rope_cos.data_ptr(), model.rope_sin.data_ptr(),
                         k_ptrs.data_ptr(), v_ptrs.data_ptr(), cache.capacity, start,
                         cache.key_mask.data_ptr() if cache.padded else 0, torch.get_num_threads(),
                         cache.dtype == torch.float16)
        cache.length = start + 1
        return model.lm_head(model.norm(x)).float()
