"""The bundled Llama as a transformers Llama checkpoint: its config both ways, registered with
pyllmops.quant.methods.checkpoint so that save_quantized writes it and load_quantized builds it
(when transformers is not installed). Tensor names are the transformers ones minus "model."."""
from __future__ import annotations

from typing import Optional

from pyllmops.models.llama import Llama, LlamaConfig
from pyllmops.quant.methods.checkpoint import ModelKind, register_model


def to_hf_config(model: Llama) -> dict:
    """A transformers LlamaConfig dict for the model's LlamaConfig."""
    cfg = model.config
    return {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": cfg.vocab_size,
            "hidden_size": cfg.dim, "intermediate_size": cfg.ffn_dim, "num_hidden_layers": cfg.n_layers,
            "num_attention_heads": cfg.n_heads, "num_key_value_heads": cfg.n_kv_heads, "head_dim": cfg.head_dim,
            "hidden_act": "silu", "rms_norm_eps": cfg.norm_eps, "rope_theta": cfg.rope_theta,
            "max_position_embeddings": cfg.max_seq_len, "tie_word_embeddings": cfg.tie_embeddings,
            "attention_bias": False, "mlp_bias": False, "torch_dtype": "float32"}


def from_hf_config(config: dict) -> Optional[Llama]:
    """An empty Llama for a plain transformers Llama config; None for anything this Llama cannot
    express (biases, other activations, RoPE scaling, a head_dim that is not dim / heads)."""
    heads = config.get("num_attention_heads")
    if (config.get("model_type") != "llama" or config.get("attention_bias") or config.get("mlp_bias")
            or config.get("hidden_act", "silu") != "silu" or config.get("rope_scaling") or not heads
            or config.get("head_dim", config["hidden_size"] // heads) != config["hidden_size"] // heads):
        return None
    cfg = LlamaConfig(vocab_size=config["vocab_size"], dim=config["hidden_size"], n_layers=config["num_hidden_layers"],
                      n_heads=heads, n_kv_heads=config.get("num_key_value_heads", heads),
                      ffn_dim=config["intermediate_size"], rope_theta=float(config.get("rope_theta", 10000.0)),
                      norm_eps=float(config.get("rms_norm_eps", 1e-6)),
                      max_seq_len=int(config.get("max_position_embeddings", 2048)),
                      tie_embeddings=bool(config.get("tie_word_embeddings", False)))
    return Llama(cfg)


register_model(ModelKind(Llama, to_hf_config, from_hf_config, prefix="model.", unprefixed=("lm_head",)))
