"""What the alternated races (bench.prefill_race, bench.batch_race) share: the bf16 copy of a
quantized model, their common options, and the rounds themselves (the order rotating inside each
round, a warm-up round first, ratios taken inside a round, medians over rounds)."""
from __future__ import annotations

import argparse
import copy
import statistics
from pathlib import Path
from typing import Callable

import torch


def bf16_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of a weight-only model with compute_dtype=torch.bfloat16, its weights back in huge
    pages as quantize leaves the original (a deepcopy's 4 KB pages cost ~9% of a batch-1 decode)."""
    from pyllmops.nn import set_compute_dtype
    from pyllmops.nn.huge_pages import pack_huge_pages

    out = copy.deepcopy(model)
    set_compute_dtype(out, torch.bfloat16)
    pack_huge_pages(out)
    return out


def race_parser(doc: str) -> argparse.ArgumentParser:
    """--threads, --rounds and --json, as every race takes them."""
    ap = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    ap.add_argument("--threads", default="1,2", help="comma list (default 1,2)")
    ap.add_argument("--rounds", type=int, default=5, help="timed rounds after one warm-up round (default 5)")
    ap.add_argument("--json", type=Path, help="write the rounds and medians here")
    return ap


def alternate(runs: dict[str, Callable[[], float]], ratios: dict[str, tuple[str, str]], rounds: int,
              label: str) -> dict:
    """`rounds` timed rounds (after a warm-up one) of every run (a rate), the order rotating from
    round to round; each round's ratios[k] = rate a / rate b. Prints each round's rates and, at
    the end, the ratios' medians with their ranges; returns {"rounds": [...], "median": {...}}."""
    names = tuple(runs)
    kept = []
    for r in range(rounds + 1):
        order = names[r % len(names):] + names[: r % len(names)]
        rates = {who: runs[who]() for who in order}
        if r == 0:
            continue  # warm-up
        kept.append({**rates, **{k: rates[a] / rates[b] for k, (a, b) in ratios.items()}})
        print(f"{label} round {r}: " + ", ".join(f"{k} {rates[k]:.1f} tok/s" for k in names), flush=True)
    median = {k: statistics.median(x[k] for x in kept) for k in [*names, *ratios]}
    print(f"{label}: " + ", ".join(f"{k} {median[k]:.1f} tok/s" for k in names) + "; " + ", ".join(
        f"{k} {median[k]:.2f}x (rounds {min(x[k] for x in kept):.2f}-{max(x[k] for x in kept):.2f})"
        for k in ratios), flush=True)
    return {"rounds": kept, "median": median}
