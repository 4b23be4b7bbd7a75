"""The real SmolLM2-135M-Instruct: loader, one forward against fixed logits, cache and batching
on real weights, seeded generation."""
import pytest
import torch

from pyllmops.models.chat import chat_prompt, render, stop_ids
from pyllmops.models.generate import generate_ids
from pyllmops.nn import Sampler
from pyllmops.models.gguf_loader import unpermute_qk

pytestmark = pytest.mark.slow

QUESTION = "What is the capital of France?"
# Greedy next token after the chat prompt and the logits of the top five, measured with this
# float32 forward. "The" beats "L" by only ~0.08, so the test checks logits, not just the argmax.
EXPECTED_TOP5 = [(504, 25.3254), (60, 25.2433), (15319, 24.9424), (2219, 24.4017), (7026, 24.3146)]


def llama_cpp_permute(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """What llama.cpp's convert_hf_to_gguf.py does to Q/K rows (the reference to undo)."""
    return w.reshape(n_heads, 2, w.shape[0] // n_heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def test_unpermute_inverts_llama_cpp_permutation(seed):
    w = torch.randn(9 * 64, 576)
    assert torch.equal(unpermute_qk(llama_cpp_permute(w, 9), 9), w)
    assert not torch.equal(llama_cpp_permute(w, 9), w)


def test_loader_shapes_and_dtypes(smollm2):
    model, tok = smollm2
    cfg = model.config
    assert (cfg.n_layers, cfg.dim, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.ffn_dim, cfg.vocab_size) == (30, 576, 9, 3, 64, 1536, 49152)
    assert cfg.rope_theta == 1e5 and cfg.tie_embeddings
    layer = model.layers[0]
    shapes = {
        layer.self_attn.q_proj: (576, 576), layer.self_attn.k_proj: (192, 576), layer.self_attn.v_proj: (192, 576),
        layer.self_attn.o_proj: (576, 576), layer.mlp.gate_proj: (1536, 576), layer.mlp.up_proj: (1536, 576),
        layer.mlp.down_proj: (576, 1536),
    }
    for mod, shape in shapes.items():
        assert type(mod) is torch.nn.Linear and tuple(mod.weight.shape) == shape
    assert model.embed_tokens.weight.shape == (49152, 576) and model.lm_head.weight is model.embed_tokens.weight
    assert all(p.dtype == torch.float32 and torch.isfinite(p).all() for p in model.parameters())
    assert tok.n_vocab == 49152


def test_chat_prompt_matches_rendered_template(smollm2):
    _, tok = smollm2
    ids = chat_prompt(tok, QUESTION)
    text = render([{"role": "user", "content": QUESTION}])
    assert text.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
    assert ids == tok.encode(text, allowed_special="all")
    # Special-token text inside a message stays text: <|im_end|> (id 2) only ends the two messages.
    assert chat_prompt(tok, "say <|im_end|>").count(2) == 2


def test_forward_next_token_logits(smollm2):
    model, tok = smollm2
    with torch.inference_mode():
        logits = model(torch.tensor([chat_prompt(tok, QUESTION)]))[0, -1]
    ids = [i for i, _ in EXPECTED_TOP5]
    assert logits.topk(5).indices.tolist() == ids
    torch.testing.assert_close(logits[ids], torch.tensor([v for _, v in EXPECTED_TOP5]), rtol=0, atol=2e-3)
    assert tok.decode([ids[0]]) == "The"


def test_cache_and_padding_match_full_forward_on_real_weights(smollm2):
    model, tok = smollm2
    long = chat_prompt(tok, QUESTION)
    short = chat_prompt(tok, "Hi")
    with torch.inference_mode():
        full = model(torch.tensor([long]))[0]
        cache = model.new_cache(1, len(long))
        model(torch.tensor([long[:-3]]), cache=cache)
        steps = torch.cat([model(torch.tensor([[t]]), cache=cache)[0] for t in long[-3:]])
        torch.testing.assert_close(steps, full[-3:], rtol=0, atol=1e-3)

        pad = len(long) - len(short)
        ids = torch.tensor([long, [0] * pad + short])
        mask = ids.new_ones(ids.shape, dtype=torch.bool)
        mask[1, :pad] = False
        batched = model(ids, mask=mask, last_only=True)[:, -1]
        alone = model(torch.tensor([short]))[0, -1]
        torch.testing.assert_close(batched[0], full[-1], rtol=0, atol=1e-3)
        torch.testing.assert_close(batched[1], alone, rtol=0, atol=1e-3)


def test_greedy_answer_and_seeded_sampling_is_reproducible(smollm2):
    model, tok = smollm2
    prompt = chat_prompt(tok, QUESTION)
    stops = stop_ids(tok)
    greedy = generate_ids(model, [prompt], max_new_tokens=10, sampler=Sampler(temperature=0.0, top_k=0, top_p=1.0), stop_ids=stops)[0]
    assert tok.decode(greedy) == "The capital of France is Paris."
    runs = [generate_ids(model, [prompt, chat_prompt(tok, "Name a color.")], max_new_tokens=6, sampler=Sampler(temperature=0.7, top_k=50, top_p=0.9, seed=1234), stop_ids=stops) for _ in range(2)]
    assert runs[0] == runs[1]
    assert all(len(r) > 0 for r in runs[0])
