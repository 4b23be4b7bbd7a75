"""A tiny Llama-shaped model (same module names as pyllmops.models' Llama) for the quantizer
tests: RMSNorm -> q/k/v -> o, RMSNorm -> gate/up -> down, residuals, no attention mixing across
tokens (the tests care about the linears, not attention)."""
import torch
from torch import nn


class RMSNorm(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * self.weight


class Attn(nn.Module):
    def __init__(self, dim, kv_dim):
        super().__init__()
        self.q_proj, self.k_proj = nn.Linear(dim, dim, bias=False), nn.Linear(dim, kv_dim, bias=False)
        self.v_proj, self.o_proj = nn.Linear(dim, kv_dim, bias=False), nn.Linear(dim, dim, bias=False)
        self.rep = dim // kv_dim

    def forward(self, x):
        gate = torch.sigmoid((self.q_proj(x) * self.k_proj(x).repeat_interleave(self.rep, -1)).mean(-1, keepdim=True))
        return self.o_proj(gate * self.v_proj(x).repeat_interleave(self.rep, -1))


class MLP(nn.Module):
    def __init__(self, dim, ffn):
        super().__init__()
        self.gate_proj, self.up_proj = nn.Linear(dim, ffn, bias=False), nn.Linear(dim, ffn, bias=False)
        self.down_proj = nn.Linear(ffn, dim, bias=False)

    def forward(self, x):
        return self.down_proj(nn.functional.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    def __init__(self, dim, kv_dim, ffn):
        super().__init__()
        self.input_layernorm, self.post_attention_layernorm = RMSNorm(dim), RMSNorm(dim)
        self.self_attn, self.mlp = Attn(dim, kv_dim), MLP(dim, ffn)

    def forward(self, x, scale=1.0):
        x = x + self.self_attn(self.input_layernorm(x)) * scale
        return x + self.mlp(self.post_attention_layernorm(x))


class ToyLlama(nn.Module):
    def __init__(self, vocab=64, dim=64, kv_dim=32, ffn=128, n_layers=2):
        super().__init__()
        self.embed_tokens = nn.Embedding(vocab, dim)
        self.layers = nn.ModuleList(Block(dim, kv_dim, ffn) for _ in range(n_layers))
        self.norm = RMSNorm(dim)
        self.lm_head = nn.Linear(dim, vocab, bias=False)

    def forward(self, ids):
        x = self.embed_tokens(ids)
        for layer in self.layers:
            x = layer(x, scale=1.0)
        return self.lm_head(self.norm(x))


def toy_model(seed_outliers: bool = True, **kw) -> ToyLlama:
    """Weights with a few outlier input channels in the norms (what AWQ/GPTQ exploit)."""
    model = ToyLlama(**kw)
    with torch.no_grad():
        for layer in model.layers:
            for norm in (layer.input_layernorm, layer.post_attention_layernorm):
                norm.weight.normal_(1.0, 0.1)
                if seed_outliers:
                    idx = torch.randperm(norm.weight.numel())[:3]
                    norm.weight[idx] *= 20
    return model
