"""Sampling against the HF-style warpers and against itself, alternated call by call.

    python -m bench.sampling_race [--rounds 7] [--vocab 128256,151936] [--json FILE]

bench/bench_sampling.py times each backend in its own block of calls; on a shared virtual machine
the cores' speed drifts by tens of percent within a minute, so a ratio of two such blocks can be
off by as much. Here every round, per logit kind and vocabulary (B = 64, fresh logits copied in
before each call, untimed), times one HF-style call (bench_sampling.hf_style_sample), then
pyllmops.sample with top-k 50 + top-p 0.9 and with top-p 0.9 alone (the median of 5 calls each)
and one HF-style call of each, back to back; the medians over rounds of the per-round ratios are
what it reports: each against HF, and top-p alone against top-k 50 + top-p on the same logits.
Run it under `chrt -f 10` as `python -m bench` is run.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import time
from pathlib import Path

import torch

import pyllmops
from bench.__main__ import _commit
from bench.bench_sampling import LOGITS, hf_style_sample

CONFIGS = {"top-k 50 + top-p 0.9": dict(top_k=50, top_p=0.9), "top-p 0.9": dict(top_k=0, top_p=0.9)}


def _time(fn, x: torch.Tensor, fresh: list[torch.Tensor], calls: int) -> float:
    """Median seconds of `calls` calls, new logits copied into x before each (untimed)."""
    out = []
    for i in range(calls):
        x.copy_(fresh[i % len(fresh)])
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return statistics.median(out)


def race(kind: str, vocab: int, rounds: int, batch: int = 64) -> dict:
    scale, temperature = LOGITS[kind]
    g = torch.Generator().manual_seed(vocab)
    fresh = [torch.randn(batch, vocab, generator=g) * scale for _ in range(2)]
    x = fresh[0].clone()
    seeds = torch.arange(batch)
    ours = {name: (lambda c=c: pyllmops.sample(x, temperature, **c, seed=seeds, offset=0)) for name, c in CONFIGS.items()}
    for fn in ours.values():
        fn()  # warm the kernel's buffers
    rows = []
    for _ in range(rounds):
        hf = {f"hf {name}_s": _time(lambda c=c: hf_style_sample(x, temperature, **c), x, fresh, 1)
              for name, c in CONFIGS.items()}
        t = {f"{name}_s": _time(fn, x, fresh, 5) for name, fn in ours.items()}
        rows.append(hf | t)
    med = lambda key: statistics.median(key(r) for r in rows)  # noqa: E731
    return {"kind": kind, "batch": batch, "vocab": vocab, "rounds": rows,
            "top_p_ms": med(lambda r: r["top-p 0.9_s"]) * 1e3,
            "top_k50_top_p_ms": med(lambda r: r["top-k 50 + top-p 0.9_s"]) * 1e3,
            "top_p_vs_hf": med(lambda r: r["hf top-p 0.9_s"] / r["top-p 0.9_s"]),
            "top_k50_top_p_vs_hf": med(lambda r: r["hf top-k 50 + top-p 0.9_s"] / r["top-k 50 + top-p 0.9_s"]),
            "top_p_vs_top_k50_top_p": med(lambda r: r["top-p 0.9_s"] / r["top-k 50 + top-p 0.9_s"])}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--vocab", default="128256,151936")
    ap.add_argument("--json", type=Path, help="write the rounds and medians here")
    args = ap.parse_args(argv)
    out = {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "commit": _commit(),
           "threads": torch.get_num_threads(), "results": []}
    print(f"{'logits':16s} {'V':>7s} {'top-p':>9s} {'vs HF':>7s} {'k50+p':>9s} {'vs HF':>7s} {'top-p / k50+p':>14s}")
    for vocab in (int(v) for v in args.vocab.split(",")):
        for kind in LOGITS:
            r = race(kind, vocab, args.rounds)
            out["results"].append(r)
            print(f"{kind:16s} {vocab:7d} {r['top_p_ms']:7.2f}ms {r['top_p_vs_hf']:6.0f}x "
                  f"{r['top_k50_top_p_ms']:7.2f}ms {r['top_k50_top_p_vs_hf']:6.0f}x {r['top_p_vs_top_k50_top_p']:13.2f}x",
                  flush=True)
    if args.json:
        args.json.write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
