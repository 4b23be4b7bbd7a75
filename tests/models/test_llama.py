"""The Llama module on a tiny random config: KV-cache decode, padding and GQA attention against
a plain full forward (fast; the real model is tested in test_smollm2.py)."""
import pytest
import torch

from pyllmops.models.llama import Llama, LlamaConfig
from tests import reference

TINY = LlamaConfig(vocab_size=97, dim=48, n_layers=2, n_heads=6, n_kv_heads=2, ffn_dim=80, rope_theta=1e4, max_seq_len=64)


@pytest.fixture
def model(seed):
    m = Llama(TINY).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0, 0.2)
    return m


def test_full_forward_matches_float64_reference(model):
    ids = torch.randint(0, TINY.vocab_size, (1, 23))
    got = model(ids)
    assert got.dtype == torch.float32 and got.shape == (1, 23, TINY.vocab_size)
    torch.testing.assert_close(got.double(), reference.llama_forward(model, ids), rtol=1e-4, atol=1e-4)


def test_kv_cache_decode_equals_full_forward(model):
    ids = torch.randint(0, TINY.vocab_size, (2, 20))
    full = model(ids)
    cache = model.new_cache(2, 32)
    steps = [model(ids[:, :9], cache=cache)]  # prefill
    steps.append(model(ids[:, 9:12], cache=cache))  # a chunk on top of a cache
    steps += [model(ids[:, i:i + 1], cache=cache) for i in range(12, 20)]  # one token at a time
    torch.testing.assert_close(torch.cat(steps, 1), full, rtol=1e-4, atol=1e-4)
    assert cache.length == 20


def test_float16_kv_cache(model):
    """A float16 cache holds k and v rounded to nearest even (after a prefill, layer 0's are the
    float32 cache's values .half(), bit for bit; later layers see inputs that attention over
    rounded values moved), attention reads them back as float32, and decoding stays within
    float16 rounding of the float32 cache's logits (but not equal to them: the rounding happens)."""
    ids = torch.randint(0, TINY.vocab_size, (2, 20))
    c32, c16 = model.new_cache(2, 32), model.new_cache(2, 32, dtype=torch.float16)
    with torch.inference_mode():
        a, b = [model(ids[:, :9], cache=c32)], [model(ids[:, :9], cache=c16)]
    assert all(t.dtype == torch.float16 for t in c16.k + c16.v)
    assert torch.equal(c16.k[0], c32.k[0].half()) and torch.equal(c16.v[0], c32.v[0].half())
    with torch.inference_mode():
        for i in range(9, 20):
            a.append(model(ids[:, i:i + 1], cache=c32))
            b.append(model(ids[:, i:i + 1], cache=c16))
    a, b = torch.cat(a, 1), torch.cat(b, 1)
    torch.testing.assert_close(b, a, rtol=5e-3, atol=5e-3 * float(a.abs().max()))
    assert not torch.equal(a, b)
    with pytest.raises(ValueError, match="dtype"):
        model.new_cache(1, 4, dtype=torch.bfloat16)


def test_left_padded_batch_equals_each_prompt_alone(model):
    prompts = [torch.randint(0, TINY.vocab_size, (n,)) for n in (7, 3, 11)]
    longest = max(len(p) for p in prompts)
    ids = torch.zeros(len(prompts), longest, dtype=torch.long)
    mask = torch.zeros_like(ids, dtype=torch.bool)
    for row, p in enumerate(prompts):
        ids[row, longest - len(p):], mask[row, longest - len(p):] = p, True
    cache = model.new_cache(len(prompts), longest + 4)
    batched = [model(ids, mask=mask, cache=cache, last_only=True)]
    nxt = torch.randint(0, TINY.vocab_size, (len(prompts), 4))
    batched += [model(nxt[:, i:i + 1], cache=cache) for i in range(4)]
    no_cache = model(ids, mask=mask)  # padding without a cache too
    for row, p in enumerate(prompts):
        alone = model(torch.cat([p, nxt[row]])[None])
        torch.testing.assert_close(batched[0][row, -1], alone[0, len(p) - 1], rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(no_cache[row, -1], alone[0, len(p) - 1], rtol=1e-4, atol=1e-4)
        for i in range(4):
            torch.testing.assert_close(batched[1 + i][row, 0], alone[0, len(p) + i], rtol=1e-4, atol=1e-4)


def test_projections_are_plain_linears_with_hf_names(model):
    names = {n for n, m in model.named_modules() if type(m) is torch.nn.Linear}
    for part in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"):
        assert f"layers.1.{part}" in names
    assert model.lm_head.weight is model.embed_tokens.weight


def test_linear_factory_builds_every_projection(seed):
    built = []

    def factory(i, o):
        built.append((i, o))
        return torch.nn.Linear(i, o, bias=False)

    Llama(TINY, factory)
    assert len(built) == 7 * TINY.n_layers


def test_bad_inputs(model):
    with pytest.raises(ValueError, match="ids"):
        model(torch.zeros(5, dtype=torch.long))
    cache = model.new_cache(1, 4)
    with pytest.raises(ValueError, match="capacity"):
        model(torch.zeros(1, 5, dtype=torch.long), cache=cache)
    with pytest.raises(ValueError, match="capacity"):
        model.new_cache(1, TINY.max_seq_len + 1)
