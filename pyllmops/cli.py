"""`pyllmops <command>`: each subcommand lives in pyllmops/commands/<name>.py, exposing
`add_parser(subparsers)` (which sets `func` on its parser) — so adding a command touches no
other file."""
from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys


def build_parser() -> argparse.ArgumentParser:
    from pyllmops import commands

    parser = argparse.ArgumentParser(prog="pyllmops", description="LLM inference kernels: demo, evaluation, benchmarks, tokenizer tools")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda i: i.name):
        if not info.name.startswith("_"):
            importlib.import_module(f"pyllmops.commands.{info.name}").add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, RuntimeError) as err:
        # Bad input and missing pieces end in one clear line, not a traceback.
        print(f"pyllmops {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
