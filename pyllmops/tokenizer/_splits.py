"""The pre-tokenizer splits the C++ scanner implements, and the regex strings each reproduces.

A tiktoken Encoding, a tokenizer.json or a GGUF names its split by a regex (or a pre-tokenizer
name). A regex runs on the C++ scanner (csrc/bpe/pretokenize.h) only when it is, character for
character, one of the strings in KNOWN_PATTERNS; each entry is proven equal to its scanner by
tests/tokenizer/test_splits.py (against tiktoken's own regex engine and the `regex` package on
random text). Any other regex goes to the regex fallback (pyllmops.tokenizer._regex_split)."""
from __future__ import annotations

# gpt2 / r50k_base / p50k_base (tiktoken >= 0.7)
R50K_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
CL100K_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|\s+(?!\S)|\s"""
)
# Llama 3's tokenizer (and tiktoken's cl100k pattern before 0.7). NOT the same split as
# CL100K_PATTERN: a whitespace run ending the text with a newline inside ("\n  ") is one piece in
# cl100k (\s++$) and two here ("\n", "  "), so it has a scanner of its own.
LLAMA3_PATTERN = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
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
# The canonical regex of each scanner.
PATTERNS = {"r50k": R50K_PATTERN, "cl100k": CL100K_PATTERN, "llama3": LLAMA3_PATTERN, "o200k": O200K_PATTERN}
# Every regex string that runs on a scanner: the canonical ones, and the same splits written
# differently (GPT-2's original release and HF ByteLevel; a form between the two).
KNOWN_PATTERNS: dict[str, str] = {pat: split for split, pat in PATTERNS.items()} | {
    r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""": "r50k",
    r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""": "r50k",
}
# HF Sequence[Digits(individual_digits=True), ByteLevel(use_regex=True)]: not one regex.
GPT2_DIGITS = "gpt2_digits"
# The split of an Encoding whose pattern runs in Python (the C++ core then merges whole pieces).
REGEX = "regex"

ENDOFTEXT = "<|endoftext|>"
_FIM = {"<|fim_prefix|>": 100258, "<|fim_middle|>": 100259, "<|fim_suffix|>": 100260}
# name -> (split, special tokens, explicit_n_vocab) of the OpenAI encodings, as tiktoken builds them.
ENCODINGS: dict[str, tuple[str, dict[str, int], int | None]] = {
    "gpt2": ("r50k", {ENDOFTEXT: 50256}, 50257),
    "r50k_base": ("r50k", {ENDOFTEXT: 50256}, 50257),
    "p50k_base": ("r50k", {ENDOFTEXT: 50256}, 50281),
    "p50k_edit": ("r50k", {ENDOFTEXT: 50256, "<|fim_prefix|>": 50281, "<|fim_middle|>": 50282,
                           "<|fim_suffix|>": 50283}, None),
    "cl100k_base": ("cl100k", {ENDOFTEXT: 100257, **_FIM, "<|endofprompt|>": 100276}, None),
    "o200k_base": ("o200k", {ENDOFTEXT: 199999, "<|endofprompt|>": 200018}, None),
    "o200k_harmony": ("o200k", {
        "<|startoftext|>": 199998, ENDOFTEXT: 199999, "<|endofprompt|>": 200018,
        "<|reserved_200000|>": 200000, "<|reserved_200001|>": 200001, "<|return|>": 200002,
        "<|constrain|>": 200003, "<|reserved_200004|>": 200004, "<|channel|>": 200005, "<|start|>": 200006,
        "<|end|>": 200007, "<|message|>": 200008, "<|reserved_200009|>": 200009, "<|reserved_200010|>": 200010,
        "<|reserved_200011|>": 200011, "<|call|>": 200012,
        **{f"<|reserved_{i}|>": i for i in range(200013, 201088)},
    }, None),
}


def known_split(pat_str: str) -> str | None:
    """The scanner that reproduces the regex `pat_str` exactly, or None."""
    return KNOWN_PATTERNS.get(pat_str)


def split_of(pattern: str) -> str:
    """The split name for a split name, an encoding name, or a regex string that a scanner
    reproduces; ValueError otherwise (the loaders of HF and GGUF files, which only run scanners)."""
    if pattern in PATTERNS or pattern == GPT2_DIGITS:
        return pattern
    if pattern in ENCODINGS:
        return ENCODINGS[pattern][0]
    split = known_split(pattern)
    if split is not None:
        return split
    raise ValueError(
        f"unsupported pre-tokenizer pattern {pattern!r}: the C++ scanner implements the splits of "
        f"gpt2/r50k_base/p50k_base, cl100k_base, Llama 3, o200k_base and HF byte-level (optionally "
        f"with individual digits); pass one of {sorted(PATTERNS) + [GPT2_DIGITS] + sorted(ENCODINGS)}, or "
        f"build Encoding(name, pat_str=..., ...), which runs any other regex through the `regex` package")
