"""`pyllmops bench`: the benchmark summary (bench/ suites; needs a source checkout)."""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="run the benchmark suites and print the ratio table")
    p.add_argument("-k", dest="keyword", help="select benchmarks (pytest -k expression)")
    p.add_argument("--quick", action="store_true", help="fewer rounds: a smoke run")
    p.add_argument("files", nargs="*", help="benchmark files (default: all)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    root = Path(__file__).resolve().parents[2]
    if not (root / "bench" / "__main__.py").exists():
        raise FileNotFoundError("the benchmark suites live in the source tree (bench/): run from a git checkout "
                                "installed with `pip install -e .`")
    cmd = [sys.executable, "-m", "bench", *args.files] + (["-k", args.keyword] if args.keyword else []) + \
          (["--quick"] if args.quick else [])
    return subprocess.run(cmd, cwd=root).returncode
