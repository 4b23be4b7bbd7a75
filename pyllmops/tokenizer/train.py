"""`train_bpe`: learn a byte-level BPE vocabulary (C++ trainer, csrc/bpe/trainer.cpp)."""
from __future__ import annotations

from collections.abc import Iterable, Sequence

from pyllmops import _ext
from pyllmops.tokenizer._splits import GPT2_DIGITS, split_of
from pyllmops.tokenizer.encoding import Encoding


def train_bpe(texts: Iterable[str], vocab_size: int, pattern: str = "cl100k_base",
              special_tokens: Sequence[str] = ("<|endoftext|>",), name: str = "trained") -> Encoding:
    """Train on `texts` until the vocabulary has `vocab_size` tokens (256 bytes + merges + the
    special tokens, which take the last ids), or until no pair is left to merge.

    pattern: how text is split before merging — a split name, encoding name or supported regex
    (see pyllmops.tokenizer._splits). Deterministic: the most frequent pair merges first, ties
    to the pair of smaller ranks. The result uses tiktoken's rank rule, so
    `tiktoken.Encoding(..., mergeable_ranks=enc.mergeable_ranks(), ...)` gives the same ids."""
    texts = list(texts)
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise TypeError(f"texts[{i}] must be str, not {type(t).__name__}")
    specials = list(dict.fromkeys(special_tokens))
    for s in specials:
        if not isinstance(s, str) or not s:
            raise ValueError(f"special tokens must be non-empty str, got {s!r}")
    if not isinstance(vocab_size, int) or vocab_size < 256 + len(specials):
        raise ValueError(f"vocab_size must be an int >= 256 + {len(specials)} special tokens, got {vocab_size!r}")
    split = split_of(pattern)
    tokens = _ext.cpp().bpe_train(texts, vocab_size - len(specials), split)
    ranks = {t: i for i, t in enumerate(tokens)}
    return ranks_encoding(name, ranks, split, {s: len(tokens) + k for k, s in enumerate(specials)})


def ranks_encoding(name: str, ranks: dict[bytes, int], split: str, special_tokens: dict[str, int]) -> Encoding:
    """An Encoding with tiktoken's rank rule on a split name, gpt2_digits (no single regex) included."""
    if split != GPT2_DIGITS:
        return Encoding.from_ranks(ranks, split, special_tokens, name=name)
    core = _ext.cpp().BpeEncoder.from_ranks(list(ranks), list(ranks.values()), split,
                                            [(s.encode("utf-8"), i) for s, i in special_tokens.items()])
    return Encoding._from_core(name, core, special_tokens, split, eot_token=None, mergeable_ranks=ranks,
                               recipe=(ranks_encoding, (name, ranks, split, special_tokens), {}))
