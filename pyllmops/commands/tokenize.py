"""`pyllmops tokenize`: token ids (or counts) of text, or text of ids, with any supported tokenizer."""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from pyllmops.commands._tokenizer_args import add_tokenizer_args, load_tokenizer, read_texts


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("tokenize", help="encode text to token ids (or decode ids) with a BPE tokenizer")
    p.add_argument("files", nargs="*", type=Path, help="input files (default: standard input; '-' for it too)")
    p.add_argument("--text", help="encode this string instead of files")
    p.add_argument("--count", action="store_true", help="print token counts (and speed) instead of ids")
    p.add_argument("--decode", action="store_true", help="input is whitespace-separated ids: print their text")
    p.add_argument("--allow-special", action="store_true", help="encode special-token text as the special tokens")
    p.add_argument("--threads", type=int, default=0, help="threads for several files (0: all cores)")
    add_tokenizer_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    enc = load_tokenizer(args)
    texts = [args.text] if args.text is not None else read_texts(args.files)
    if args.decode:
        for t in texts:
            try:
                ids = [int(x) for x in t.split()]
            except ValueError as err:
                raise ValueError(f"--decode expects whitespace-separated integer ids: {err}") from None
            try:
                print(enc.decode(ids))
            except KeyError as err:
                raise ValueError(err.args[0]) from None
        return 0
    special = {"allowed_special": "all"} if args.allow_special else {"disallowed_special": ()}
    t0 = time.perf_counter()
    ids = enc.encode_batch(texts, num_threads=args.threads, **special)
    seconds = time.perf_counter() - t0
    if args.count:
        n_bytes = sum(len(t.encode()) for t in texts)
        n_tok = sum(map(len, ids))
        print(f"{n_tok} tokens, {n_bytes} bytes ({n_bytes / max(n_tok, 1):.2f} bytes/token), "
              f"{n_bytes / max(seconds, 1e-9) / 1e6:.1f} MB/s [{enc.name}]")
    else:
        for row in ids:
            print(" ".join(map(str, row)))
    return 0
