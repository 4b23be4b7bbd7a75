"""Decode speed as a user gets it: `pyllmops generate` against llama.cpp, alternated.

    python -m bench.decode_race [--threads 1,2] [--rounds 6] [--tokens 100] [--compute-dtype D] [--json FILE]

Each round runs, one after the other on the same cores, (a) the `pyllmops generate` command line
(`--quant w4a16-rtn --threads N --temperature 0 --max-new-tokens T`, its defaults otherwise) and
reads the decode rate it reports, and (b) llama.cpp through llama-cpp-python on the same GGUF and
the same chat-template token ids, greedy, T new tokens (`Llama.eval` one token at a time, the
argmax in Python), timed like `generate`: after the first new token, whose cost is the prefill.
The order inside a round alternates. On a shared virtual machine the speed of the cores drifts by
tens of percent within a minute, so single runs of each, minutes apart, compare little; the
ratio of the two runs of a round does, and the median over rounds is what this reports.

The rows name the llama.cpp build (the instruction sets it reports). Build llama-cpp-python for
the CPU as bench/bench_model.py's docstring says (GGML_NATIVE=OFF with the CPU's extensions on).
Runs both under `chrt -f 10` where permitted (as `python -m bench` is run), or with --no-chrt at
normal priority, as users run them.
"""
from __future__ import annotations

import argparse
import datetime as dt
import functools
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.__main__ import _commit

QUESTION = "Write a short story about a robot who learns to paint."

_LLAMA_WORKER = r"""
import re, sys, time
import llama_cpp
import numpy as np
from pyllmops.models import load_smollm2, smollm2_path
from pyllmops.models.chat import chat_prompt
threads, tokens, question = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
_, tok = load_smollm2()
ids = chat_prompt(tok, question)
llm = llama_cpp.Llama(str(smollm2_path()), n_ctx=1024, n_batch=512, n_threads=threads, n_threads_batch=threads,
                      verbose=False)
def greedy():  # the last token's logits (Llama.scores is written only with logits_all=True)
    return int(np.argmax(np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm._ctx.ctx, -1), shape=(llm.n_vocab(),))))
llm.eval(ids)
nxt = greedy()
begin = time.perf_counter()
for _ in range(tokens - 1):
    llm.eval([nxt])
    nxt = greedy()
rate = (tokens - 1) / (time.perf_counter() - begin)
isa = " ".join(re.findall(r"(\w+) = 1", llama_cpp.llama_print_system_info().decode()))
print(f"RESULT {rate:.3f} llama.cpp {llama_cpp.__version__} Q4_1 ({isa})")
"""


_CHRT = True  # --no-chrt: as users run both, at normal priority


def _prefix() -> list[str]:
    """chrt -f 10 where the process may use it (as python -m bench does), else nothing."""
    return _chrt() if _CHRT else []


@functools.cache
def _chrt() -> list[str]:
    chrt = shutil.which("chrt")
    if chrt and subprocess.run([chrt, "-f", "10", "true"], capture_output=True).returncode == 0:
        return [chrt, "-f", "10"]
    return []


def run_pyllmops(threads: int, tokens: int, extra: list[str]) -> tuple[float, str]:
    """(decode tok/s, the run's configuration as its stats line names it)."""
    cmd = [*_prefix(), sys.executable, "-m", "pyllmops.cli", "generate", QUESTION, "--quant", "w4a16-rtn",
           "--threads", str(threads), "--temperature", "0", "--max-new-tokens", str(tokens), *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tempfile.gettempdir())
    m = re.search(r"(\[[^]]*\]) prefill:.*decode: (\d+) tokens, ([\d.]+) tok/s \((\w+)", proc.stderr)
    if proc.returncode or not m:
        raise SystemExit(f"pyllmops generate failed (exit {proc.returncode}):\n{proc.stderr[-2000:]}")
    if m.group(4) != "fused":
        raise SystemExit(f"pyllmops generate did not take the fused decode step: {m.group(0)}")
    return float(m.group(3)), m.group(1)


def run_llama_cpp(threads: int, tokens: int) -> tuple[float, str]:
    cmd = [*_prefix(), sys.executable, "-c", _LLAMA_WORKER, str(threads), str(tokens), QUESTION]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tempfile.gettempdir())
    m = re.search(r"RESULT ([\d.]+) (.*)", proc.stdout)
    if proc.returncode or not m:
        raise SystemExit(f"the llama.cpp run failed (exit {proc.returncode}; is llama-cpp-python installed?):\n"
                         f"{proc.stderr[-2000:]}")
    return float(m.group(1)), m.group(2)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", default="1,2", help="comma list (default 1,2)")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--tokens", type=int, default=100, help="new tokens per run (default 100)")
    ap.add_argument("--json", type=Path, help="write the rounds and medians here")
    ap.add_argument("--no-chrt", action="store_true", help="run both at normal priority")
    ap.add_argument("--compute-dtype", choices=["auto", "float32", "bfloat16"],
                    help="passed to `pyllmops generate` (default: not passed, i.e. its default, auto)")
    args = ap.parse_args(argv)
    global _CHRT
    _CHRT = not args.no_chrt
    out: dict = {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                 "commit": _commit(),
                 "cpu": _cpu_name(), "tokens": args.tokens, "chrt": bool(_prefix()), "threads": {}}
    extra = ["--compute-dtype", args.compute_dtype] if args.compute_dtype else []
    for threads in [int(t) for t in args.threads.split(",")]:
        rounds = []
        for r in range(args.rounds):
            order = ("pyllmops", "llama.cpp") if r % 2 == 0 else ("llama.cpp", "pyllmops")
            rates = {}
            for who in order:
                if who == "pyllmops":
                    rates[who], out["pyllmops_run"] = run_pyllmops(threads, args.tokens, extra)
                else:
                    rates[who], out["llama_cpp_build"] = run_llama_cpp(threads, args.tokens)
            rounds.append({**rates, "ratio": rates["pyllmops"] / rates["llama.cpp"]})
            print(f"{threads} thread(s) round {r + 1}: pyllmops {rates['pyllmops']:.1f} tok/s, llama.cpp "
                  f"{rates['llama.cpp']:.1f} tok/s, ratio {rounds[-1]['ratio']:.2f}", flush=True)
        summary = {k: statistics.median(x[k] for x in rounds) for k in ("pyllmops", "llama.cpp", "ratio")}
        out["threads"][str(threads)] = {"rounds": rounds, "median": summary}
        print(f"{threads} thread(s): median pyllmops {summary['pyllmops']:.1f} tok/s, llama.cpp "
              f"{summary['llama.cpp']:.1f} tok/s, median ratio {summary['ratio']:.2f}x "
              f"(ratios {min(x['ratio'] for x in rounds):.2f}-{max(x['ratio'] for x in rounds):.2f})", flush=True)
    print(f"pyllmops: {out.get('pyllmops_run')}; baseline: {out.get('llama_cpp_build')}")
    if args.json:
        args.json.write_text(json.dumps(out, indent=1) + "\n")
    return 0


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return os.uname().machine


if __name__ == "__main__":
    sys.exit(main())
