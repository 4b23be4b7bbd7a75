"""The file-neutral description of one quantized linear layer that formats read and write."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

import torch

from pyllmops.quant.packing import Int4Weight, Int8Weight


class FormatError(ValueError):
    """A checkpoint (or a layer to be saved) that a format cannot hold or that is malformed."""


class FormatWarning(UserWarning):
    """A checkpoint was written, but some loaders of its format will not read it (the message says which)."""


@dataclass
class QuantizedLinear:
    """weight: Int4Weight (grouped, 2-4 bits, optional act-order g_idx) or Int8Weight (symmetric
    per output channel). act: None for weight-only layers; "dynamic" (per-token) or "static"
    (per-tensor, input_scale [1] float32) int8 activations for W8A8 (weight then Int8Weight).
    bias [N] or None."""

    weight: Union[Int4Weight, Int8Weight]
    bias: Optional[torch.Tensor] = None
    act: Optional[str] = None
    input_scale: Optional[torch.Tensor] = None

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.weight.shape)


def take(tensors: dict, name: str, what: str) -> torch.Tensor:
    """Pop tensor `name` from `tensors`, or raise FormatError saying which is missing."""
    if name not in tensors:
        raise FormatError(f"{what}: the checkpoint has no tensor {name!r}")
    return tensors.pop(name)


def require(qconfig: dict, key: str, where: str = "quantization_config"):
    if key not in qconfig:
        raise FormatError(f"{where} is missing the key {key!r}")
    return qconfig[key]
