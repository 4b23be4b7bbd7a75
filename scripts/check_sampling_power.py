"""Check the sampling tests' power computation by simulation (issue 21).

tests/ops/sampling_power.py gives each chi-square distribution case the draws for which the
asymptotic (noncentral chi-square) power against each wrong distribution is >= 0.99 at the bar
p < 1e-6. This draws multinomial samples of that size from each wrong distribution, runs the very
test (chi2_pvalue) and counts rejections; and from the right one, to see the bar hold:

    .venv/bin/python scripts/check_sampling_power.py [--trials 400]

Prints, per case and alternative, the draws, the asymptotic power and the simulated rejection rate.
Exit status 1 if a simulated rate is below 0.99 minus three standard errors of the simulation.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.ops import sampling_power as pw  # noqa: E402
from tests.ops.test_sampling import _case  # noqa: E402


def rejection_rate(p: torch.Tensor, q: torch.Tensor, n: int, trials: int, gen: torch.Generator) -> float:
    rejected = 0
    for _ in range(trials):
        draws = torch.multinomial(q.float(), n, replacement=True, generator=gen)
        rejected += pw.chi2_pvalue(draws, p) <= pw.P_MIN
    return rejected / trials


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=400)
    args = ap.parse_args()
    gen = torch.Generator().manual_seed(0)
    worst = 1.0
    print(f"{'case':>10} {'draws':>8}  {'alternative':<32} {'asymptotic':>10} {'simulated':>9}")
    for v in (7, 50, 1000):
        for c in range(4):
            x, params = _case(v, c)
            p = pw.filtered(x, params)
            n = pw.draws_for_power(x, params)
            for name, q in {"(correct)": p, **pw.alternatives(x, params)}.items():
                rate = rejection_rate(p, q, n, args.trials, gen)
                asym = pw.power(p, q, n) if name != "(correct)" else pw.P_MIN
                if name != "(correct)":
                    worst = min(worst, rate)
                print(f"{f'V={v} #{c}':>10} {n:>8}  {name:<32} {asym:>10.4f} {rate:>9.4f}", flush=True)
    bar = pw.POWER - 3 * (pw.POWER * (1 - pw.POWER) / args.trials) ** 0.5
    print(f"lowest simulated rejection rate {worst:.4f} (bar {bar:.4f})")
    return 0 if worst >= bar else 1


if __name__ == "__main__":
    sys.exit(main())
