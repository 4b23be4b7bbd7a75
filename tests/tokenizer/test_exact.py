"""Token ids identical to tiktoken (cl100k_base, o200k_base) on real and adversarial text."""
import pytest

from tests.tokenizer import _data


def _first_diff(ours, ref, a, b):
    i = next(i for i, (x, y) in enumerate(zip(a, b)) if x != y) if a[:len(b)] != b[:len(a)] else min(len(a), len(b))
    return (f"first difference at token {i}: ours {[ours.decode_single_token_bytes(t) for t in a[i:i + 4]]} "
            f"tiktoken {[ref.decode_single_token_bytes(t) for t in b[i:i + 4]]}")


def test_real_text(pair, real_text):
    ours, ref = pair
    a, b = ours.encode(real_text), ref.encode(real_text)
    assert a == b, _first_diff(ours, ref, a, b)
    assert ours.decode(a) == real_text


def test_adversarial_text(pair, seed):
    ours, ref = pair
    text = _data.adversarial_text(seed, 20000)
    a, b = ours.encode_ordinary(text), ref.encode_ordinary(text)
    assert a == b, f"seed {seed}: " + _first_diff(ours, ref, a, b)
    assert ours.decode(a) == text
    assert ours.decode_bytes(a) == text.encode()


@pytest.mark.slow
@pytest.mark.parametrize("context", ["{}'ve", "a{}'Ve", "A{}b\r\n", "1{}\u0301"])
def test_every_code_point(pair, context):
    """Each code point in contexts where its class decides the split: e.g. "X've" splits X|'ve
    when X is a letter, number or space, X'|ve when it is 'other'. All of planes 0-3 and 14 (every
    assigned code point), every 61st of the unassigned planes 4-13 and private-use planes 15-16."""
    ours, ref = pair
    cps = [c for c in range(0x110000) if not 0xD800 <= c <= 0xDFFF and (c < 0x40000 or c >> 16 == 14 or c % 61 == 0)]
    for lo in range(0, len(cps), 1 << 16):
        text = "|".join(context.format(chr(c)) for c in cps[lo:lo + (1 << 16)])
        if ours.encode_ordinary(text) != ref.encode_ordinary(text):
            bad = next(c for c in cps[lo:lo + (1 << 16)]
                       if ours.encode_ordinary(context.format(chr(c))) != ref.encode_ordinary(context.format(chr(c))))
            pytest.fail(f"code point U+{bad:04X} in {context!r}")


def test_splits_match_regex_module(seed):
    """The scanner's pieces equal the `regex` package's findall with the same pattern, on
    adversarial text restricted to code points assigned by Unicode 14 (Python 3.11's unicodedata):
    `regex` follows a newer Unicode than the 16.0 tables tiktoken and we use."""
    import unicodedata

    regex = pytest.importorskip("regex")
    from pyllmops import _ext
    from pyllmops.tokenizer._splits import PATTERNS

    text = _data.adversarial_text(seed, 5000)
    text = "".join(c for c in text if unicodedata.category(c) != "Cn")
    for split, pat in PATTERNS.items():
        ours = [p.decode() for p in _ext.cpp().bpe_split(text.encode(), split)]
        assert ours == regex.findall(pat, text), f"{split}, seed {seed}"


@pytest.mark.parametrize("text", [
    "", " ", "\n", "\r\n", "a", "'s", "'S", "'\u017f", "don't", "I'LL", "  \n  ", "   x", "\t\ta", "12345678",
    "\U0001F468\u200d\U0001F469\u200d\U0001F467", "e\u0301\u0301", "\u0301a", "HTTPServer's", "a/b//c\n/",
    "x" * 300, " " * 300, "\n" * 300, "\u00e9" * 300,
])
def test_edge_cases(pair, text):
    ours, ref = pair
    assert ours.encode_ordinary(text) == ref.encode_ordinary(text)


def test_lone_surrogates_replaced_like_tiktoken(pair):
    ours, ref = pair
    text = "a\ud800b\udfffc"
    assert ours.encode(text) == ref.encode(text)
    assert ours.decode(ours.encode(text)) == "a\ufffdb\ufffdc"


def test_long_pieces_heap_path(pair, seed):
    """Pieces past the O(n^2) cut-off (128 bytes) take the heap merge: same ids as tiktoken."""
    import random

    ours, ref = pair
    rng = random.Random(seed)
    for _ in range(5):
        word = "".join(rng.choice("abcdeéz") for _ in range(rng.randint(129, 3000)))
        assert ours.encode_ordinary(word) == ref.encode_ordinary(word)
        raw = bytes(rng.randrange(256) for _ in range(rng.randint(129, 3000)))
        assert ours._core.encode_piece(raw) == ref._core_bpe.encode_single_piece(raw)
