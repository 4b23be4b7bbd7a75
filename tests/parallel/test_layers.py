"""Every TP layer, forward and backward, against the single-process module: real gloo groups of
2 and 4 processes on 127.0.0.1, one spawn per world size (all checks run inside it)."""
import pytest

from pyllmops.parallel.launch import spawn
from tests.conftest import test_seed
from tests.parallel._workers import CHECKS, run_checks

TOL = 2e-5  # float32 matmuls whose sums are split differently


@pytest.fixture(scope="module", params=[2, 4], ids=["world2", "world4"])
def results(request):
    seed = test_seed(f"{request.node.nodeid}[world{request.param}]")  # module-scoped: one seed per spawn
    outcomes = spawn(run_checks, request.param, (seed,), timeout=30, deadline=120, threads=1)
    return seed, [o.value for o in outcomes]


@pytest.mark.parametrize("check", list(CHECKS))
def test_matches_single_process(results, check):
    seed, per_rank = results
    bad = {f"rank{r}.{k}": v for r, res in enumerate(per_rank) for k, v in res[check].items() if not v <= TOL}
    assert not bad, f"seed={seed}: max |tp - single| above {TOL}: {bad}"
