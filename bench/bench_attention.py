"""The prompt's causal self-attention on the CPU: pyllmops' kernel (csrc/cpu/prefill_attention.cpp,
through pyllmops.models.causal_attention) against torch's scaled_dot_product_attention(is_causal=
True, enable_gqa=...), what a torch model runs otherwise. Shapes: SmolLM2-135M (9 query heads on
3 KV heads, D 64) at 128, 512 and 1536 tokens (the long prompt is the hard case: its K and V no
longer stay in L2), and a Llama-3-8B layer (32 on 8, D 128) at 512. Both kernel builds where the
CPU has AVX-512 ("avx2": PYLLMOPS_ATTENTION_ISA=avx2). Throughput: GFLOP/s of the causal products
(2 x 2 T (T + 1) / 2 H D). Compare ratios from one run, at 1 and 2 threads.
"""
import os

import pytest
import torch
import torch.nn.functional as F

from bench.conftest import bench_device, record

if bench_device().type != "cpu":
    pytest.skip("a CPU kernel (set PYLLMOPS_BENCH_DEVICE=cpu)", allow_module_level=True)

SHAPES = [(9, 3, 128, 64), (9, 3, 512, 64), (9, 3, 1536, 64), (32, 8, 512, 128)]
THREADS = [int(t) for t in os.environ.get("PYLLMOPS_BENCH_THREADS", "1,2").split(",")]


def _builds() -> list[str]:
    from pyllmops import _ext

    if not (_ext.has_cpp() and _ext.cpp().causal_attention_supported(64)):
        return []
    with open("/proc/cpuinfo") as f:
        avx512 = "avx512f" in f.read().split()
    return ["pyllmops", "pyllmops avx2"] if avx512 else ["pyllmops"]


@pytest.mark.parametrize("threads", THREADS)
@pytest.mark.parametrize("h, kv, t, d", SHAPES)
@pytest.mark.parametrize("impl", ["sdpa", *_builds()])
def test_causal_attention(benchmark, impl, h, kv, t, d, threads, monkeypatch):
    from pyllmops.models.causal_attention import causal_attention

    torch.set_num_threads(threads)
    q, k, v = torch.randn(1, h, t, d), torch.randn(1, kv, t, d), torch.randn(1, kv, t, d)
    if impl == "sdpa":
        def run():
            return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=kv != h)
    else:
        if impl.endswith("avx2"):
            monkeypatch.setenv("PYLLMOPS_ATTENTION_ISA", "avx2")

        def run():
            return causal_attention(q, k, v)
    with torch.inference_mode():
        record(benchmark, op="causal prefill attention", shape=f"H={h} KV={kv} T={t} D={d} {threads} threads",
               backend="torch SDPA (flash, CPU)" if impl == "sdpa" else impl, baseline=impl == "sdpa",
               unit="GFLOP/s")
        benchmark.pedantic(run, rounds=10, iterations=1, warmup_rounds=2)
    benchmark.extra_info["throughput"] = 2 * t * (t + 1) * h * d / benchmark.stats.stats.median / 1e9
