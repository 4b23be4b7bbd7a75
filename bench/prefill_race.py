"""Prefill speed against llama.cpp, alternated call by call in one process.

    chrt -f 10 python -m bench.prefill_race [--threads 1,2] [--rounds 5] [--tokens 512] [--json FILE]

Each round prefills the same GPL-3 token ids (a fresh cache, the last position's logits) with
llama.cpp (llama-cpp-python on the SmolLM2 GGUF, `Llama.eval`) and with pyllmops' int4 model (what
`pyllmops generate --quant w4a16-rtn` builds) twice: exact (float32 GEMMs, `--compute-dtype
float32`) and with `compute_dtype=torch.bfloat16` (the GEMMs in bf16, as GPU W4A16 kernels
compute; generate's default, `--compute-dtype auto`, on a CPU with AVX512_BF16 or AMX). The order
inside a round rotates. The ratio of each round's rates, its median over rounds after a warm-up
round, is what this reports: on a shared VM the cores' speed drifts within a minute, so blocks of
calls minutes apart (bench/bench_model.py's prefill rows) compare less. Build llama-cpp-python as
bench/bench_model.py's docstring says.
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


def main(argv: list[str] | None = None) -> int:
    ap = race_parser(__doc__)
    ap.add_argument("--tokens", type=int, default=512, help="prompt tokens (default 512)")
    args = ap.parse_args(argv)

    import llama_cpp

    import pyllmops
    from pyllmops.models import load_smollm2, smollm2_path

    model, tok = load_smollm2()
    ids = tok.encode_ordinary(TEXT.read_text())[: args.tokens]
    exact = pyllmops.quantize(copy.deepcopy(model), "w4a16-rtn", group_size=128, int8=("lm_head",), progress=False)
    bf16 = bf16_copy(exact)
    x = torch.tensor([ids])

    def ours(m):
        with torch.inference_mode():
            t = time.perf_counter()
            m(x, cache=m.new_cache(1, len(ids)), last_only=True)
            return len(ids) / (time.perf_counter() - t)

    out: dict = {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "commit": _commit(),
                 "cpu": _cpu_name(), "tokens": len(ids), "threads": {}}
    names = ("llama.cpp", "int4 exact", "int4 bf16 prefill")
    for threads in [int(t) for t in args.threads.split(",")]:
        torch.set_num_threads(threads)
        llm = llama_cpp.Llama(str(smollm2_path()), n_ctx=max(1024, len(ids)), n_batch=len(ids), n_threads=threads,
                              n_threads_batch=threads, logits_all=False, verbose=False)

        def theirs():
            llm.reset()
            t = time.perf_counter()
            llm.eval(ids)
            return len(ids) / (time.perf_counter() - t)

        runs = {"llama.cpp": theirs, "int4 exact": lambda: ours(exact), "int4 bf16 prefill": lambda: ours(bf16)}
        ratios = {f"{k} / llama.cpp": (k, "llama.cpp") for k in names[1:]}
        out["threads"][str(threads)] = alternate(runs, ratios, args.rounds, f"{threads} thread(s)")
        out["llama_cpp_build"] = llama_cpp.llama_print_system_info().decode().strip()
        del llm
    if args.json:
        args.json.write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
