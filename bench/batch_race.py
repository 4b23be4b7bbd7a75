"""Batched decode against batch 1, exact and with compute_dtype=bfloat16, alternated in one process.

    chrt -f 10 python -m bench.batch_race [--threads 1,2] [--rounds 5] [--batch 8] [--json FILE]

Each round decodes, with pyllmops' int4 SmolLM2 (what `pyllmops generate --quant w4a16-rtn`
builds), B = 1 and B = `--batch` prompts of 20, 27, 34, ... GPL-3 tokens (left-padded together,
as bench/bench_model.py's batched rows) for 32 greedy steps, once with the exact kernels and once
with `compute_dtype=torch.bfloat16` (x rounded to bfloat16 against the exact weight, vdpbf16ps
where the CPU has AVX512_BF16), the order rotating inside the round. Reported: the medians over
rounds (after a warm-up round) of each round's total tokens/s and of its ratios: B / batch 1 in
each mode, and bf16 B / exact batch 1. On a shared VM the cores' speed drifts within a minute,
so ratios inside one round are what compare (bench_model.py times each row in its own block).
"""
from __future__ import annotations

import copy
import datetime as dt
import json
import sys
import time
from pathlib import Path

import torch

from bench.__main__ import _commit
from bench.alternate import alternate, bf16_copy, race_parser
from bench.decode_race import _cpu_name

TEXT = Path("/usr/share/common-licenses/GPL-3")
STEPS = 32


def main(argv: list[str] | None = None) -> int:
    ap = race_parser(__doc__)
    ap.add_argument("--batch", type=int, default=8, help="the batch compared with batch 1 (default 8)")
    args = ap.parse_args(argv)
    if args.batch < 2:
        ap.error(f"--batch must be at least 2, got {args.batch}")

    import pyllmops
    from pyllmops.models import load_smollm2
    from pyllmops.models.generate import generate

    model, tok = load_smollm2()
    text = tok.encode_ordinary(TEXT.read_text())
    exact = pyllmops.quantize(copy.deepcopy(model), "w4a16-rtn", group_size=128, int8=("lm_head",), progress=False)
    bf16 = bf16_copy(exact)

    def rate(m, b: int) -> float:
        prompts = [text[50 * i: 50 * i + 20 + 7 * i] for i in range(b)]
        steps = generate(m, prompts, max_new_tokens=STEPS, sampler=lambda logits, step: logits.argmax(-1))
        next(steps)  # the prefill and the first token
        t = time.perf_counter()
        for _ in steps:
            pass
        return b * (STEPS - 1) / (time.perf_counter() - t)

    B = args.batch
    names = ("exact B=1", f"exact B={B}", "bf16 B=1", f"bf16 B={B}")
    runs = {names[0]: lambda: rate(exact, 1), names[1]: lambda: rate(exact, B), names[2]: lambda: rate(bf16, 1),
            names[3]: lambda: rate(bf16, B)}
    ratios = {f"exact B={B} / B=1": (names[1], names[0]), f"bf16 B={B} / B=1": (names[3], names[2]),
              f"bf16 B={B} / exact B=1": (names[3], names[0])}
    out: dict = {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "commit": _commit(),
                 "cpu": _cpu_name(), "steps": STEPS, "batch": B, "threads": {}}
    for threads in [int(t) for t in args.threads.split(",")]:
        torch.set_num_threads(threads)
        out["threads"][str(threads)] = alternate(runs, ratios, args.rounds, f"{threads} thread(s)")
    if args.json:
        args.json.write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
