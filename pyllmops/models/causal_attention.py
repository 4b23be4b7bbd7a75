"""The prompt's causal self-attention on AVX2 / AVX-512 CPUs: csrc/cpu/prefill_attention.cpp.

    causal_attention(q [B, H, T, D], k, v [B, KV, T, D]) -> [B, T, H * D] | None

For `attention` in llama.py when the query attends to itself only (no cached prefix, no padding:
SDPA's is_causal case). The kernel reads each K / V row once for the G query heads of its KV head
and runs its products on AVX-512 register tiles: 4.5-4.8 ms against torch's flash kernel's 7.8-8.8
for a SmolLM2 layer at 512 tokens on one Zen 4 core (docs/decode.md). None when it does not apply
(then the caller uses SDPA): not float32 CPU tensors, autograd or torch.compile in play (the kernel
has no backward and no graph form), head_dim other than 64 / 128, a CPU without AVX2 + FMA, or no
C++ extension.
"""
from __future__ import annotations

import torch

from pyllmops import _ext
from pyllmops.ops import _dispatch


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor | None:
    b, h, t, d = q.shape
    kv = k.shape[1]
    if not (q.device.type == k.device.type == v.device.type == "cpu" and q.dtype == k.dtype == v.dtype == torch.float32 and t > 1
            and k.shape == v.shape == (b, kv, t, d) and h % kv == 0 and _dispatch.eager(q, k, v)
            and _ext.has_cpp() and _ext.cpp().causal_attention_supported(d)):
        return None
    q, k, v = (x if x.stride(-1) == 1 and x.stride(-2) == d else x.contiguous() for x in (q, k, v))
    out = torch.empty((b, t, h * d), dtype=torch.float32)
    _ext.cpp().causal_attention(q.data_ptr(), q.stride(0), q.stride(1), k.data_ptr(), k.stride(0), k.stride(1),
                                v.data_ptr(), v.stride(0), v.stride(1), b, h, kv, t, d, out.data_ptr(),
                                torch.get_num_threads())
    return out
