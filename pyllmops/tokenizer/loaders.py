"""Build an `Encoding` from the files tokenizers ship in: .tiktoken ranks, HF tokenizer.json, GGUF."""
from __future__ import annotations

import json
import os
from pathlib import Path

from pyllmops import _ext
from pyllmops.tokenizer._bytelevel import token_bytes
from pyllmops.tokenizer._splits import ENCODINGS, GPT2_DIGITS, PATTERNS, split_of
from pyllmops.tokenizer.encoding import Encoding


def load_tiktoken(path: str | os.PathLike, name: str) -> Encoding:
    """Encoding from a .tiktoken ranks file; `name` (gpt2, r50k_base, p50k_base, p50k_edit,
    cl100k_base, o200k_base, o200k_harmony) supplies the pattern and special tokens."""
    if name not in ENCODINGS:
        raise ValueError(f"unknown encoding name {name!r}; expected one of {sorted(ENCODINGS)}")
    split, specials, _ = ENCODINGS[name]
    tokens, ranks = _ext.cpp().bpe_parse_tiktoken(Path(path).read_bytes())
    return Encoding(name, pat_str=PATTERNS[split], mergeable_ranks=dict(zip(tokens, ranks)),
                    special_tokens=dict(specials))


def from_merges(name: str, tokens: list[str | None], merges: list[tuple[str, str]], split: str,
                special: dict[int, str], *, ignore_merges: bool = False, eot_token: int | None = None) -> Encoding:
    """HF/GGUF rule. tokens[id]: byte-level token string (None: unused id); merges in priority
    order as (left, right) token strings; special: id -> text of special (control/added) tokens,
    which leave the mergeable vocabulary and are matched as text by `encode`."""
    ids = {t: i for i, t in enumerate(tokens) if t is not None and i not in special}
    core_tokens = [None if (t is None or i in special) else token_bytes(t) for i, t in enumerate(tokens)]
    pairs = []
    for left, right in merges:
        a, b, c = ids.get(left), ids.get(right), ids.get(left + right)
        if a is None or b is None or c is None:
            continue  # a merge through a special or missing token can never apply to ordinary text
        pairs.append((a, b))
    core = _ext.cpp().BpeEncoder.from_merges(
        core_tokens, pairs, split, [(text.encode("utf-8"), i) for i, text in special.items()], ignore_merges)
    recipe = (from_merges, (name, tokens, merges, split, special), {"ignore_merges": ignore_merges, "eot_token": eot_token})
    return Encoding._from_core(name, core, {text: i for i, text in special.items()}, split, eot_token=eot_token,
                               recipe=recipe)


def _hf_split(pre: dict | None) -> str:
    """The split of a tokenizer.json pre_tokenizer, or ValueError."""
    def is_bytelevel_regex(p):
        return p.get("type") == "ByteLevel" and p.get("use_regex", True) and not p.get("add_prefix_space", False)

    if pre is None:
        raise ValueError("tokenizer.json has no pre_tokenizer; only byte-level BPE is supported")
    if is_bytelevel_regex(pre):
        return "r50k"
    if pre.get("type") == "Sequence":
        items = pre.get("pretokenizers", [])
        if (len(items) == 2 and items[0].get("type") == "Digits" and items[0].get("individual_digits")
                and is_bytelevel_regex(items[1])):
            return GPT2_DIGITS
        if (len(items) == 2 and items[0].get("type") == "Split" and items[1].get("type") == "ByteLevel"
                and not items[1].get("use_regex", True) and items[0].get("behavior") == "Isolated"
                and not items[0].get("invert", False)):
            return split_of(items[0].get("pattern", {}).get("Regex", ""))
    raise ValueError(f"unsupported pre_tokenizer {json.dumps(pre)[:200]}")


def load_hf_tokenizer(path: str | os.PathLike, name: str | None = None) -> Encoding:
    """Encoding from a HF tokenizer.json with a byte-level BPE model (GPT-2 byte-to-unicode
    tokens, merges). Added tokens become special tokens."""
    spec = json.loads(Path(path).read_text(encoding="utf-8"))
    model = spec.get("model", {})
    if model.get("type") != "BPE":
        raise ValueError(f"tokenizer.json model is {model.get('type')!r}, not BPE")
    for key in ("continuing_subword_prefix", "end_of_word_suffix"):
        if model.get(key):
            raise ValueError(f"BPE option {key}={model[key]!r} is not supported (byte-level BPE only)")
    if model.get("byte_fallback") or model.get("dropout"):
        raise ValueError("BPE byte_fallback / dropout are not supported")
    split = _hf_split(spec.get("pre_tokenizer"))
    vocab: dict[str, int] = model["vocab"]
    tokens: list[str | None] = [None] * (max(vocab.values(), default=-1) + 1)
    for t, i in vocab.items():
        tokens[i] = t
    special = {}
    for added in spec.get("added_tokens", []):
        i = added["id"]
        if i >= len(tokens):
            tokens += [None] * (i + 1 - len(tokens))
        special[i] = added["content"]
    merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in model.get("merges", [])]
    return from_merges(name or Path(path).stem, tokens, merges, split, special,
                       ignore_merges=bool(model.get("ignore_merges", False)))


_GGUF_PRE = {"smollm": GPT2_DIGITS, "gpt-2": "r50k", "gpt2": "r50k", "llama-bpe": "llama3", "llama3": "llama3"}
_GGUF_CONTROL = 3
_GGUF_USER_DEFINED = 4


def load_gguf(path) -> Encoding:
    """Encoding from the tokenizer of a GGUF model file (tokenizer.ggml.model == "gpt2":
    byte-level BPE with tokens, merges and token types). Control and user-defined tokens become
    special tokens; `eot_token` is the GGUF eos id. Ids equal HF tokenizers' for the same model.
    `path` may also be an open `gguf.GGUFReader` (opening one takes seconds)."""
    from gguf import GGUFReader

    reader = path if isinstance(path, GGUFReader) else GGUFReader(str(path))
    name = Path(str(getattr(reader.data, "filename", None) or path)).stem

    def field(key, default=None):
        f = reader.fields.get(key)
        if f is None:
            return default
        return f.contents()

    model = field("tokenizer.ggml.model")
    if model != "gpt2":
        raise ValueError(f"GGUF tokenizer model is {model!r}; only byte-level BPE ('gpt2') is supported")
    pre = field("tokenizer.ggml.pre", "default")
    if pre not in _GGUF_PRE:
        raise ValueError(f"GGUF pre-tokenizer {pre!r} is not supported (known: {sorted(_GGUF_PRE)})")
    tokens = list(field("tokenizer.ggml.tokens"))
    types = list(field("tokenizer.ggml.token_type", [1] * len(tokens)))
    merges = [tuple(m.split(" ", 1)) for m in field("tokenizer.ggml.merges", [])]
    special = {i: t for i, (t, ty) in enumerate(zip(tokens, types)) if ty in (_GGUF_CONTROL, _GGUF_USER_DEFINED)}
    eos = field("tokenizer.ggml.eos_token_id")
    enc = from_merges(name, tokens, merges, _GGUF_PRE[pre], special,
                      eot_token=int(eos) if eos is not None else None)
    enc.bos_token_id = field("tokenizer.ggml.bos_token_id")
    enc.eos_token_id = eos
    enc._recipe += ({"bos_token_id": enc.bos_token_id, "eos_token_id": eos},)
    return enc
