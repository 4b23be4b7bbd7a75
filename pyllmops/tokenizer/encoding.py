"""`Encoding`: a tiktoken-compatible byte-level BPE tokenizer over the C++ core.

Same methods and special-token rules as `tiktoken.Encoding`: `encode` raises on text that spells
a special token unless it is allowed (then it becomes that token) or explicitly not disallowed
(then it is ordinary text). Immutable, so one Encoding may serve many threads; the batch methods
encode on C++ threads with the GIL released."""
from __future__ import annotations

import os
from collections.abc import Collection, Sequence
from typing import AbstractSet, Literal

from pyllmops import _ext


def _fix_surrogates(text: str) -> str:
    # A str may hold lone surrogates, which have no UTF-8 form: replace them with U+FFFD, as
    # tiktoken does, instead of failing.
    return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def _check_str(text, what: str = "text") -> None:
    if not isinstance(text, str):
        raise TypeError(f"{what} must be str, not {type(text).__name__}")


class DisallowedSpecialTokenError(ValueError):
    """The text to encode spells a special token that was not allowed."""


class Encoding:
    """Byte-level BPE tokenizer.

    Build one with `Encoding.from_tiktoken`, `load_tiktoken`, `load_hf_tokenizer`, `load_gguf` or
    `train_bpe` (all in pyllmops.tokenizer). `core` is the C++ `BpeEncoder`; `special_tokens`
    maps special token text to id."""

    def __init__(self, name: str, core, special_tokens: dict[str, int], split: str, *,
                 mergeable: bool = True, eot_token: int | None = None):
        self.name = name
        self._core = core
        self._special_tokens = dict(special_tokens)
        self._special_index = {s: i for i, s in enumerate(self._special_tokens)}
        self._all_special = list(range(len(self._special_tokens)))
        self._split = split
        self._ranks_mode = mergeable
        self._eot = eot_token if eot_token is not None else self._special_tokens.get("<|endoftext|>")
        self.special_tokens_set = frozenset(self._special_tokens)

    # -- construction ---------------------------------------------------------------------------
    @classmethod
    def from_tiktoken(cls, enc) -> "Encoding":
        """From a `tiktoken.Encoding`: its mergeable ranks, pattern and special tokens."""
        from pyllmops.tokenizer._splits import split_of

        return cls.from_ranks(enc._mergeable_ranks, split_of(enc._pat_str), enc._special_tokens, name=enc.name)

    @classmethod
    def from_ranks(cls, mergeable_ranks: dict[bytes, int], pattern: str, special_tokens: dict[str, int],
                   name: str = "custom") -> "Encoding":
        """tiktoken-style: `mergeable_ranks` bytes -> rank (== id); `pattern` a split name, an
        encoding name or a supported regex string (see _splits.split_of)."""
        from pyllmops.tokenizer._splits import split_of

        split = split_of(pattern)
        core = _ext.cpp().BpeEncoder.from_ranks(
            list(mergeable_ranks.keys()), list(mergeable_ranks.values()), split,
            [(s.encode("utf-8"), i) for s, i in special_tokens.items()])
        return cls(name, core, special_tokens, split)

    # -- properties -----------------------------------------------------------------------------
    @property
    def n_vocab(self) -> int:
        """Largest token id + 1 (ordinary and special)."""
        return self._core.n_vocab

    @property
    def max_token_value(self) -> int:
        return self._core.n_vocab - 1

    @property
    def eot_token(self) -> int:
        if self._eot is None:
            raise AttributeError(f"encoding {self.name!r} has no end-of-text token")
        return self._eot

    @property
    def special_tokens(self) -> dict[str, int]:
        return dict(self._special_tokens)

    @property
    def split(self) -> str:
        """Pre-tokenizer split name: r50k, cl100k, o200k or gpt2_digits."""
        return self._split

    def __repr__(self) -> str:
        return f"<pyllmops Encoding {self.name!r} n_vocab={self.n_vocab} split={self._split}>"

    # -- encoding -------------------------------------------------------------------------------
    def _special_args(self, allowed_special, disallowed_special) -> tuple[list[int], list[int], frozenset]:
        """(allowed indices, disallowed indices, disallowed strings that are not special tokens)."""
        if allowed_special == "all":
            allowed = self.special_tokens_set
        else:
            allowed = frozenset(allowed_special)
        if disallowed_special == "all":
            disallowed = self.special_tokens_set - allowed
        else:
            disallowed = frozenset(disallowed_special)
        idx = self._special_index
        return ([idx[s] for s in allowed if s in idx], [idx[s] for s in disallowed if s in idx],
                frozenset(s for s in disallowed if s not in idx))

    def _raise_disallowed(self, token: str) -> None:
        raise DisallowedSpecialTokenError(
            f"the text contains the special token {token!r}, which is disallowed. To encode it as "
            f"the special token, pass allowed_special={{{token!r}}} (or \"all\"); to encode it as "
            f"plain text, pass disallowed_special=() (or leave {token!r} out of the set).")

    def _check_extra(self, text: str, extra: frozenset) -> None:
        for s in extra:
            if s and s in text:
                self._raise_disallowed(s)

    def encode(self, text: str, *, allowed_special: Literal["all"] | AbstractSet[str] = frozenset(),
               disallowed_special: Literal["all"] | Collection[str] = "all") -> list[int]:
        """Token ids of `text`. Special-token text: allowed -> its id; disallowed (by default, all
        that are not allowed) -> DisallowedSpecialTokenError (a ValueError); otherwise ordinary text."""
        _check_str(text)
        allowed, disallowed, extra = self._special_args(allowed_special, disallowed_special)
        try:
            return self._encode_checked(text, allowed, disallowed, extra)
        except UnicodeEncodeError:
            return self._encode_checked(_fix_surrogates(text), allowed, disallowed, extra)

    def _encode_checked(self, text, allowed, disallowed, extra):
        if disallowed:
            k = self._core.find_special(text, disallowed)
            if k >= 0:
                self._raise_disallowed(list(self._special_tokens)[k])
        if extra:
            self._check_extra(text, extra)
        return self._core.encode(text, allowed) if allowed else self._core.encode_ordinary(text)

    def encode_ordinary(self, text: str) -> list[int]:
        """Token ids of `text`, special-token text treated as ordinary text."""
        _check_str(text)
        try:
            return self._core.encode_ordinary(text)
        except UnicodeEncodeError:
            return self._core.encode_ordinary(_fix_surrogates(text))

    def encode_batch(self, texts: Sequence[str], *, num_threads: int = 0,
                     allowed_special: Literal["all"] | AbstractSet[str] = frozenset(),
                     disallowed_special: Literal["all"] | Collection[str] = "all") -> list[list[int]]:
        """`encode` of each text, on up to `num_threads` threads (0: all cores) without the GIL: the
        calling thread and persistent C++ pool threads, never more than the CPUs this process may
        use (asking for more, like tiktoken's default of 8, gives all of them)."""
        if isinstance(texts, str):
            raise TypeError("texts must be a sequence of str, not a str (use encode)")
        texts = list(texts)
        for i, t in enumerate(texts):
            _check_str(t, f"texts[{i}]")
        if num_threads < 0:
            raise ValueError(f"num_threads must be >= 0, got {num_threads}")
        threads = num_threads or os.cpu_count() or 1
        allowed, disallowed, extra = self._special_args(allowed_special, disallowed_special)
        if extra:
            for t in texts:
                self._check_extra(t, extra)
        try:
            ids, bad = self._core.encode_batch(texts, allowed, disallowed, threads)
        except UnicodeEncodeError:
            ids, bad = self._core.encode_batch([_fix_surrogates(t) for t in texts], allowed, disallowed, threads)
        for k in bad:
            if k >= 0:
                self._raise_disallowed(list(self._special_tokens)[k])
        return ids

    def encode_ordinary_batch(self, texts: Sequence[str], *, num_threads: int = 0) -> list[list[int]]:
        return self.encode_batch(texts, num_threads=num_threads, disallowed_special=())

    # -- decoding -------------------------------------------------------------------------------
    def decode_bytes(self, tokens: Sequence[int]) -> bytes:
        """Concatenated bytes of `tokens`; KeyError naming the first invalid id."""
        return self._core.decode(tokens)

    def decode(self, tokens: Sequence[int], errors: str = "replace") -> str:
        """`decode_bytes` as str; `errors` as in bytes.decode ("strict" raises UnicodeDecodeError
        on a cut multi-byte character, "replace" gives U+FFFD)."""
        return self._core.decode(tokens).decode("utf-8", errors=errors)

    def decode_single_token_bytes(self, token: int) -> bytes:
        return self._core.token_bytes(token)

    def decode_tokens_bytes(self, tokens: Sequence[int]) -> list[bytes]:
        return [self._core.token_bytes(t) for t in tokens]

    # -- export ---------------------------------------------------------------------------------
    def mergeable_ranks(self) -> dict[bytes, int]:
        """bytes -> rank of the ordinary tokens (what tiktoken.Encoding takes); only for encodings
        with the tiktoken merge rule."""
        if not self._ranks_mode:
            raise ValueError(f"encoding {self.name!r} merges by an explicit merges list (HF/GGUF), not by rank")
        specials = set(self._special_tokens.values())
        return {self._core.token_bytes(i): i for i in self._core.ids if i not in specials}

    def save_tiktoken(self, path: str | os.PathLike) -> None:
        """Write the mergeable ranks as a .tiktoken file ("base64 rank" lines)."""
        import base64

        with open(path, "w", encoding="ascii") as f:
            for tok, rank in sorted(self.mergeable_ranks().items(), key=lambda kv: kv[1]):
                f.write(f"{base64.b64encode(tok).decode()} {rank}\n")
