"""The pre-tokenizer splits the C++ scanner implements, and the regex strings each reproduces.

A tiktoken Encoding, a tokenizer.json or a GGUF names its split by a regex (or a pre-tokenizer
name); only the patterns listed here are supported, because the scanner is hand-written for them
(csrc/bpe/pretokenize.h) rather than a general regex engine."""
from __future__ import annotations

# gpt2 / r50k_base / p50k_base
R50K_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
CL100K_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|\s+(?!\S)|\s"""
)
O200K_PATTERN = "|".join([
    r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
    r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
    r"""\p{N}{1,3}""",
    r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
    r"""\s*[\r\n]+""",
    r"""\s+(?!\S)""",
    r"""\s+""",
])
# The same splits written differently (older tiktoken releases, HF ByteLevel, Llama 3).
_EQUIVALENT = {
    r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""": "r50k",
    r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""": "r50k",
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+""": "cl100k",
}
PATTERNS = {"r50k": R50K_PATTERN, "cl100k": CL100K_PATTERN, "o200k": O200K_PATTERN}
# HF Sequence[Digits(individual_digits=True), ByteLevel(use_regex=True)]: not one regex.
GPT2_DIGITS = "gpt2_digits"

ENDOFTEXT = "<|endoftext|>"
# name -> (split, special tokens) of the OpenAI encodings.
ENCODINGS: dict[str, tuple[str, dict[str, int]]] = {
    "gpt2": ("r50k", {ENDOFTEXT: 50256}),
    "r50k_base": ("r50k", {ENDOFTEXT: 50256}),
    "p50k_base": ("r50k", {ENDOFTEXT: 50256}),
    "cl100k_base": ("cl100k", {
        ENDOFTEXT: 100257, "<|fim_prefix|>": 100258, "<|fim_middle|>": 100259, "<|fim_suffix|>": 100260,
        "<|endofprompt|>": 100276,
    }),
    "o200k_base": ("o200k", {ENDOFTEXT: 199999, "<|endofprompt|>": 200018}),
}


def split_of(pattern: str) -> str:
    """The split name ("r50k", "cl100k", "o200k", "gpt2_digits") for a split name, an encoding
    name, or one of the supported regex strings; ValueError otherwise."""
    if pattern in PATTERNS or pattern == GPT2_DIGITS:
        return pattern
    if pattern in ENCODINGS:
        return ENCODINGS[pattern][0]
    for name, pat in PATTERNS.items():
        if pattern == pat:
            return name
    if pattern in _EQUIVALENT:
        return _EQUIVALENT[pattern]
    raise ValueError(
        f"unsupported pre-tokenizer pattern {pattern!r}: the C++ scanner implements the splits of "
        f"gpt2/r50k_base/p50k_base, cl100k_base, o200k_base and HF byte-level (optionally with "
        f"individual digits); pass one of {sorted(PATTERNS) + [GPT2_DIGITS] + sorted(ENCODINGS)}")
