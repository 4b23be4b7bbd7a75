"""`Encoding`: tiktoken's `Encoding` (0.14), every public method and property, over the C++ core.

Same constructor, signatures, defaults, return types, special-token policy and exceptions as
`tiktoken.Encoding`, so `import pyllmops.tokenizer as tiktoken` runs tiktoken code unchanged.
The split follows tiktoken's design: the special-token policy is decided here in Python, the
pre-tokenizer and the merging run in native code. A `pat_str` that one of the C++ scanners
reproduces (see _splits.KNOWN_PATTERNS) runs there; any other runs through the `regex` package
(_regex_split) and the C++ core merges its pieces: exact either way, and `split` says which.
Immutable, so one Encoding may serve many threads; the batch methods encode on C++ threads with
the GIL released."""
from __future__ import annotations

import bisect
import functools
import operator
import os
import re
import warnings
from collections.abc import Collection, Sequence
from typing import AbstractSet, Literal

from pyllmops import _ext
from pyllmops.tokenizer._splits import GPT2_DIGITS, PATTERNS, REGEX, known_split


def _fix_surrogates(text: str) -> str:
    # A str may hold lone surrogates, which have no UTF-8 form: U+FFFD instead, as tiktoken does.
    return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def _check_str(text, what: str = "text") -> None:
    if not isinstance(text, str):
        raise TypeError(f"{what} must be str, not {type(text).__name__}")


def _check_threads(num_threads) -> int:
    """Threads for a batch call: tiktoken's ThreadPoolExecutor(num_threads) rejects < 1; 0 here
    means every usable core (the CLI's default)."""
    num_threads = operator.index(num_threads)
    if num_threads < 0:
        raise ValueError(f"num_threads must be >= 1 (or 0 for all cores), got {num_threads}")
    return num_threads or os.cpu_count() or 1


# White_Space, which Rust's char::is_whitespace tests (str.isspace also takes U+001C..U+001F).
_WHITE_SPACE = frozenset("\t\n\x0b\x0c\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007"
                         "\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000")


class DisallowedSpecialTokenError(ValueError):
    """The text to encode spells a special token that was not allowed (a ValueError, as tiktoken's)."""


class RegexFallbackWarning(UserWarning):
    """An Encoding's pat_str is not a known split: it runs through the `regex` package (slower)."""


_warned_patterns: set[str] = set()


class Encoding:
    """Byte-level BPE tokenizer with tiktoken's API.

    Encoding(name, *, pat_str, mergeable_ranks, special_tokens, explicit_n_vocab=None) as in
    tiktoken; the loaders (get_encoding, load_tiktoken, load_hf_tokenizer, load_gguf, train_bpe)
    build the same class. `split` is the pre-tokenizer taken: a C++ scanner ("r50k", "cl100k",
    "llama3", "o200k", "gpt2_digits") or "regex" (the fallback)."""

    def __init__(self, name: str, *, pat_str: str, mergeable_ranks: dict[bytes, int],
                 special_tokens: dict[str, int], explicit_n_vocab: int | None = None):
        self.name = name
        self._pat_str = pat_str
        self._mergeable_ranks = mergeable_ranks
        self._special_tokens = special_tokens
        self.max_token_value = max(max(mergeable_ranks.values()), max(special_tokens.values(), default=0))
        if explicit_n_vocab:
            if len(mergeable_ranks) + len(special_tokens) != explicit_n_vocab:
                raise AssertionError(f"explicit_n_vocab={explicit_n_vocab} but there are {len(mergeable_ranks)} "
                                     f"mergeable and {len(special_tokens)} special tokens")
            if self.max_token_value != explicit_n_vocab - 1:
                raise AssertionError(f"explicit_n_vocab={explicit_n_vocab} but the largest id is {self.max_token_value}")
        if not isinstance(pat_str, str):
            raise TypeError(f"pat_str must be str, not {type(pat_str).__name__}")
        split = known_split(pat_str)
        splitter = None
        if split is None:
            from pyllmops.tokenizer._regex_split import RegexSplitter

            splitter = RegexSplitter(pat_str)
            split = REGEX
            if pat_str not in _warned_patterns:
                _warned_patterns.add(pat_str)
                warnings.warn(
                    f"Encoding {name!r}: pat_str is not one of the splits the C++ pre-tokenizer implements "
                    f"(gpt2/r50k/p50k, cl100k, Llama 3, o200k); it runs through the `regex` package: same "
                    f"ids as tiktoken, slower. enc.split == 'regex' tells which path an Encoding takes.",
                    RegexFallbackWarning, stacklevel=2)
        core = _ext.cpp().BpeEncoder.from_ranks(
            list(mergeable_ranks.keys()), list(mergeable_ranks.values()), "none" if splitter else split,
            [(s.encode("utf-8"), i) for s, i in special_tokens.items()])
        self._setup(core, split, splitter)
        self._recipe = None

    def _setup(self, core, split: str, splitter, eot_token: int | None = None) -> None:
        self._core = core
        self._split = split
        self._splitter = splitter
        self._eot = eot_token
        self._special_token_values = set(self._special_tokens.values())
        self._special_index = {s: i for i, s in enumerate(self._special_tokens)}
        self._all_specials = list(range(len(self._special_tokens)))

    @classmethod
    def _from_core(cls, name: str, core, special_tokens: dict[str, int], split: str, *,
                   eot_token: int | None, recipe, mergeable_ranks: dict[bytes, int] | None = None) -> "Encoding":
        """An Encoding over a core built another way: by the HF/GGUF merges rule
        (pyllmops.tokenizer.loaders; no mergeable ranks), or with a split that is no single regex
        (gpt2_digits). `recipe` (function, args, kwargs[, attributes]) rebuilds it when unpickled."""
        self = cls.__new__(cls)
        self.name = name
        self._pat_str = PATTERNS.get(split)
        self._mergeable_ranks = mergeable_ranks
        self._special_tokens = dict(special_tokens)
        self.max_token_value = core.n_vocab - 1
        self._setup(core, split, None, eot_token)
        self._recipe = recipe
        return self

    # -- construction ---------------------------------------------------------------------------
    @classmethod
    def from_tiktoken(cls, enc) -> "Encoding":
        """From a `tiktoken.Encoding`: its name, pattern, mergeable ranks and special tokens."""
        return cls(enc.name, pat_str=enc._pat_str, mergeable_ranks=enc._mergeable_ranks,
                   special_tokens=enc._special_tokens)

    @classmethod
    def from_ranks(cls, mergeable_ranks: dict[bytes, int], pattern: str, special_tokens: dict[str, int],
                   name: str = "custom") -> "Encoding":
        """Like the constructor, with `pattern` also a split name ("cl100k", ...) or an encoding name."""
        from pyllmops.tokenizer._splits import ENCODINGS

        if pattern == GPT2_DIGITS:
            raise ValueError("gpt2_digits is a HF pre-tokenizer sequence, not one regex: use load_hf_tokenizer")
        split = ENCODINGS[pattern][0] if pattern in ENCODINGS else pattern
        pat_str = PATTERNS.get(split, pattern)
        return cls(name, pat_str=pat_str, mergeable_ranks=mergeable_ranks, special_tokens=special_tokens)

    # -- properties -----------------------------------------------------------------------------
    @property
    def n_vocab(self) -> int:
        """max_token_value + 1 (ordinary and special tokens)."""
        return self.max_token_value + 1

    @property
    def eot_token(self) -> int:
        """The id of "<|endoftext|>" (KeyError without one, as tiktoken); a GGUF's eos id."""
        if self._eot is not None:
            return self._eot
        return self._special_tokens["<|endoftext|>"]

    @functools.cached_property
    def special_tokens_set(self) -> set[str]:
        return set(self._special_tokens.keys())

    @property
    def special_tokens(self) -> dict[str, int]:
        return dict(self._special_tokens)

    @property
    def split(self) -> str:
        """The pre-tokenizer: "r50k", "cl100k", "llama3", "o200k", "gpt2_digits" (C++ scanners) or
        "regex" (the pattern runs through the `regex` package)."""
        return self._split

    def is_special_token(self, token: int) -> bool:
        if not isinstance(token, int):
            raise AssertionError(f"token must be int, not {type(token).__name__}")
        return token in self._special_token_values

    def __repr__(self) -> str:
        return f"<Encoding {self.name!r}>"

    # -- special-token policy (tiktoken's rules) ------------------------------------------------
    def _policy(self, allowed_special, disallowed_special) -> tuple[AbstractSet[str], frozenset]:
        """(allowed, disallowed frozenset) as tiktoken computes them."""
        if allowed_special == "all":
            allowed_special = self.special_tokens_set
        if disallowed_special == "all":
            disallowed_special = self.special_tokens_set - allowed_special
        if not isinstance(disallowed_special, frozenset):
            disallowed_special = frozenset(disallowed_special)
        return allowed_special, disallowed_special

    def _allowed_indices(self, allowed: AbstractSet[str]) -> list[int]:
        """Indices of the allowed specials; TypeError where tiktoken's core rejects the argument
        (anything but a set or frozenset of str)."""
        if not isinstance(allowed, (set, frozenset)):
            raise TypeError(f"allowed_special must be a set, a frozenset or 'all', not {type(allowed).__name__}")
        for s in allowed:
            _check_str(s, "each allowed_special item")
        idx = self._special_index
        return [idx[s] for s in allowed if s in idx]

    def _text_then_allowed(self, text: str, allowed: AbstractSet[str]) -> list[int]:
        """_allowed_indices, but a text with lone surrogates raises UnicodeEncodeError first (the
        order in which tiktoken's core converts its arguments, where no repair comes first)."""
        try:
            return self._allowed_indices(allowed)
        except TypeError:
            text.encode("utf-8")
            raise

    def _check_disallowed(self, text: str, disallowed: frozenset) -> None:
        """DisallowedSpecialTokenError if `text` holds any string of `disallowed` (special or not)."""
        if not disallowed:
            return
        idx = self._special_index
        which = [idx[s] for s in disallowed if s in idx]
        try:
            k = self._core.find_special(text, which) if which else -1
        except UnicodeEncodeError:  # lone surrogates: search the str itself, as tiktoken does
            k = -1
            which = []
            extra = disallowed
        else:
            extra = [s for s in disallowed if s not in idx]
        if k >= 0:
            _raise_disallowed(list(self._special_tokens)[k])
        if extra:
            m = _string_regex(frozenset(extra)).search(text)
            if m:
                _raise_disallowed(m.group())

    # -- encoding -------------------------------------------------------------------------------
    def encode_ordinary(self, text: str) -> list[int]:
        """Token ids of `text`, special-token text encoded as ordinary text."""
        _check_str(text)
        try:
            return self._ordinary(text)
        except UnicodeEncodeError:
            return self._ordinary(_fix_surrogates(text))

    def encode(self, text: str, *, allowed_special: Literal["all"] | AbstractSet[str] = set(),  # noqa: B006
               disallowed_special: Literal["all"] | Collection[str] = "all") -> list[int]:
        """Token ids of `text`. Special-token text: allowed -> its id; disallowed (by default, all
        that are not allowed) -> DisallowedSpecialTokenError (a ValueError); otherwise ordinary text."""
        _check_str(text)
        if (disallowed_special == "all" and not allowed_special and isinstance(allowed_special, (set, frozenset))
                and self._splitter is None):
            # The default policy (every special disallowed, none allowed), the common call: one scan.
            try:
                k = self._core.find_special(text, self._all_specials)
            except UnicodeEncodeError:
                pass  # lone surrogates: the general path below
            else:
                if k >= 0:
                    _raise_disallowed(list(self._special_tokens)[k])
                return self._core.encode_ordinary(text)
        return self._encode_checked(text, *self._policy(allowed_special, disallowed_special))

    def encode_to_numpy(self, text: str, *, allowed_special: Literal["all"] | AbstractSet[str] = set(),  # noqa: B006
                        disallowed_special: Literal["all"] | Collection[str] = "all"):
        """`encode` as a uint32 numpy array. Like tiktoken, lone surrogates raise UnicodeEncodeError."""
        import numpy as np

        _check_str(text)
        allowed, disallowed = self._policy(allowed_special, disallowed_special)
        self._check_disallowed(text, disallowed)
        return np.array(self._encode(text, self._text_then_allowed(text, allowed)), dtype=np.uint32)

    def encode_batch(self, text: Sequence[str], *, num_threads: int = 8,
                     allowed_special: Literal["all"] | AbstractSet[str] = set(),  # noqa: B006
                     disallowed_special: Literal["all"] | Collection[str] = "all") -> list[list[int]]:
        """`encode` of each text, on up to `num_threads` threads (0: all cores) without the GIL: the
        calling thread and persistent C++ pool threads, never more than the CPUs this process may use."""
        texts = self._batch_texts(text)
        threads = _check_threads(num_threads)
        allowed, disallowed = self._policy(allowed_special, disallowed_special)
        try:
            which = self._allowed_indices(allowed)
        except TypeError:
            which = None  # raised text by text below, after each text's disallowed check, as tiktoken
        if self._splitter is not None or which is None:
            return [self._encode_checked(t, allowed, disallowed) for t in texts]
        idx = self._special_index
        extra = frozenset(s for s in disallowed if s not in idx)
        if extra:
            for t in texts:
                self._check_disallowed(t, extra)
        bad_which = [idx[s] for s in disallowed if s in idx]
        try:
            ids, bad = self._core.encode_batch(texts, which, bad_which, threads)
        except UnicodeEncodeError:  # check the texts themselves, then encode them repaired
            for t in texts:
                self._check_disallowed(t, disallowed)
            ids, bad = self._core.encode_batch([_fix_surrogates(t) for t in texts], which, [], threads)
        for k in bad:
            if k >= 0:
                _raise_disallowed(list(self._special_tokens)[k])
        return ids

    def encode_ordinary_batch(self, text: Sequence[str], *, num_threads: int = 8) -> list[list[int]]:
        """`encode_ordinary` of each text (see encode_batch for the threads)."""
        return self.encode_batch(text, num_threads=num_threads, disallowed_special=())

    def encode_with_unstable(self, text: str, *, allowed_special: Literal["all"] | AbstractSet[str] = set(),  # noqa: B006
                             disallowed_special: Literal["all"] | Collection[str] = "all"
                             ) -> tuple[list[int], list[list[int]]]:
        """(stable tokens, possible completions): the tokens of `text` except those of its last
        piece that more text could still change, and every token sequence that could continue
        them (tiktoken's algorithm; like it, lone surrogates raise UnicodeEncodeError)."""
        _check_str(text)
        allowed, disallowed = self._policy(allowed_special, disallowed_special)
        self._check_disallowed(text, disallowed)
        self._text_then_allowed(text, allowed)
        tokens, last = self._encode_with_last(text, allowed)
        if last == 0:
            return tokens, []
        last = self._widen_last_piece(tokens, last)
        unstable = self.decode_bytes(tokens[len(tokens) - last:])
        del tokens[len(tokens) - last:]
        return tokens, self._completions(unstable)

    def encode_single_token(self, text_or_bytes: str | bytes) -> int:
        """The id of the token whose text (or bytes) is exactly `text_or_bytes`, special tokens
        included; KeyError if there is none."""
        if isinstance(text_or_bytes, str):
            text_or_bytes = text_or_bytes.encode("utf-8")
        if not isinstance(text_or_bytes, bytes):
            raise TypeError(f"text_or_bytes must be str or bytes, not {type(text_or_bytes).__name__}")
        token = self._bytes_to_id.get(text_or_bytes)
        if token is not None:
            return token
        try:
            return self._special_tokens[text_or_bytes.decode("utf-8")]
        except (UnicodeDecodeError, KeyError):
            raise KeyError(text_or_bytes) from None

    def _encode_single_piece(self, text_or_bytes: str | bytes) -> list[int]:
        """BPE of `text_or_bytes` as one piece, without pre-tokenization or special tokens."""
        if isinstance(text_or_bytes, str):
            text_or_bytes = text_or_bytes.encode("utf-8")
        return self._core.encode_piece(text_or_bytes)

    def _encode_bytes(self, text: bytes) -> list[int]:
        """Token ids of raw bytes. Valid UTF-8: encode_ordinary. Otherwise (tiktoken's guess at
        where the regex would split): the valid prefix is encoded, then its last piece and the
        invalid rest are merged as one piece."""
        if not isinstance(text, bytes):
            raise TypeError(f"text must be bytes, not {type(text).__name__}")
        try:
            return self._ordinary(text.decode("utf-8"))
        except UnicodeDecodeError as err:
            valid = err.start
        tokens, last = self._encode_with_last(text[:valid].decode("utf-8"), set())
        last = self._widen_last_piece(tokens, last)
        if tokens and last > 0:
            unstable = self.decode_bytes(tokens[len(tokens) - last:]) + text[valid:]
            del tokens[len(tokens) - last:]
        else:
            unstable = text[valid:]
        if unstable:
            tokens += self._core.encode_piece(unstable)
        return tokens

    # -- encoding internals ---------------------------------------------------------------------
    def _ordinary(self, text: str) -> list[int]:
        if self._splitter is None:
            return self._core.encode_ordinary(text)
        return self._core.encode_concat(self._splitter.pieces(text))

    def _encode(self, text: str, which: list[int]) -> list[int]:
        """Ids of `text`, the specials with indices `which` recognized (UnicodeEncodeError on
        lone surrogates)."""
        if not which:
            return self._ordinary(text)
        if self._splitter is None:
            return self._core.encode(text, which)
        out: list[int] = []
        for segment, special in self._segments(text, which):
            out += self._core.encode_concat(self._splitter.pieces(segment))
            if special is not None:
                out.append(special)
        return out

    def _encode_checked(self, text: str, allowed: AbstractSet[str], disallowed: frozenset) -> list[int]:
        _check_str(text, "each text")
        self._check_disallowed(text, disallowed)
        which = self._allowed_indices(allowed)
        try:
            return self._encode(text, which)
        except UnicodeEncodeError:
            return self._encode(_fix_surrogates(text), which)

    def _segments(self, text: str, which: list[int]) -> list[tuple[str, int | None]]:
        """`text` cut at the allowed specials: (text before, special id), ..., (rest, None). As
        tiktoken: the leftmost special occurrence; one that is not allowed is skipped by moving one
        character past where it starts."""
        allowed = {list(self._special_tokens)[k] for k in which}
        out, start, find = [], 0, 0
        while (m := self._special_regex.search(text, find)) is not None:
            if m.group() not in allowed:
                find = m.start() + 1
                continue
            out.append((text[start:m.start()], self._special_tokens[m.group()]))
            start = find = m.end()
        out.append((text[start:], None))
        return out

    def _pieces(self, text: str) -> list[bytes]:
        if self._splitter is not None:
            return [p.encode("utf-8") for p in self._splitter.pieces(text)]
        return _ext.cpp().bpe_split(text.encode("utf-8"), self._split)

    def _encode_with_last(self, text: str, allowed: AbstractSet[str]) -> tuple[list[int], int]:
        """(ids of `text`, how many of them the last piece gave: 0 when the text ends with a
        special token or has no pieces), as tiktoken's core computes it."""
        which = self._allowed_indices(allowed)
        tokens = self._encode(text, which)
        rest = self._segments(text, which)[-1][0] if which else text
        pieces = self._pieces(rest) if rest else []
        return tokens, len(self._core.encode_piece(pieces[-1])) if pieces else 0

    def _widen_last_piece(self, tokens: list[int], last: int) -> int:
        """tiktoken's fix for unstable splits: when the last piece is all spaces, tabs and
        newlines, the whitespace tokens before it count as unstable too."""
        def all_space(t):
            return t not in self._special_token_values and all(b in b" \n\t" for b in self._core.token_bytes(t))

        if last > 0 and all_space(tokens[len(tokens) - last]):
            while last < len(tokens) and all_space(tokens[len(tokens) - last - 1]):
                last += 1
        return last

    def _completions(self, unstable: bytes) -> list[list[int]]:
        """Every token sequence (cut once it covers len(unstable) bytes) that text starting with
        the bytes `unstable` may encode to, by tiktoken's brute force."""
        if not unstable:
            return []
        sorted_bytes = self._sorted_token_bytes
        found: dict[tuple[int, ...], None] = {}

        def starting_with(prefix: bytes):
            i = bisect.bisect_left(sorted_bytes, prefix)
            while i < len(sorted_bytes) and sorted_bytes[i].startswith(prefix):
                yield sorted_bytes[i]
                i += 1

        for tok in starting_with(unstable):
            found[(self._bytes_to_id[tok],)] = None
        for i in range(1, len(unstable)):
            prefix, suffix = unstable[:i], unstable[i:]
            for tok in starting_with(suffix):
                possibility = prefix + tok
                try:
                    encoded = self._ordinary(possibility.decode("utf-8"))
                except UnicodeDecodeError:
                    encoded = self._core.encode_piece(possibility)
                seq, covered = [], 0
                for t in encoded:
                    seq.append(t)
                    covered += len(self._core.token_bytes(t))
                    if covered >= len(unstable):
                        break
                found[tuple(seq)] = None
        if len(unstable) > 1:
            # A trailing whitespace character may split off when more text follows.
            ch, size = _decode_last_char(unstable)
            if size < len(unstable) and ch is not None and ch in _WHITE_SPACE:
                found[tuple(self._core.encode_piece(unstable[:-size]) + self._core.encode_piece(unstable[-size:]))] = None
        return [list(seq) for seq in found]

    @functools.cached_property
    def _bytes_to_id(self) -> dict[bytes, int]:
        """Bytes -> id of the ordinary (mergeable) tokens."""
        return {self._core.token_bytes(i): i for i in self._core.ids if i not in self._special_token_values}

    @functools.cached_property
    def _sorted_token_bytes(self) -> list[bytes]:
        return sorted(self._bytes_to_id)

    @functools.cached_property
    def _special_regex(self) -> re.Pattern:
        # Longest first, so that of two specials starting at one place the longer wins.
        names = sorted(self._special_tokens, key=len, reverse=True)
        return re.compile("|".join(map(re.escape, names)) if names else r"(?!)")

    @staticmethod
    def _batch_texts(text) -> list[str]:
        if isinstance(text, str):
            raise TypeError("text must be a sequence of str, not a str (use encode for one text)")
        texts = list(text)
        for i, t in enumerate(texts):
            _check_str(t, f"text[{i}]")
        return texts

    # -- decoding -------------------------------------------------------------------------------
    def decode_bytes(self, tokens: Sequence[int]) -> bytes:
        """Concatenated bytes of `tokens`; KeyError for an id that is not a token, OverflowError
        for one outside 0..2**32-1 (as tiktoken)."""
        return self._core.decode(tokens)

    def decode(self, tokens: Sequence[int], errors: str = "replace") -> str:
        """`decode_bytes` as str; `errors` as in bytes.decode ("strict" raises UnicodeDecodeError
        on a cut multi-byte character, "replace" gives U+FFFD)."""
        return self._core.decode(tokens).decode("utf-8", errors=errors)

    def decode_single_token_bytes(self, token: int) -> bytes:
        """Bytes of one token (special tokens included); KeyError if it is not a token."""
        token = operator.index(token)
        if not 0 <= token < 1 << 32:
            raise OverflowError(f"token id {token} is outside 0..2**32-1")
        try:
            return self._core.token_bytes(token)
        except KeyError:
            raise KeyError(str(token)) from None

    def decode_tokens_bytes(self, tokens: Sequence[int]) -> list[bytes]:
        return [self.decode_single_token_bytes(t) for t in tokens]

    def decode_with_offsets(self, tokens: Sequence[int]) -> tuple[str, list[int]]:
        """(text, offsets): offsets[i] is the index in text of the first character that holds
        bytes of tokens[i]. Raises UnicodeDecodeError if the bytes are not valid UTF-8."""
        token_bytes = self.decode_tokens_bytes(tokens)
        offsets, n_chars = [], 0
        for tb in token_bytes:
            # A token that starts inside a character belongs to the character already counted.
            offsets.append(max(0, n_chars - (0x80 <= tb[0] < 0xC0)))
            n_chars += sum(1 for b in tb if not 0x80 <= b < 0xC0)
        return b"".join(token_bytes).decode("utf-8", errors="strict"), offsets

    def decode_batch(self, batch: Sequence[Sequence[int]], *, errors: str = "replace",
                     num_threads: int = 8) -> list[str]:
        _check_threads(num_threads)
        return [self.decode(tokens, errors=errors) for tokens in batch]

    def decode_bytes_batch(self, batch: Sequence[Sequence[int]], *, num_threads: int = 8) -> list[bytes]:
        _check_threads(num_threads)
        return [self.decode_bytes(tokens) for tokens in batch]

    # -- vocabulary -----------------------------------------------------------------------------
    def token_byte_values(self) -> list[bytes]:
        """The bytes of every ordinary (mergeable) token, sorted."""
        return list(self._sorted_token_bytes)

    def mergeable_ranks(self) -> dict[bytes, int]:
        """bytes -> rank of the ordinary tokens (what tiktoken.Encoding takes); only for encodings
        with the tiktoken merge rule."""
        if self._mergeable_ranks is None:
            raise ValueError(f"encoding {self.name!r} merges by an explicit merges list (HF/GGUF), not by rank")
        return dict(self._bytes_to_id)

    def save_tiktoken(self, path: str | os.PathLike) -> None:
        """Write the mergeable ranks as a .tiktoken file ("base64 rank" lines)."""
        import base64

        with open(path, "w", encoding="ascii") as f:
            for tok, rank in sorted(self.mergeable_ranks().items(), key=lambda kv: kv[1]):
                f.write(f"{base64.b64encode(tok).decode()} {rank}\n")

    # -- pickling (and copy) --------------------------------------------------------------------
    def __getstate__(self) -> object:
        from pyllmops.tokenizer import registry

        if registry.is_registered(self):  # as tiktoken: a registered encoding pickles by name
            return self.name
        if self._recipe is not None:
            return {"recipe": self._recipe}
        return {"name": self.name, "pat_str": self._pat_str, "mergeable_ranks": self._mergeable_ranks,
                "special_tokens": self._special_tokens}

    def __setstate__(self, value: object) -> None:
        from pyllmops.tokenizer import registry

        if isinstance(value, str):
            self.__dict__ = registry.get_encoding(value).__dict__
        elif "recipe" in value:  # (function, args, kwargs[, attributes set after it])
            fn, args, kwargs, *attrs = value["recipe"]
            built = fn(*args, **kwargs)
            for extra in attrs:
                built.__dict__.update(extra)
            self.__dict__ = built.__dict__
        else:
            self.__init__(**value)


def _decode_last_char(data: bytes) -> tuple[str | None, int]:
    """The last UTF-8 character of `data` and its length in bytes; (None, 1) if the tail is not
    one valid character (bstr's decode_last_utf8, which tiktoken uses)."""
    start = len(data) - 1
    limit = max(0, len(data) - 4)
    while start > limit and 0x80 <= data[start] < 0xC0:
        start -= 1
    try:
        ch = data[start:].decode("utf-8")
    except UnicodeDecodeError:
        return None, 1
    return (ch, len(data) - start) if len(ch) == 1 else (None, 1)


@functools.lru_cache(maxsize=128)
def _string_regex(strings: frozenset) -> re.Pattern:
    return re.compile("|".join(map(re.escape, strings)))


def _raise_disallowed(token: str):
    raise DisallowedSpecialTokenError(
        f"the text contains the special token {token!r}, which is disallowed. To encode it as "
        f"the special token, pass allowed_special={{{token!r}}} (or \"all\"); to encode it as "
        f"plain text, pass disallowed_special=() (or leave {token!r} out of the set).")
