"""Sampler: the generation loop's token picker, a thin module around pyllmops.sample."""
from __future__ import annotations

from typing import Optional, Union

import torch
from torch import nn

from pyllmops.ops.sampling import sample

Param = Union[float, int, torch.Tensor, None]


class Sampler(nn.Module):
    """Holds the sampling settings; forward(logits [B, V], offset) -> ids [B] int64.

    temperature (0 = greedy), top_k (<= 0 disables), top_p (1 disables), min_p (None disables):
    Python scalars, or [B] tensors (kept as buffers, so .to(device) moves them). seed: None (fresh
    seeds from torch's generator every call), an int (row r uses seed + r) or a [B] int64 tensor
    (one stream per request). offset: the row's position in its stream, e.g. the number of tokens
    generated so far; when forward gets none, the module's own step counter is used and advanced
    (host state: pass offsets explicitly under CUDA graphs). The same (seed, offset) gives the same
    token whatever else is in the batch. See pyllmops.ops.sampling for the exact definition."""

    def __init__(self, temperature: Param = 1.0, top_k: Param = 0, top_p: Param = 1.0, min_p: Param = None,
                 seed: Param = None):
        super().__init__()
        self._params = ("temperature", "top_k", "top_p", "min_p", "seed")
        for name, value in zip(self._params, (temperature, top_k, top_p, min_p, seed)):
            if isinstance(value, torch.Tensor):
                self.register_buffer(name, value.clone(), persistent=False)
            else:
                setattr(self, name, value)
        self.step = 0

    @property
    def greedy(self) -> bool:
        return not isinstance(self.temperature, torch.Tensor) and self.temperature == 0

    def forward(self, logits: torch.Tensor, offset: Optional[Union[int, torch.Tensor]] = None) -> torch.Tensor:
        if offset is None:
            offset = self.step
            self.step += 1
        return sample(logits, self.temperature, self.top_k, self.top_p, self.min_p, self.seed, offset)

    def extra_repr(self) -> str:
        def show(v):
            return f"tensor{tuple(v.shape)}" if isinstance(v, torch.Tensor) else repr(v)

        return ", ".join(f"{n}={show(getattr(self, n))}" for n in self._params)
