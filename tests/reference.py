"""Test oracles written from the definitions, sharing no code with the package.

The package's own references (`_reference` backends) are convenient but call the same helpers as
its torch backend (`dequantize_int4`, `quantize_activations_q8`, `rope_tables`, ...): a bug there
is in the oracle too. These are the definitions read off the docstrings and the formats they
follow (pyllmops/quant/packing.py, llama.cpp Q8_0, HF Llama's rotate-half RoPE and forward,
tiktoken's o200k_base), written plainly — per-element loops where the layout is the point, float64
everywhere — so that a planted bug in the package (scripts/mutation_check.py) fails the tests.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

# tiktoken's o200k_base split (tiktoken_ext/openai_public.py, `o200k_base()`), written out here
# rather than imported from pyllmops.tokenizer, so that the package's copy is checked against it.
O200K_PATTERN = "|".join([
    r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
    r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
    r"""\p{N}{1,3}""",
    r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
    r"""\s*[\r\n]+""",
    r"""\s+(?!\S)""",
    r"""\s+""",
])
O200K_SPECIAL_TOKENS = {"<|endoftext|>": 199999, "<|endofprompt|>": 200018}


def unpack_int4(qweight: torch.Tensor) -> torch.Tensor:
    """qweight [N, K/2] uint8 -> q [N, K] int64: byte j of a row holds k = 2j in its low nibble and
    k = 2j + 1 in its high nibble (the layout of packing.py), unpacked byte by byte."""
    n, half = qweight.shape
    rows = qweight.tolist()
    q = [[0] * (2 * half) for _ in range(n)]
    for r in range(n):
        for j, byte in enumerate(rows[r]):
            q[r][2 * j] = byte % 16
            q[r][2 * j + 1] = byte // 16
    return torch.tensor(q, dtype=torch.int64)


def group_index(k: int, group_size: int, g_idx: torch.Tensor | None = None) -> list[int]:
    """The group of each input channel: g_idx[k], else k // group_size (-1: one group)."""
    if g_idx is not None:
        return [int(g) for g in g_idx.tolist()]
    return [0 if group_size == -1 else c // group_size for c in range(k)]


def dequantize_int4(qweight, scales, zeros, group_size, g_idx=None) -> torch.Tensor:
    """W [N, K] float64, W[n, k] = (q[n, k] - zeros[n, g(k)]) * scales[n, g(k)]."""
    q = unpack_int4(qweight).double()
    groups = torch.tensor(group_index(q.shape[1], group_size, g_idx))
    z = zeros.double()[:, groups]          # [N, K]: each channel's own zero point and scale
    s = scales.double()[:, groups]
    return (q - z) * s


def w4_matmul(x, qweight, scales, zeros, group_size, g_idx=None) -> torch.Tensor:
    """x [M, K] @ W^T in float64 (the exact w4a16 product)."""
    return x.double() @ dequantize_int4(qweight, scales, zeros, group_size, g_idx).t()


def w8_matmul(x, qweight, scales) -> torch.Tensor:
    """x [M, K] @ (q [N, K] int8 * scales [N, 1])^T in float64."""
    return x.double() @ (qweight.double() * scales.double().reshape(-1, 1)).t()


def q8_0(x: torch.Tensor, block: int = 32) -> torch.Tensor:
    """llama.cpp's Q8_0 activation rounding, as the value it stands for: per row, per block of 32
    channels, d = max|x| / 127 (float32, as the kernels compute it), q = round-half-even(x / d)
    (q = 0 where d = 0); returns q * d in float64 [M, K]. A block holding a NaN or inf is NaN."""
    x32 = x.float()
    m, k = x32.shape
    out = torch.empty(m, k, dtype=torch.float64)
    for r in range(m):
        for b0 in range(0, k, block):
            blk = x32[r, b0:b0 + block]
            if not bool(torch.isfinite(blk).all()):
                out[r, b0:b0 + block] = float("nan")
                continue
            d = blk.abs().max() / torch.tensor(127.0)  # float32 division
            q = torch.zeros_like(blk) if float(d) == 0 else torch.round(blk / d)
            out[r, b0:b0 + block] = q.double() * float(d)
    return out


def w4a8_matmul(x, qweight, scales, zeros, group_size) -> torch.Tensor:
    """Q8_0(x) @ W^T in float64."""
    return q8_0(x) @ dequantize_int4(qweight, scales, zeros, group_size).t()


def int8_scale(x: torch.Tensor, granularity: str) -> torch.Tensor:
    """The symmetric int8 scale in float64, max(absmax, float32 tiny * 127) / 127, of the whole
    tensor [1], each row ("token", [M, 1]) or each column ("channel", [1, N]) of x [M, N], from a
    loop over the rows / columns."""
    xd = x.double().abs()
    tiny = torch.finfo(torch.float32).tiny * 127
    if granularity == "tensor":
        return torch.tensor([max(float(xd.max()), tiny) / 127], dtype=torch.float64)
    lines = xd if granularity == "token" else xd.t()
    amax = torch.tensor([max(float(line.max()), tiny) / 127 for line in lines], dtype=torch.float64)
    return amax[:, None] if granularity == "token" else amax[None, :]


def fake_quant_int8(x: torch.Tensor, granularity: str, scale: torch.Tensor | None = None) -> torch.Tensor:
    """Symmetric int8 round trip in float64: scale = int8_scale(x, granularity) unless given,
    q = clamp(round(x / scale), -127, 127), returns q * scale."""
    xd = x.double()
    scale = int8_scale(x, granularity) if scale is None else scale.double()
    return torch.clamp(torch.round(xd / scale), -127, 127) * scale


def rope(x: torch.Tensor, positions, theta: float) -> torch.Tensor:
    """Rotate-half RoPE (HF Llama) in float64. x [..., T, D]; channel i < D/2 pairs with i + D/2
    and both turn by the angle pos * theta^(-2i/D):
        out_i = x_i cos - x_{i+D/2} sin,   out_{i+D/2} = x_{i+D/2} cos + x_i sin."""
    xd = x.double()
    d = xd.shape[-1]
    half = d // 2
    out = torch.empty_like(xd)
    for t, pos in enumerate(positions):
        for i in range(half):
            a = pos * theta ** (-2.0 * i / d)
            c, s = math.cos(a), math.sin(a)
            lo, hi = xd[..., t, i], xd[..., t, i + half]
            out[..., t, i] = lo * c - hi * s
            out[..., t, i + half] = hi * c + lo * s
    return out


def llama_forward(model, ids: torch.Tensor) -> torch.Tensor:
    """Logits [B, T, vocab] float64 of a float Llama (pyllmops.models.llama.Llama's attribute names:
    embed_tokens, layers[i].self_attn.{q,k,v,o}_proj, mlp.{gate,up,down}_proj, the two norms, norm,
    lm_head) on ids [B, T], no padding: a full causal forward written out from the weights alone
    (RMSNorm, the rotate-half RoPE above, repeat_kv + an explicit softmax, SwiGLU)."""
    cfg = model.config
    b, t = ids.shape

    def w(p: torch.Tensor) -> torch.Tensor:
        return p.detach().double()

    def norm(x, weight):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + cfg.norm_eps) * w(weight)

    x = w(model.embed_tokens.weight)[ids]
    causal = torch.ones(t, t, dtype=torch.bool).tril()
    for layer in model.layers:
        a, mlp = layer.self_attn, layer.mlp
        h = norm(x, layer.input_layernorm.weight)
        q = (h @ w(a.q_proj.weight).T).view(b, t, cfg.n_heads, -1).transpose(1, 2)
        k = (h @ w(a.k_proj.weight).T).view(b, t, cfg.n_kv_heads, -1).transpose(1, 2)
        v = (h @ w(a.v_proj.weight).T).view(b, t, cfg.n_kv_heads, -1).transpose(1, 2)
        q, k = (rope(z, range(t), cfg.rope_theta) for z in (q, k))
        rep = cfg.n_heads // cfg.n_kv_heads
        k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
        s = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
        o = torch.softmax(s.masked_fill(~causal, float("-inf")), -1) @ v
        x = x + o.transpose(1, 2).reshape(b, t, -1) @ w(a.o_proj.weight).T
        h = norm(x, layer.post_attention_layernorm.weight)
        x = x + (F.silu(h @ w(mlp.gate_proj.weight).T) * (h @ w(mlp.up_proj.weight).T)) @ w(mlp.down_proj.weight).T
    return norm(x, model.norm.weight) @ w(model.lm_head.weight).T
