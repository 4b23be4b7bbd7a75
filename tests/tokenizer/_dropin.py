"""Shared checks for the tiktoken drop-in tests: run one call on ours and on tiktoken, and
require the same result or the same exception type; hypothesis strategies for text and ids."""
from __future__ import annotations

import os

import numpy as np
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

# Modest example counts keep CI short; PYLLMOPS_HYPOTHESIS_EXAMPLES=2000 runs a deeper search.
SETTINGS = settings(max_examples=int(os.environ.get("PYLLMOPS_HYPOTHESIS_EXAMPLES", "40")), deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                           HealthCheck.data_too_large])

SPECIALS = ["<|endoftext|>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|endofprompt|>"]
_PIECES = ["'s", "'LL", " ", "  ", "\n", "\r\n", "\n  ", " \n\t", "\t", "123456", "don't", "HTTPServer", "\u00e9",
           "e\u0301", "\u4e2d\u6587", "\U0001F468\u200d\U0001F469", "\u00a0", "//", "?!", "<|", "|>", "<|endoftext"]


def texts(surrogates: bool = True, alphabet=None) -> st.SearchStrategy[str]:
    """Random text: any code point (or `alphabet`), lone surrogates, special-token strings and
    pieces that exercise the splits, in runs."""
    chars = alphabet if alphabet is not None else st.characters(exclude_categories=("Cs",))
    parts = [st.text(chars, max_size=12), st.sampled_from(SPECIALS), st.sampled_from(_PIECES)]
    if surrogates:
        parts.append(st.characters(categories=("Cs",)))
    return st.lists(st.one_of(*parts), max_size=24).map("".join)


def token_lists(valid: list[int], max_size: int = 40) -> st.SearchStrategy[list[int]]:
    return st.lists(st.integers(0, len(valid) - 1).map(valid.__getitem__), max_size=max_size)


def _normal(x):
    if isinstance(x, np.ndarray):
        return ("ndarray", str(x.dtype), x.tolist())
    if isinstance(x, tuple) and len(x) == 2 and isinstance(x[1], list) and x[1] and isinstance(x[1][0], list):
        return (x[0], sorted(map(tuple, x[1])))  # encode_with_unstable: the completions are a set
    return x


def same(ours_call, ref_call, what: str = ""):
    """Both calls return equal results (type included), or both raise, ours an instance of the
    type tiktoken raised."""
    try:
        want = ref_call()
    except Exception as err:  # noqa: BLE001 (the type is what is compared)
        try:
            got = ours_call()
        except Exception as ours_err:  # noqa: BLE001
            assert isinstance(ours_err, type(err)), f"{what}: tiktoken raised {err!r}, ours {ours_err!r}"
            return None
        raise AssertionError(f"{what}: tiktoken raised {err!r}, ours returned {got!r}") from None
    got = ours_call()
    assert type(got) is type(want), f"{what}: type {type(got)} != tiktoken's {type(want)}"
    assert _normal(got) == _normal(want), f"{what}: {got!r} != tiktoken's {want!r}"
    return got


def valid_ids(ref) -> list[int]:
    out = []
    for t in range(ref.max_token_value + 1):
        try:
            ref.decode_single_token_bytes(t)
        except KeyError:
            continue
        out.append(t)
    return out
