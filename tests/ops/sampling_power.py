"""The statistics behind the sampling distribution tests: Pearson's chi-square test with the
suite's binning, its power against the errors the tests must catch, and the number of draws that
gives that power.

Errors a distribution test must catch (issue 21): a temperature off by 5% either way (the filter
applied at 0.95 t or 1.05 t) and a dropped token, any kept token of probability >= 1% never
drawn. Under an alternative q (bins b, reference p, n draws), Pearson's statistic is approximately
noncentral chi-square with df = bins - 1 and noncentrality lambda = n * sum_b (q_b - p_b)^2 / p_b,
so the power at bar alpha is P(chi2'(df, lambda) > c_alpha), c_alpha the central chi-square's
1 - alpha quantile. `draws_for_power` gives the draws for power >= 0.99 against every alternative
of a case; scripts/check_sampling_power.py checks these asymptotic numbers by simulation.
"""
from __future__ import annotations

import functools
import math

import torch

from pyllmops.ops.sampling import reference_filter

P_MIN = 1e-6          # the bar: a correct sampler fails a test once in a million runs
POWER = 0.99
TEMPERATURE_ERROR = 0.05
DROP_MIN_PROB = 0.01


def filtered(x: torch.Tensor, params: dict, temperature_factor: float = 1.0) -> torch.Tensor:
    """The exact kept distribution [V] float64 of logits x [V] under `params` (sample's keywords)."""
    b = torch.ones(1)
    return reference_filter(x[None], b * params["temperature"] * temperature_factor, b.long() * params["top_k"],
                            b * params["top_p"], b * (params["min_p"] or 0.0))[0]


def alternatives(x: torch.Tensor, params: dict) -> dict[str, torch.Tensor]:
    """name -> wrong distribution a test must reject: temperature x0.95 / x1.05, and the kept
    token of smallest probability >= 1% dropped (the rest renormalised). Dropping token i moves
    the statistic by lambda = n p_i / (1 - p_i) (its own bin, expected >= 5 times at these n),
    which grows with p_i: the smallest such token is the hardest to notice."""
    p = filtered(x, params)
    alts = {f"temperature x{f}": filtered(x, params, f) for f in (1 - TEMPERATURE_ERROR, 1 + TEMPERATURE_ERROR)}
    candidates = torch.nonzero(p >= DROP_MIN_PROB).flatten()
    if candidates.numel():
        i = int(candidates[p[candidates].argmin()])
        q = p.clone()
        q[i] = 0
        alts[f"token {i} (p={float(p[i]):.3f}) dropped"] = q / q.sum()
    return alts


def bins(probs: torch.Tensor, n: int) -> tuple[torch.Tensor, int]:
    """The chi-square bins for n draws from probs [V]: each token expected >= 5 times is a bin
    alone; the rest of the kept tokens are lumped into one bin if it is expected at least once.
    Returns (bin of each token [V] long, -1 for none; the number of bins)."""
    expected = probs * n
    big = expected >= 5
    bin_of = torch.full(probs.shape, -1, dtype=torch.long)
    bin_of[big] = torch.arange(int(big.sum()))
    small = ~big & (probs > 0)
    lumped = float(expected[small].sum()) >= 1
    if lumped:
        bin_of[small] = int(big.sum())
    return bin_of, int(big.sum()) + lumped


def _binned(values: torch.Tensor, bin_of: torch.Tensor, nb: int) -> torch.Tensor:
    keep = bin_of >= 0
    return torch.zeros(nb, dtype=torch.float64).index_add_(0, bin_of[keep], values[keep].double())


def chi2_pvalue(draws: torch.Tensor, probs: torch.Tensor) -> float:
    """Pearson's chi-square p-value of the tokens `draws` against `probs` [V] (bins above). A draw
    outside the bins (a token that should be rare or impossible) counts in no bin, which only
    raises the statistic: callers separately assert every draw is in the kept set."""
    n = draws.numel()
    bin_of, nb = bins(probs, n)
    assert nb >= 2, "a distribution test needs at least two bins"
    obs = _binned(torch.bincount(draws, minlength=probs.numel()), bin_of, nb)
    exp = _binned(probs, bin_of, nb) * n
    chi2 = ((obs - exp) ** 2 / exp).sum()
    return float(torch.special.gammaincc(torch.tensor((nb - 1) / 2, dtype=torch.float64), chi2 / 2))


@functools.cache
def chi2_critical(df: int, alpha: float = P_MIN) -> float:
    """c with P(chi2(df) > c) = alpha (bisection on the regularised upper gamma function)."""
    lo, hi = 0.0, 10.0 * df + 200.0
    a = torch.tensor(df / 2, dtype=torch.float64)
    for _ in range(200):
        mid = (lo + hi) / 2
        if float(torch.special.gammaincc(a, torch.tensor(mid / 2, dtype=torch.float64))) > alpha:
            lo = mid
        else:
            hi = mid
    return hi


def noncentral_chi2_sf(df: int, lam: float, c: float) -> float:
    """P(chi2'(df, lam) > c): the Poisson(lam / 2) mixture of central chi-squares with df + 2j."""
    if lam - 10 * math.sqrt(2 * (df + 2 * lam)) > c:  # c is more than 10 sd below the mean
        return 1.0
    half = lam / 2
    top = int(half + 12 * math.sqrt(half + 1) + 60)
    j = torch.arange(top + 1, dtype=torch.float64)
    log_w = -half + j * math.log(half) - torch.lgamma(j + 1) if half > 0 else torch.where(j == 0, 0.0, -math.inf)
    q = torch.special.gammaincc(df / 2 + j, torch.tensor(c / 2, dtype=torch.float64))
    return float((log_w.exp() * q).sum())


def power(p: torch.Tensor, q: torch.Tensor, n: int, alpha: float = P_MIN) -> float:
    """Asymptotic power of the n-draw test of reference p against the true distribution q."""
    bin_of, nb = bins(p, n)
    pb, qb = _binned(p, bin_of, nb), _binned(q, bin_of, nb)
    lam = n * float(((qb - pb) ** 2 / pb).sum())
    return noncentral_chi2_sf(nb - 1, lam, chi2_critical(nb - 1, alpha))


def draws_for_power(x: torch.Tensor, params: dict, step: int = 10_000, limit: int = 1_000_000) -> int:
    """The smallest multiple of `step` draws (bisection; the power grows with n) whose test has
    power >= 0.99 against every alternative of this case (ValueError past `limit`: the case
    cannot tell them apart and must change)."""
    p = filtered(x, params)
    alts = list(alternatives(x, params).items())

    def enough(n):
        return all(power(p, q, n) >= POWER for _, q in alts)

    if not enough(limit):
        worst = min(alts, key=lambda a: power(p, a[1], limit))[0]
        raise ValueError(f"{limit} draws do not reach power {POWER} against {worst!r}")
    lo, hi = 0, limit // step  # enough(hi * step), not enough(lo * step)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if enough(mid * step) else (mid, hi)
    return hi * step
