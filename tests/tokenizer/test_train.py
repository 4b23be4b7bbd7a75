"""train_bpe: ranks the encoder loads, identical ids through tiktoken, deterministic."""
import pytest

from tests.tokenizer import _data


@pytest.fixture(scope="module")
def corpus():
    text = _data.real_text(400_000)
    return [text[i:i + 20_000] for i in range(0, len(text), 20_000)]


@pytest.mark.parametrize("pattern", ["cl100k_base", "o200k_base", "r50k_base"])
def test_trained_ranks_match_tiktoken(corpus, pattern, seed):
    tiktoken = pytest.importorskip("tiktoken")
    from pyllmops.tokenizer import train_bpe
    from pyllmops.tokenizer._splits import PATTERNS, split_of

    enc = train_bpe(corpus, vocab_size=1500, pattern=pattern, special_tokens=["<|endoftext|>", "<|pad|>"])
    assert enc.n_vocab == 1500
    ranks = enc.mergeable_ranks()
    assert len(ranks) == 1498 and sorted(ranks.values()) == list(range(1498))
    assert enc.special_tokens == {"<|endoftext|>": 1498, "<|pad|>": 1499}
    ref = tiktoken.Encoding("trained", pat_str=PATTERNS[split_of(pattern)], mergeable_ranks=ranks,
                            special_tokens=enc.special_tokens)
    text = _data.real_text(1 << 20)[-200_000:] + _data.adversarial_text(seed, 3000) + "<|endoftext|>"
    assert enc.encode(text, allowed_special="all") == ref.encode(text, allowed_special="all")
    # Training compresses its own corpus well below one token per byte.
    ids = enc.encode_ordinary(corpus[0])
    assert len(ids) < 0.45 * len(corpus[0].encode())


def test_deterministic_and_roundtrip(corpus, tmp_path):
    from pyllmops.tokenizer import load_tiktoken, train_bpe

    a = train_bpe(corpus[:5], vocab_size=600, pattern="cl100k_base")
    b = train_bpe(list(corpus[:5]), vocab_size=600, pattern="cl100k_base")
    assert a.mergeable_ranks() == b.mergeable_ranks()
    path = tmp_path / "trained.tiktoken"
    a.save_tiktoken(path)
    c = load_tiktoken(path, "cl100k_base")
    assert c.encode_ordinary(corpus[6]) == a.encode_ordinary(corpus[6])


def test_first_merge_is_most_frequent_pair():
    from collections import Counter

    from pyllmops import _ext
    from pyllmops.tokenizer import train_bpe

    texts = ["low lower lowest newer wider " * 3, "the then there " * 2]
    enc = train_bpe(texts, vocab_size=257, pattern="r50k", special_tokens=())
    pieces = [p for t in texts for p in _ext.cpp().bpe_split(t.encode(), "r50k")]
    pairs = Counter(p[i:i + 2] for p in pieces for i in range(len(p) - 1))
    top = max(pairs.values())
    best = min(k for k, v in pairs.items() if v == top)  # ties: smaller (left, right) byte
    assert enc.decode_single_token_bytes(256) == best


def test_bad_arguments():
    from pyllmops.tokenizer import train_bpe

    with pytest.raises(ValueError, match="vocab_size"):
        train_bpe(["abc"], vocab_size=100)
    with pytest.raises(TypeError, match="texts\\[1\\]"):
        train_bpe(["abc", b"x"], vocab_size=300)
    with pytest.raises(ValueError, match="unsupported pre-tokenizer"):
        train_bpe(["abc"], vocab_size=300, pattern=r"\w+")


def test_gpt2_digits_split_trains_pickles_and_saves(corpus, tmp_path):
    """gpt2_digits (no single regex) still trains; the Encoding pickles and exports its ranks."""
    import pickle

    from pyllmops.tokenizer import train_bpe

    enc = train_bpe(corpus[:3], vocab_size=400, pattern="gpt2_digits")
    assert enc.split == "gpt2_digits"
    text = "year 2024 <|endoftext|>" + corpus[3][:2000]
    ids = enc.encode(text, allowed_special="all")
    assert [enc.decode([t]) for t in enc.encode_ordinary("x 2024")][-4:] == ["2", "0", "2", "4"]
    assert pickle.loads(pickle.dumps(enc)).encode(text, allowed_special="all") == ids
    enc.save_tiktoken(tmp_path / "d.tiktoken")
    assert len((tmp_path / "d.tiktoken").read_text().splitlines()) == len(enc.mergeable_ranks()) == 399
