"""Vocab-parallel sampling returns, bit for bit, the token the single-process fused sampler
returns for the full logits (every CPU backend of pyllmops.sample, every path: greedy, top-k with
ties, top-k + top-p + min-p, rows without top-k, mixed batches), on 2 and 4 gloo ranks."""
import pytest

pytest.importorskip("pyllmops.ops.sampling", reason="needs the fused sampler pyllmops.sample")

from pyllmops.parallel.launch import spawn  # noqa: E402
from pyllmops.ops import available_backends  # noqa: E402
from tests.parallel._workers import check_cross_entropy, check_sampling  # noqa: E402


@pytest.mark.parametrize("world", [2, 4])
def test_vocab_parallel_sampling_bit_exact(world, seed):
    # The float64-summing CPU backends (the Triton kernel under the interpreter is too slow here;
    # it sums in float32 and is held to the same rule by the same construction).
    backends = [b for b in ("cpp", "torch") if b in available_backends("sample", "cpu")]
    outcomes = spawn(check_sampling, world, (seed, backends), timeout=30, deadline=120, threads=1)
    for o in outcomes:
        mismatches = {k: v for k, v in o.value.items() if v}
        assert not mismatches, f"seed={seed} rank {o.rank}: rows differing from pyllmops.sample: {mismatches}"
    assert len(outcomes[0].value) >= 8 * len(backends)


def test_vocab_parallel_cross_entropy(seed):
    for o in spawn(check_cross_entropy, 2, (seed,), timeout=30, deadline=120, threads=1):
        assert o.value < 1e-5, f"seed={seed}: {o.value}"
