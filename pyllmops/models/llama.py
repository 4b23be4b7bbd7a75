"""A small, readable Llama: RMSNorm, rotate-half RoPE, grouped-query attention, SwiGLU, a
preallocated KV cache, and batches of left-padded prompts.

Module names follow Hugging Face (`layers[i].self_attn.q_proj`, `layers[i].mlp.down_proj`,
`layers[i].input_layernorm`, ...) and every projection is built by `linear_cls` (default
`nn.Linear`), so `pyllmops.quantize(model, ...)` (which swaps nn.Linear modules) and tensor-parallel
layers drop in without touching this file.

Shapes: B batch, T new tokens, S keys (cached + new), H query heads, KV key/value heads,
G = H // KV queries per key/value head, D head dim.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from pyllmops.models.causal_attention import causal_attention

LinearFactory = Callable[[int, int], nn.Module]


def _linear(in_features: int, out_features: int) -> nn.Module:
    return nn.Linear(in_features, out_features, bias=False)


@dataclass
class LlamaConfig:
    vocab_size: int = 49152
    dim: int = 576
    n_layers: int = 30
    n_heads: int = 9
    n_kv_heads: int = 3
    ffn_dim: int = 1536
    rope_theta: float = 100000.0
    norm_eps: float = 1e-5
    max_seq_len: int = 8192
    tie_embeddings: bool = True

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads


KV_CACHE_DTYPES = (torch.float32, torch.float16)


class KVCache:
    """Keys and values of every layer, allocated once for `capacity` slots.

    k[i], v[i]: [B, KV, capacity, D] in `dtype`, allocated at a layer's first update with the KV
    head count it sees (a tensor-parallel rank holds only its share of the heads). Attention runs
    in float32 whatever the weights' dtype (small bf16 batched matmuls are slow on CPU, and
    softmax wants the range); a float16 cache stores k and v rounded to nearest even (|values|
    past 65504 become inf, as in llama.cpp's f16 cache, its default) and is read back as float32:
    half the memory, and half the bytes each decode step reads, which is what a step costs at
    long context. Slot j holds the j-th
    token fed to the model for every row; with left padding a slot may hold a pad, which
    `key_mask` [B, capacity] (True = real token) hides from attention. `n_real` [B] counts each
    row's real tokens (its next RoPE position)."""

    def __init__(self, config: LlamaConfig, batch: int, capacity: int, *, device: torch.device | str,
                 dtype: torch.dtype = torch.float32):
        if dtype not in KV_CACHE_DTYPES:
            raise ValueError(f"dtype must be one of {[str(d) for d in KV_CACHE_DTYPES]}, got {dtype}")
        self.dtype = dtype
        self.k: list[torch.Tensor | None] = [None] * config.n_layers
        self.v: list[torch.Tensor | None] = [None] * config.n_layers
        self.key_mask = torch.zeros(batch, capacity, dtype=torch.bool, device=device)
        self.n_real = torch.zeros(batch, dtype=torch.long, device=device)
        self.length = 0  # slots written so far
        self.padded = False  # any pad written: attention then needs key_mask
        self.capacity = capacity

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write k, v [B, KV, T, D] (float32) at slots [length, length + T) of `layer`; return the
        filled prefix [B, KV, length + T, D] in float32 (views of a float32 cache; copies of a
        float16 one)."""
        if self.k[layer] is None:
            b, kv, _, d = k.shape
            self.k[layer] = k.new_zeros(b, kv, self.capacity, d, dtype=self.dtype)
            self.v[layer] = v.new_zeros(b, kv, self.capacity, d, dtype=self.dtype)
        end = self.length + k.shape[2]
        self.k[layer][:, :, self.length:end].copy_(k)
        self.v[layer][:, :, self.length:end].copy_(v)
        return self.k[layer][:, :, :end].float(), self.v[layer][:, :, :end].float()


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, self.weight.shape, self.weight, self.eps)


def rope_tables(config: LlamaConfig, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin [max_seq_len, D] float32 for rotate-half RoPE (frequency i shared by dims i and i + D/2)."""
    d = config.head_dim
    inv_freq = 1.0 / (config.rope_theta ** (torch.arange(0, d, 2, dtype=torch.float64, device=device) / d))
    angles = torch.outer(torch.arange(config.max_seq_len, dtype=torch.float64, device=device), inv_freq)
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos().float(), angles.sin().float()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: [B, heads, T, D]; cos, sin: [B, 1, T, D] (already gathered at each token's position)."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, causal: bool) -> torch.Tensor:
    """q: [B, H, T, D]; k, v: [B, KV, S, D]; mask: [B, 1, T, S] bool (True = may attend) or None.
    Returns [B, T, H * D]. All float32.

    One-token queries (decode) take a plain matmul path: CPU scaled_dot_product_attention has a
    high fixed cost there, and grouping the G query heads of a KV head into one matrix avoids
    repeating K/V. Longer queries use SDPA (causal=True means mask is None and S == T), or for
    causal=True on an AVX2 / AVX-512 CPU the C++ kernel of causal_attention.py."""
    b, h, t, d = q.shape
    kv = k.shape[1]
    if t == 1:
        qg = q.reshape(b, kv, h // kv, d)
        scores = torch.matmul(qg, k.transpose(-1, -2)) * (1.0 / math.sqrt(d))  # [B, KV, G, S]
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))  # mask [B, 1, 1, S] broadcasts
        out = torch.matmul(torch.softmax(scores, dim=-1), v)  # [B, KV, G, D]
        return out.reshape(b, 1, h * d)
    if causal:  # the prompt against itself: the C++ kernel where it applies (causal_attention.py)
        out = causal_attention(q, k, v)
        if out is not None:
            return out
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal, enable_gqa=kv != h)
    return out.transpose(1, 2).reshape(b, t, h * d)


class Attention(nn.Module):
    def __init__(self, config: LlamaConfig, linear_cls: LinearFactory):
        super().__init__()
        self.head_dim = config.head_dim
        self.q_proj = linear_cls(config.dim, config.n_heads * config.head_dim)
        self.k_proj = linear_cls(config.dim, config.n_kv_heads * config.head_dim)
        self.v_proj = linear_cls(config.dim, config.n_kv_heads * config.head_dim)
        self.o_proj = linear_cls(config.n_heads * config.head_dim, config.dim)

    def forward(self, x, cos, sin, mask, causal, cache: KVCache | None, layer: int) -> torch.Tensor:
        """x: [B, T, dim] in the model's dtype; RoPE and attention in float32 (see KVCache)."""
        b, t, _ = x.shape
        # Head counts come from the projections' outputs (-1): a column-parallel projection
        # yields only this rank's heads.
        q = self.q_proj(x).float().view(b, t, -1, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).float().view(b, t, -1, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).float().view(b, t, -1, self.head_dim).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None:
            k, v = cache.update(layer, k, v)
        return self.o_proj(attention(q, k, v, mask, causal).to(x.dtype))


class MLP(nn.Module):
    def __init__(self, config: LlamaConfig, linear_cls: LinearFactory):
        super().__init__()
        self.gate_proj = linear_cls(config.dim, config.ffn_dim)
        self.up_proj = linear_cls(config.dim, config.ffn_dim)
        self.down_proj = linear_cls(config.ffn_dim, config.dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, config: LlamaConfig, linear_cls: LinearFactory):
        super().__init__()
        self.input_layernorm = RMSNorm(config.dim, config.norm_eps)
        self.self_attn = Attention(config, linear_cls)
        self.post_attention_layernorm = RMSNorm(config.dim, config.norm_eps)
        self.mlp = MLP(config, linear_cls)

    def forward(self, x, cos, sin, mask, causal, cache, layer) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask, causal, cache, layer)
        return x + self.mlp(self.post_attention_layernorm(x))


class Llama(nn.Module):
    """Decoder-only Llama. `linear_cls(in_features, out_features)` builds every projection of the
    decoder layers (the LM head stays an nn.Linear, tied to the embedding when the config says so)."""

    def __init__(self, config: LlamaConfig, linear_cls: LinearFactory = _linear):
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.dim)
        self.layers = nn.ModuleList(DecoderLayer(config, linear_cls) for _ in range(config.n_layers))
        self.norm = RMSNorm(config.dim, config.norm_eps)
        self.lm_head = nn.Linear(config.dim, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.embed_tokens.weight
        cos, sin = rope_tables(config)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)

    def new_cache(self, batch: int, capacity: int, dtype: torch.dtype = torch.float32) -> KVCache:
        """An empty KV cache for `batch` rows and `capacity` tokens (prompt + generated), holding
        k and v in `dtype` (float32, or float16: see KVCache)."""
        if capacity > self.config.max_seq_len:
            raise ValueError(f"capacity must be <= max_seq_len={self.config.max_seq_len}, got {capacity}")
        return KVCache(self.config, batch, capacity, device=self.embed_tokens.weight.device, dtype=dtype)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor | None = None, cache: KVCache | None = None, last_only: bool = False) -> torch.Tensor:
        """ids: [B, T] int64 token ids. mask: [B, T] bool, True for real tokens, False for left
        padding (None: no padding). cache: a KVCache to read and extend (None: the T tokens are
        the whole sequence). Returns logits [B, T, V] float32 ([B, 1, V] with last_only)."""
        if ids.dim() != 2:
            raise ValueError(f"ids must be [batch, tokens], got shape {tuple(ids.shape)}")
        b, t = ids.shape
        start = cache.length if cache is not None else 0
        if cache is not None and start + t > cache.capacity:
            raise ValueError(f"KV cache full: {start} + {t} tokens > capacity {cache.capacity}")
        if mask is not None and mask.shape != ids.shape:
            raise ValueError(f"mask must have the shape of ids {tuple(ids.shape)}, got {tuple(mask.shape)}")
        padded = mask is not None and not bool(mask.all())
        n_before = cache.n_real if cache is not None else torch.zeros(b, dtype=torch.long, device=ids.device)

        # RoPE position of a token = number of real tokens before it in its row.
        if padded:
            positions = (n_before[:, None] + mask.long().cumsum(1) - 1).clamp_(min=0)
        else:
            positions = n_before[:, None] + torch.arange(t, device=ids.device)
        # [B, 1, T, D] float32 even when model.to(dtype) converted the tables (attention is float32)
        cos = self.rope_cos[positions].unsqueeze(1).float()
        sin = self.rope_sin[positions].unsqueeze(1).float()

        attn_mask, causal = self._attention_mask(mask, padded, cache, start, t, ids.device)
        if cache is not None:
            cache.key_mask[:, start:start + t] = True if mask is None else mask
            cache.n_real += t if mask is None else mask.sum(1)
            cache.padded = cache.padded or padded

        x = self.embed_tokens(ids)
        for i, layer in enumerate(self.layers):
            x = layer(x, cos, sin, attn_mask, causal, cache, i)
        if cache is not None:
            cache.length = start + t
        if last_only:
            x = x[:, -1:]
        return self.lm_head(self.norm(x)).float()

    @staticmethod
    def _attention_mask(mask, padded, cache, start, t, device) -> tuple[torch.Tensor | None, bool]:
        """[B, 1, T, S] bool (True = may attend) or None, and whether SDPA's is_causal applies."""
        any_pad = padded or (cache is not None and cache.padded)
        if not any_pad:
            if t == 1:
                return None, False  # one new token attends to everything cached
            if start == 0:
                return None, True
        s = start + t
        query_slot = torch.arange(start, s, device=device)[:, None]
        key_slot = torch.arange(s, device=device)[None, :]
        allowed = (key_slot <= query_slot)[None]  # [1, T, S]
        if any_pad:
            keys = cache.key_mask[:, :s].clone() if cache is not None else torch.ones(mask.shape[0], s, dtype=torch.bool, device=device)
            if mask is not None:
                keys[:, start:] = mask
            # A pad query sees only itself: its output is never used, and a fully masked row
            # would turn into NaN inside softmax.
            allowed = (allowed & keys[:, None, :]) | (key_slot == query_slot)[None]
        return allowed.unsqueeze(1), False
