"""Storage formats for weight-only quantized linear layers, and converters to the layouts that
GPTQ and AWQ checkpoints use on disk.

Internal layout (what the w4a16 kernels read), `Int4Weight`, for a linear layer with weight
W [N, K] (N output features, K input features):

    qweight [N, K/2] uint8   two values per byte along K: byte j of row n holds k = 2j in its low
                             nibble and k = 2j + 1 in its high nibble (K must be even). 3-bit
                             (and 2-bit) values use the same 4-bit container.
    scales  [N, G] float     one scale per output row and group (fp32, fp16 or bf16).
    zeros   [N, G] uint8     integer zero points (asymmetric); symmetric quantization stores
                             2**(bits-1), so both share one format.
    g_idx   [K] int32 | None group of each input channel; None means k // group_size. GPTQ's
                             act-order (desc_act) gives an arbitrary g_idx.

    W[n, k] = (q[n, k] - zeros[n, g(k)]) * scales[n, g(k)]

Groups: `group_size` consecutive input channels share a scale and zero; G = ceil(K / group_size).
When group_size does not divide K the LAST GROUP IS RAGGED (shorter): K = 576 with group 128 has
G = 5 groups, the fifth of 64 channels. Nothing is padded in the stored tensors; backends that
need divisibility pad internally or decline (see pyllmops/ops/weight_only.py).
Per-channel quantization is group_size = -1, stored as group_size = K (G = 1).

W8A16, `Int8Weight`: qweight [N, K] int8, symmetric per output channel, scales [N] float;
W[n, k] = q[n, k] * scales[n].

GPTQ layout (AutoGPTQ / GPTQModel checkpoints), for bits in {2, 4, 8}, pack = 32 // bits:
    qweight [K/pack, N] int32   packed along K: bits [b*i, b*i + b) of qweight[r, n] = q[n, pack*r + i]
    qzeros  [G, N/pack] int32   packed along N the same way; version 1 (the common format) stores
                                zero - 1, version 2 stores zero
    scales  [G, N] fp16
    g_idx   [K] int32
AWQ layout (AutoAWQ GEMM checkpoints), 4-bit only:
    qweight [K, N/8] int32      packed along N; nibble i of qweight[k, c] holds column
                                8c + AWQ_ORDER[i] with AWQ_ORDER = [0, 2, 4, 6, 1, 3, 5, 7]
    qzeros  [G, N/8] int32      same packing, zero stored as is
    scales  [G, N] fp16
Conversions are exact both ways (scales keep their dtype).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Optional

import torch

AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)


def num_groups(in_features: int, group_size: int) -> int:
    """G = ceil(K / group_size); group_size -1 means one group (per-channel)."""
    return 1 if group_size == -1 else -(-in_features // group_size)


def default_g_idx(in_features: int, group_size: int, device=None) -> torch.Tensor:
    """[K] int32: k // group_size (the group of each input channel without act-order)."""
    gs = in_features if group_size == -1 else group_size
    return (torch.arange(in_features, device=device) // gs).to(torch.int32)


def pack_int4(values: torch.Tensor) -> torch.Tensor:
    """values [N, K] uint8 in [0, 15], K even -> [N, K/2] uint8 (k = 2j low nibble, 2j + 1 high)."""
    if values.shape[-1] % 2:
        raise ValueError(f"int4 packing needs an even number of input features, got K={values.shape[-1]}")
    v = values.to(torch.uint8)
    return v[..., 0::2] | (v[..., 1::2] << 4)


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """[N, K/2] uint8 -> [N, K] uint8, inverse of pack_int4."""
    return torch.stack((packed & 0xF, packed >> 4), dim=-1).flatten(-2)


@dataclass
class Int4Weight:
    """A linear layer's weight in the internal W4A16 layout (see the module docstring)."""

    qweight: torch.Tensor
    scales: torch.Tensor
    zeros: torch.Tensor
    group_size: int
    bits: int = 4
    g_idx: Optional[torch.Tensor] = None

    @property
    def shape(self) -> tuple[int, int]:
        return self.qweight.shape[0], self.qweight.shape[1] * 2

    @classmethod
    def from_values(cls, values: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, group_size: int,
                    bits: int = 4, g_idx: Optional[torch.Tensor] = None) -> "Int4Weight":
        """From unpacked values [N, K] uint8 (e.g. quantize_int4_grouped's output)."""
        k = values.shape[1]
        w = cls(pack_int4(values), scales, zeros.to(torch.uint8), k if group_size == -1 else group_size, bits,
                None if g_idx is None else g_idx.to(torch.int32))
        w.validate()
        return w

    def values(self) -> torch.Tensor:
        return unpack_int4(self.qweight)

    def group_of_channel(self) -> torch.Tensor:
        return self.g_idx if self.g_idx is not None else default_g_idx(self.shape[1], self.group_size, self.qweight.device)

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """W [N, K] in `dtype` (computed in float32, float64 when dtype is float64)."""
        from pyllmops.ops.weight_only import dequantize_int4

        acc = torch.float64 if dtype == torch.float64 else torch.float32
        return dequantize_int4(self.qweight, self.scales, self.zeros, self.group_size, self.g_idx, acc).to(dtype)

    def validate(self) -> None:
        from pyllmops.ops.weight_only import check_int4_weight

        check_int4_weight(self.qweight, self.scales, self.zeros, self.group_size, self.g_idx)
        if not 2 <= self.bits <= 4:
            raise ValueError(f"bits must be 2, 3 or 4 for the int4 container, got {self.bits}")

    def to(self, device) -> "Int4Weight":
        return Int4Weight(self.qweight.to(device), self.scales.to(device), self.zeros.to(device), self.group_size,
                          self.bits, None if self.g_idx is None else self.g_idx.to(device))


@dataclass
class Int8Weight:
    """W8A16: qweight [N, K] int8, symmetric per output channel; scales [N] float."""

    qweight: torch.Tensor
    scales: torch.Tensor

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.qweight.shape)

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        acc = torch.float64 if dtype == torch.float64 else torch.float32
        return (self.qweight.to(acc) * self.scales.to(acc)[:, None]).to(dtype)


# ----------------------------------------------------------------------------- bit packing helpers
def pack_int32(values: torch.Tensor, bits: int, dim: int, order=None) -> torch.Tensor:
    """Pack unsigned `bits`-bit values along `dim` into int32 (32 // bits per word); slot i of a word
    holds element order[i] of its run (identity when None)."""
    pack = 32 // bits
    v = values.to(torch.int64).movedim(dim, -1)
    if v.shape[-1] % pack:
        raise ValueError(f"cannot pack {v.shape[-1]} values {pack} per int32")
    v = v.reshape(*v.shape[:-1], -1, pack)
    if order is not None:
        v = v[..., list(order)]
    shifts = torch.arange(pack, device=v.device) * bits
    word = (v << shifts).sum(-1)
    word = torch.where(word >= 2**31, word - 2**32, word)  # reinterpret as signed int32
    return word.to(torch.int32).movedim(-1, dim)


def unpack_int32(words: torch.Tensor, bits: int, dim: int, order=None) -> torch.Tensor:
    pack = 32 // bits
    w = words.to(torch.int64).movedim(dim, -1) & 0xFFFFFFFF
    shifts = torch.arange(pack, device=w.device) * bits
    v = (w.unsqueeze(-1) >> shifts) & (2**bits - 1)  # [..., words, slot]
    if order is not None:
        inverse = [0] * pack
        for slot, col in enumerate(order):
            inverse[col] = slot
        v = v[..., inverse]
    return v.flatten(-2).to(torch.uint8).movedim(-1, dim)


# ----------------------------------------------------------------------------- GPTQ
def to_gptq(w: Int4Weight, version: int = 1) -> dict[str, torch.Tensor]:
    """Export to GPTQ tensors {qweight [K/8, N], qzeros [G, N/8], scales [G, N], g_idx [K]} (4-bit)."""
    if version not in (1, 2):
        raise ValueError(f"version must be 1 or 2, got {version}")
    bits = 4
    zeros = w.zeros.to(torch.int64)
    if version == 1:
        if bool((zeros == 0).any()):
            raise ValueError("GPTQ version 1 stores zero - 1 and cannot represent a zero point of 0; export with version=2")
        zeros = zeros - 1
    return {
        "qweight": pack_int32(w.values().t(), bits, dim=0),
        "qzeros": pack_int32(zeros.t(), bits, dim=1),
        "scales": w.scales.t().contiguous(),
        "g_idx": w.group_of_channel().clone(),
    }


def from_gptq(qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor, g_idx: Optional[torch.Tensor] = None,
              *, group_size: int, bits: int = 4, version: int = 1) -> Int4Weight:
    """Import GPTQ tensors (see the module docstring); group_size from the checkpoint's config
    (-1 for per-channel). g_idx equal to k // group_size is dropped (no act-order)."""
    if version not in (1, 2):
        raise ValueError(f"version must be 1 or 2, got {version}")
    if bits != 4:
        raise ValueError(f"only 4-bit GPTQ checkpoints map onto the int4 layout, got bits={bits}")
    for name, t in (("qweight", qweight), ("qzeros", qzeros)):
        if t.dtype != torch.int32 or t.dim() != 2:
            raise ValueError(f"{name} must be a 2-D int32 tensor, got {t.dtype} {tuple(t.shape)}")
    k, n = qweight.shape[0] * 8, qweight.shape[1]
    if scales.dim() != 2 or scales.shape[1] != n:
        raise ValueError(f"scales must have shape [G, N={n}], got {tuple(scales.shape)}")
    if tuple(qzeros.shape) != (scales.shape[0], n // 8):
        raise ValueError(f"qzeros must have shape [G={scales.shape[0]}, N/8={n // 8}], got {tuple(qzeros.shape)}")
    zeros = unpack_int32(qzeros, bits, dim=1).to(torch.int64)
    if version == 1:
        zeros = (zeros + 1) & 0xFF  # AutoGPTQ adds 1 back; a stored 15 means 16, which does not fit 4 bits
        if bool((zeros > 15).any()):
            raise ValueError("qzeros holds a zero point of 16 (a version-1 checkpoint that stored 0 - 1); it cannot be represented")
    values = unpack_int32(qweight, bits, dim=0).t()
    gs = k if group_size == -1 else group_size
    if g_idx is not None:
        g_idx = g_idx.to(torch.int32)
        if bool(torch.equal(g_idx, default_g_idx(k, gs, g_idx.device))):
            g_idx = None
    return Int4Weight.from_values(values, scales.t().contiguous(), zeros.t().to(torch.uint8), gs, bits, g_idx)


# ----------------------------------------------------------------------------- AWQ
def to_awq(w: Int4Weight) -> dict[str, torch.Tensor]:
    """Export to AWQ GEMM tensors {qweight [K, N/8], qzeros [G, N/8], scales [G, N]}."""
    if w.g_idx is not None:
        raise ValueError("the AWQ layout has no act-order (g_idx); this weight has one")
    return {
        "qweight": pack_int32(w.values().t(), 4, dim=1, order=AWQ_ORDER),
        "qzeros": pack_int32(w.zeros.t(), 4, dim=1, order=AWQ_ORDER),
        "scales": w.scales.t().contiguous(),
    }


def from_awq(qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor, *, group_size: int) -> Int4Weight:
    for name, t in (("qweight", qweight), ("qzeros", qzeros)):
        if t.dtype != torch.int32 or t.dim() != 2:
            raise ValueError(f"{name} must be a 2-D int32 tensor, got {t.dtype} {tuple(t.shape)}")
    k, n = qweight.shape[0], qweight.shape[1] * 8
    if scales.dim() != 2 or scales.shape[1] != n:
        raise ValueError(f"scales must have shape [G, N={n}], got {tuple(scales.shape)}")
    if tuple(qzeros.shape) != (scales.shape[0], n // 8):
        raise ValueError(f"qzeros must have shape [G={scales.shape[0]}, N/8={n // 8}], got {tuple(qzeros.shape)}")
    values = unpack_int32(qweight, 4, dim=1, order=AWQ_ORDER).t()
    zeros = unpack_int32(qzeros, 4, dim=1, order=AWQ_ORDER).t()
    return Int4Weight.from_values(values, scales.t().contiguous(), zeros, k if group_size == -1 else group_size)


# ----------------------------------------------------------------------------- safetensors
def save_safetensors(path: str, weights: dict[str, "Int4Weight | Int8Weight"]) -> None:
    """Write {name: weight} to one safetensors file: tensors `<name>.qweight` etc., the format
    parameters (kind, group_size, bits) in the header metadata."""
    from safetensors.torch import save_file

    tensors, meta = {}, {}
    for name, w in weights.items():
        if isinstance(w, Int4Weight):
            meta[name] = {"kind": "int4", "group_size": w.group_size, "bits": w.bits}
            parts = {"qweight": w.qweight, "scales": w.scales, "zeros": w.zeros}
            if w.g_idx is not None:
                parts["g_idx"] = w.g_idx
        elif isinstance(w, Int8Weight):
            meta[name] = {"kind": "int8"}
            parts = {"qweight": w.qweight, "scales": w.scales}
        else:
            raise TypeError(f"weights[{name!r}] must be Int4Weight or Int8Weight, got {type(w).__name__}")
        tensors.update({f"{name}.{k}": v.contiguous() for k, v in parts.items()})
    save_file(tensors, path, metadata={"pyllmops.weight_only": json.dumps(meta)})


def load_safetensors(path: str, device: str = "cpu") -> dict[str, "Int4Weight | Int8Weight"]:
    from safetensors import safe_open

    with safe_open(path, framework="pt", device=device) as f:
        meta = json.loads((f.metadata() or {}).get("pyllmops.weight_only", "null") or "null")
        if meta is None:
            raise ValueError(f"{path} was not written by pyllmops.quant.packing.save_safetensors (no metadata)")
        out = {}
        for name, m in meta.items():
            t = {k: f.get_tensor(f"{name}.{k}") for k in ("qweight", "scales", "zeros", "g_idx") if f"{name}.{k}" in f.keys()}
            if m["kind"] == "int4":
                out[name] = Int4Weight(t["qweight"], t["scales"], t["zeros"], m["group_size"], m["bits"], t.get("g_idx"))
                out[name].validate()
            else:
                out[name] = Int8Weight(t["qweight"], t["scales"])
    return out
