"""Median decode-step time of SmolLM2-135M (float32, greedy, batch 1) at --tp 1 and --tp 2 on
this machine's CPU: each rank loads the model, parallelize_llama shards it, and
pyllmops.models.generate decodes with the vocab-parallel sampler.

    python scripts/tp_decode_time.py [--tokens 24] [--reps 3] [--runs 1x1,2x1]   (WORLDxTHREADS)
"""
import argparse
import statistics
import time

from pyllmops.parallel.launch import spawn


def _rank(tp, n_new: int, reps: int) -> list[float]:
    from pyllmops.models import load_smollm2
    from pyllmops.models.generate import generate
    from pyllmops.models.parallel import parallelize_llama
    from pyllmops.parallel import VocabParallelSampler

    model, tok = load_smollm2()
    if tp.world > 1:
        parallelize_llama(model, tp)
    sampler = VocabParallelSampler(0.0, group=tp.group, world=tp.world)
    prompt = tok.encode("def fibonacci(n):")
    medians = []
    for _ in range(reps):
        stamps = [time.perf_counter() for _ in generate(model, [prompt], max_new_tokens=n_new, sampler=sampler)]
        medians.append(statistics.median(b - a for a, b in zip(stamps, stamps[1:])))
    return medians


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokens", type=int, default=24)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--runs", default="1x1,2x1,1x1,2x1", help="comma-separated WORLDxTHREADS_PER_RANK")
    args = p.parse_args()
    for run in args.runs.split(","):
        world, threads = (int(v) for v in run.split("x"))
        out = spawn(_rank, world, (args.tokens, args.reps), timeout=300, deadline=1800, threads=threads)
        print(f"tp={world} threads/rank={threads}: median ms per decode step, per repetition:",
              [round(1000 * s, 1) for s in out[0].value], flush=True)


if __name__ == "__main__":
    main()
