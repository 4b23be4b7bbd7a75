"""The package's o200k split against tiktoken's definition of it: tests/reference.py writes the
pattern out, and the package's copy and its C++ scanner are checked against that (the tiktoken
Encoding of the exactness tests is built from it too), never against themselves."""
import unicodedata

import pytest

from pyllmops import _ext
from pyllmops.tokenizer import _splits
from tests import reference
from tests.tokenizer import _data


def test_package_pattern_is_tiktokens():
    assert _splits.O200K_PATTERN == reference.O200K_PATTERN
    assert _splits.split_of(reference.O200K_PATTERN) == "o200k"
    assert _splits.ENCODINGS["o200k_base"][1] == reference.O200K_SPECIAL_TOKENS


def test_scanner_splits_like_tiktokens_pattern(seed):
    """The C++ scanner's o200k pieces are the `regex` matches of tiktoken's pattern on adversarial
    text (code points assigned in Python 3.11's Unicode 14, as test_exact's split test explains)."""
    regex = pytest.importorskip("regex")
    text = "".join(c for c in _data.adversarial_text(seed, 5000) if unicodedata.category(c) != "Cn")
    ours = [p.decode() for p in _ext.cpp().bpe_split(text.encode(), "o200k")]
    assert ours == regex.findall(reference.O200K_PATTERN, text), f"seed {seed}"
