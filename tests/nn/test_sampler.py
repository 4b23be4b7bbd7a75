import torch

import pyllmops
from pyllmops.nn import Sampler


def test_sampler_matches_sample(seed):
    x = torch.randn(5, 300)
    s = Sampler(temperature=0.8, top_k=40, top_p=0.9, min_p=0.01, seed=seed)
    ids = s(x, offset=4)
    assert ids.dtype == torch.int64 and ids.shape == (5,)
    assert torch.equal(ids, pyllmops.sample(x, 0.8, 40, 0.9, 0.01, seed=seed, offset=4))


def test_sampler_steps_its_own_offset():
    x = torch.randn(1, 50).expand(64, -1)
    s = Sampler(seed=torch.zeros(64, dtype=torch.int64))  # identical rows and seeds: only the step varies
    first, second = s(x), s(x)
    assert s.step == 2
    assert torch.equal(first, pyllmops.sample(x, seed=torch.zeros(64, dtype=torch.int64), offset=0))
    assert torch.equal(second, pyllmops.sample(x, seed=torch.zeros(64, dtype=torch.int64), offset=1))
    assert first.unique().numel() == 1 and second.unique().numel() == 1  # same logits, seed, offset: same token


def test_sampler_per_row_buffers_and_greedy():
    x = torch.randn(3, 20)
    t = torch.tensor([0.0, 0.0, 0.0])
    s = Sampler(temperature=t, top_p=torch.tensor([0.5, 0.9, 1.0]))
    assert "temperature" in dict(s.named_buffers())
    assert torch.equal(s(x), x.argmax(-1))
    assert Sampler(temperature=0).greedy and "top_p=1.0" in repr(Sampler())
