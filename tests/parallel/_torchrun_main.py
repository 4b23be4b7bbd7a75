"""Entry point for the multi-node test: `torchrun --nnodes 2 --node-rank N ... -m tests.parallel._torchrun_main SEED`.
Joins the group from the torchrun environment and runs every layer check against the
single-process module; exits non-zero (naming the failures) if any is off."""
import sys

from pyllmops.parallel import init_tensor_parallel
from tests.parallel._workers import run_checks

TOL = 2e-5

if __name__ == "__main__":
    tp = init_tensor_parallel(timeout=30)
    results = run_checks(tp, int(sys.argv[1]))
    bad = {f"{name}.{k}": v for name, res in results.items() for k, v in res.items() if not v <= TOL}
    print(f"rank {tp.rank}/{tp.world}: {sum(len(r) for r in results.values())} comparisons, bad={bad}", flush=True)
    sys.exit(1 if bad else 0)
