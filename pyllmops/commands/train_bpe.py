"""`pyllmops train-bpe`: learn a byte-level BPE vocabulary from text files, save it as .tiktoken."""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from pyllmops.commands._tokenizer_args import read_texts


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train-bpe", help="train a byte-level BPE tokenizer; writes a .tiktoken ranks file")
    p.add_argument("files", nargs="*", type=Path, help="training text files (default: standard input)")
    p.add_argument("-o", "--output", type=Path, required=True, help="where to write the .tiktoken ranks")
    p.add_argument("--vocab-size", type=int, default=8192, help="tokens in total: 256 bytes + merges + specials")
    p.add_argument("--pattern", default="cl100k_base",
                   help="pre-tokenizer split: gpt2/r50k_base/p50k_base, cl100k_base, o200k_base or gpt2_digits")
    p.add_argument("--special", action="append", default=None,
                   help="special token text (repeatable; default <|endoftext|>); ids follow the ranks")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pyllmops.tokenizer import train_bpe

    texts = read_texts(args.files)
    specials = args.special if args.special is not None else ["<|endoftext|>"]
    t0 = time.perf_counter()
    enc = train_bpe(texts, args.vocab_size, pattern=args.pattern, special_tokens=specials)
    seconds = time.perf_counter() - t0
    enc.save_tiktoken(args.output)
    n_bytes = sum(len(t.encode()) for t in texts)
    n_tok = sum(len(x) for x in enc.encode_ordinary_batch(texts))
    print(f"trained {enc.n_vocab} tokens ({len(enc.mergeable_ranks())} ranks + {len(specials)} special: "
          f"{', '.join(f'{s}={i}' for s, i in enc.special_tokens.items()) or 'none'}) on {n_bytes} bytes in "
          f"{seconds:.2f} s; {n_bytes / max(n_tok, 1):.2f} bytes/token on the training text; wrote {args.output}")
    return 0
