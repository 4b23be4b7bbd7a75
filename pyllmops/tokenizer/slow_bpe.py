"""A pure-Python byte-level BPE tokenizer (GPT-2 style, merges by rank) read from a GGUF file.

It is the plainly-correct reference for the fast C++ encoder: same ids as Hugging Face
`tokenizers` built from the same vocabulary and merges. Steps, as HF does them:
1. special tokens that the caller allows are cut out of the text first and map to their ids;
2. the pre-tokenizer splits the rest into pieces (for 'smollm': every digit alone, then the
   GPT-2 split);
3. each piece's UTF-8 bytes become printable characters (GPT-2's byte -> unicode table), and
   adjacent symbols are merged, always the pair of lowest merge rank first, until none applies;
4. each resulting symbol is looked up in the vocabulary.
"""
from __future__ import annotations

from pathlib import Path
from typing import AbstractSet, Collection, Literal

import regex

from pyllmops.tokenizer._bytelevel import byte_to_char

# GPT-2's split, as HF's ByteLevel pre-tokenizer uses it (the trailing \s+ catches whitespace
# that is followed by a non-space, minus the space that joins the next word).
GPT2_SPLIT = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
# Pre-tokenizers by their GGUF `tokenizer.ggml.pre` name: a sequence of regexes, each splitting
# every piece the previous one produced (matches and the text between them both kept).
PRE_TOKENIZERS: dict[str, tuple[str, ...]] = {
    "gpt2": (GPT2_SPLIT,),
    "smollm": (r"\p{N}", GPT2_SPLIT),
}
SPECIAL_TOKEN_TYPE = 3  # llama.cpp's LLAMA_TOKEN_TYPE_CONTROL


class SlowBPE:
    """Byte-level BPE. tokens: id -> token string (in GPT-2 byte-unicode form); merges: "a b"
    strings in rank order; special: the special token ids (matched as whole strings)."""

    def __init__(self, tokens: list[str], merges: list[str], special_ids: Collection[int], *, pre: str = "gpt2", eos_id: int | None = None, bos_id: int | None = None):
        if pre not in PRE_TOKENIZERS:
            raise ValueError(f"pre must be one of {sorted(PRE_TOKENIZERS)}, got {pre!r}")
        self.tokens = list(tokens)
        self.vocab = {tok: i for i, tok in enumerate(self.tokens)}
        self.ranks = {tuple(m.split(" ")): r for r, m in enumerate(merges)}
        self.special_tokens = {self.tokens[i]: i for i in special_ids}
        self.eos_id, self.bos_id = eos_id, bos_id
        self._splits = [regex.compile(p) for p in PRE_TOKENIZERS[pre]]
        self._byte_char = byte_to_char()
        self._char_byte = {c: b for b, c in self._byte_char.items()}
        self._cache: dict[str, list[int]] = {}

    @property
    def n_vocab(self) -> int:
        return len(self.tokens)

    @property
    def special_ids(self) -> set[int]:
        return set(self.special_tokens.values())

    def encode(self, text: str, allowed_special: Literal["all"] | AbstractSet[str] = frozenset()) -> list[int]:
        """Token ids of `text`. Special tokens named in `allowed_special` ("all" for every one)
        become their ids; any other special-token text is encoded as ordinary text."""
        if not isinstance(text, str):
            raise TypeError(f"text must be str, got {type(text).__name__}")
        allowed = set(self.special_tokens) if allowed_special == "all" else set(allowed_special)
        unknown = allowed - set(self.special_tokens)
        if unknown:
            raise ValueError(f"allowed_special names tokens that are not special: {sorted(unknown)}")
        ids: list[int] = []
        for chunk, is_special in self._split_special(text, allowed):
            if is_special:
                ids.append(self.special_tokens[chunk])
            else:
                for piece in self._pre_tokenize(chunk):
                    ids.extend(self._encode_piece(piece))
        return ids

    def encode_ordinary(self, text: str) -> list[int]:
        """Token ids of `text`, special-token text treated as ordinary text."""
        return self.encode(text)

    def decode_bytes(self, ids: Collection[int]) -> bytes:
        out = bytearray()
        for i in ids:
            if not 0 <= i < len(self.tokens):
                raise ValueError(f"token id {i} out of range [0, {len(self.tokens)})")
            tok = self.tokens[i]
            if tok in self.special_tokens:
                out += tok.encode("utf-8")
            else:
                out += bytes(self._char_byte[c] for c in tok)
        return bytes(out)

    def decode(self, ids: Collection[int]) -> str:
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    # -- steps ---------------------------------------------------------------------------------

    @staticmethod
    def _split_special(text: str, allowed: set[str]):
        """(chunk, is_special) pairs; the longest allowed special token wins at each position."""
        if not allowed:
            yield text, False
            return
        pattern = regex.compile("|".join(regex.escape(s) for s in sorted(allowed, key=len, reverse=True)))
        pos = 0
        for m in pattern.finditer(text):
            if m.start() > pos:
                yield text[pos:m.start()], False
            yield m.group(), True
            pos = m.end()
        if pos < len(text):
            yield text[pos:], False

    def _pre_tokenize(self, text: str) -> list[str]:
        pieces = [text]
        for split in self._splits:
            out = []
            for piece in pieces:
                pos = 0
                for m in split.finditer(piece):
                    if m.start() > pos:
                        out.append(piece[pos:m.start()])
                    out.append(m.group())
                    pos = m.end()
                if pos < len(piece):
                    out.append(piece[pos:])
            pieces = out
        return pieces

    def _encode_piece(self, piece: str) -> list[int]:
        cached = self._cache.get(piece)
        if cached is not None:
            return cached
        symbols = [self._byte_char[b] for b in piece.encode("utf-8")]
        while len(symbols) > 1:
            # The adjacent pair of lowest rank; merge every occurrence of it, left to right.
            best = min(zip(symbols, symbols[1:]), key=lambda p: self.ranks.get(p, float("inf")))
            if best not in self.ranks:
                break
            merged, i = [], 0
            while i < len(symbols):
                if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == best:
                    merged.append(symbols[i] + symbols[i + 1])
                    i += 2
                else:
                    merged.append(symbols[i])
                    i += 1
            symbols = merged
        ids = [self.vocab[s] for s in symbols]
        if len(self._cache) < 100_000:
            self._cache[piece] = ids
        return ids


def load_gguf_slow(path) -> SlowBPE:
    """The byte-level BPE tokenizer stored in a GGUF file (tokenizer.ggml.model == 'gpt2');
    `path` may also be an open gguf.GGUFReader."""
    import gguf

    reader = path if isinstance(path, gguf.GGUFReader) else gguf.GGUFReader(str(path))
    field = lambda key: reader.fields[key].contents() if key in reader.fields else None  # noqa: E731
    model = field("tokenizer.ggml.model")
    if model != "gpt2":
        raise ValueError(f"only byte-level BPE ('gpt2') GGUF tokenizers are supported, this file has {model!r}")
    tokens = field("tokenizer.ggml.tokens")
    types = field("tokenizer.ggml.token_type") or [1] * len(tokens)
    special = [i for i, t in enumerate(types) if t == SPECIAL_TOKEN_TYPE]
    return SlowBPE(
        tokens, field("tokenizer.ggml.merges"), special,
        pre=field("tokenizer.ggml.pre") or "gpt2",
        eos_id=field("tokenizer.ggml.eos_token_id"), bos_id=field("tokenizer.ggml.bos_token_id"),
    )
