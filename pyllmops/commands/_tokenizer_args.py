"""Choosing a tokenizer on the command line (shared by `tokenize` and `train-bpe`)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_tokenizer_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("tokenizer (one of)")
    src = g.add_mutually_exclusive_group()
    src.add_argument("--encoding", default="cl100k_base",
                     help="OpenAI encoding name, from a local .tiktoken file (default cl100k_base)")
    src.add_argument("--tiktoken", type=Path, help="a .tiktoken ranks file (with --name for its pattern)")
    src.add_argument("--gguf", type=Path, help="the tokenizer inside a GGUF model file")
    src.add_argument("--hf", type=Path, help="a HF tokenizer.json (byte-level BPE)")
    g.add_argument("--name", help="encoding name of the --tiktoken file (default: --encoding)")


def load_tokenizer(args: argparse.Namespace):
    from pyllmops import tokenizer

    if args.tiktoken:
        return tokenizer.load_tiktoken(args.tiktoken, args.name or args.encoding)
    if args.gguf:
        return tokenizer.load_gguf(args.gguf)
    if args.hf:
        return tokenizer.load_hf_tokenizer(args.hf)
    return tokenizer.get_encoding(args.encoding)


def read_texts(files: list[Path]) -> list[str]:
    """Contents of `files` ("-" is standard input), as UTF-8."""
    if not files:
        return [sys.stdin.read()]
    return [sys.stdin.read() if str(f) == "-" else Path(f).read_text(encoding="utf-8") for f in files]
