"""Sliding-window perplexity against a brute-force per-token computation; calibration windows."""
import math

import pytest
import torch

from pyllmops.models.evaluate import CALIB_SAMPLES, calibration_batches, default_calibration_text, perplexity, windows
from pyllmops.models.llama import Llama, LlamaConfig

TINY = LlamaConfig(vocab_size=61, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=48, max_seq_len=128)


@pytest.fixture
def model(seed):
    m = Llama(TINY).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0, 0.3)
    return m


def brute_force(model, ids, window, stride):
    """Each scored token's NLL from its own forward pass over exactly the context its window gives it."""
    nll, n = 0.0, 0
    for begin, end, first in windows(len(ids), window, stride):
        for pos in range(first, end):
            logits = model(ids[begin:pos][None]).double()[0, -1]
            nll -= torch.log_softmax(logits, -1)[ids[pos]].item()
            n += 1
    return math.exp(nll / n), n


@pytest.mark.parametrize("window,stride", [(16, 8), (16, 16), (10, 3), (64, 32)])
def test_perplexity_matches_brute_force(model, window, stride):
    ids = torch.randint(0, TINY.vocab_size, (45,))
    expected, _ = brute_force(model, ids, window, stride)
    assert perplexity(model, ids, window=window, stride=stride, batch_size=3) == pytest.approx(expected, rel=1e-5)


def test_windows_cover_each_token_once():
    for n, w, s in [(100, 16, 8), (100, 16, 5), (7, 16, 8), (33, 8, 8)]:
        scored = [p for _, e, f in windows(n, w, s) for p in range(f, e)]
        assert scored == sorted(set(scored))
        if s < w:
            assert scored == list(range(1, n))
        else:  # disjoint windows: all but each window's first token
            assert scored == [p for p in range(n) if p % s]


def test_perplexity_bad_inputs(model):
    with pytest.raises(ValueError, match="window"):
        perplexity(model, [1, 2, 3], window=1)
    with pytest.raises(ValueError, match="stride"):
        perplexity(model, [1, 2, 3], window=4, stride=5)
    with pytest.raises(ValueError, match="at least 2"):
        perplexity(model, [1], window=4)


class ByteTokenizer:
    def encode_ordinary(self, text):
        return list(text.encode())


def test_calibration_batches():
    text = default_calibration_text()
    # prose, and not the GPL the README's quality numbers are evaluated on
    assert len(text) > 100_000 and "General Public License" not in text
    batches = calibration_batches(ByteTokenizer(), text, n_samples=5, seq_len=100)
    assert len(batches) == 5 and all(b.shape == (1, 100) and b.dtype == torch.long for b in batches)
    assert len(calibration_batches(ByteTokenizer(), "short text", seq_len=100)) == 1
    # the default: up to CALIB_SAMPLES evenly spread windows, as many as the text holds
    assert len(calibration_batches(ByteTokenizer(), "ab" * 1000, seq_len=100)) == 20
    assert len(calibration_batches(ByteTokenizer(), "ab" * 10**5, seq_len=100)) == CALIB_SAMPLES
    assert len(default_calibration_text(1000)) == 1000 and len(text) > 60_000  # no cut by default
    with pytest.raises(ValueError, match="2 tokens"):
        calibration_batches(ByteTokenizer(), "x")
