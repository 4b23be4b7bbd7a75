"""parallelize_llama: the sharded model's logits (prefill and cached decode), perplexity and
training gradients equal the single-process model's -- even heads, uneven heads (9 query / 3 KV
heads on 2 ranks, like SmolLM2-135M) and replicated KV heads (2 KV heads on 4 ranks)."""
import pytest

from pyllmops.parallel.launch import spawn
from tests.parallel._workers import check_llama

TOL = {"prefill": 2e-4, "decode": 2e-4, "ppl_rel": 1e-5, "loss": 1e-5}


@pytest.mark.parametrize("world,n_heads,n_kv_heads", [(2, 4, 2), (2, 9, 3), (4, 8, 2)])
def test_parallel_llama_matches_single_process(seed, world, n_heads, n_kv_heads):
    for o in spawn(check_llama, world, (seed, n_heads, n_kv_heads), timeout=30, deadline=120, threads=1):
        bad = {k: v for k, v in o.value.items() if not v <= TOL.get(k, 1e-5)}
        assert not bad, f"seed={seed} rank {o.rank}: {o.value}"
