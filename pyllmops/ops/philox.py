"""Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC'11), the
counter-based generator every sampling backend shares bit for bit.

    philox4x32(seed [B] int64, c0, c1, c2, c3 [B] int64 in [0, 2**32)) -> 4 x [B] int64 in [0, 2**32)

Key = (seed & 0xffffffff, (seed >> 32) & 0xffffffff), i.e. the seed's two's-complement bits.
This is the same function as Random123's philox4x32_R(10, ...), Triton's `tl.philox` (key taken
from a 64-bit seed the same way) and csrc/cpu/sampling.cpp / csrc/cuda/sampling.cu.

The sampler draws one uniform per row with counter (offset lo, offset hi, 0, 0):
    u = ((r0 >> 5) * 2**26 + (r1 >> 6)) / 2**53        (53 bits, u in [0, 1))
so a row's draw depends only on (seed[row], offset[row]).

Vectorised over rows with int64 torch arithmetic on any device: a 32 x 32-bit product does not
fit an int64, so it is split into 32 x 16-bit halves.
"""
from __future__ import annotations

import torch

M32 = 0xFFFFFFFF
ROUND_A, ROUND_B = 0xD2511F53, 0xCD9E8D57  # multipliers
KEY_A, KEY_B = 0x9E3779B9, 0xBB67AE85      # Weyl key increments
ROUNDS = 10


def _mulhilo(a: int, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(hi, lo) 32-bit halves of the 64-bit product a * b, a a 32-bit constant, b in [0, 2**32)."""
    t = a * (b >> 16)              # < 2**48
    s = a * (b & 0xFFFF) + ((t & 0xFFFF) << 16)  # < 2**49: the low 48 bits of the product
    return (t >> 16) + (s >> 32), s & M32


def philox4x32(seed: torch.Tensor, c0: torch.Tensor, c1: torch.Tensor, c2: torch.Tensor,
               c3: torch.Tensor) -> tuple[torch.Tensor, ...]:
    k0, k1 = seed & M32, (seed >> 32) & M32
    for _ in range(ROUNDS):
        hi0, lo0 = _mulhilo(ROUND_A, c0)
        hi1, lo1 = _mulhilo(ROUND_B, c2)
        c0, c1, c2, c3 = (hi1 ^ c1 ^ k0) & M32, lo1, (hi0 ^ c3 ^ k1) & M32, lo0
        k0, k1 = (k0 + KEY_A) & M32, (k1 + KEY_B) & M32
    return c0, c1, c2, c3


def row_uniforms(seed: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
    """seed, offset [B] int64 -> u [B] float64 in [0, 1), the one uniform each row draws."""
    zero = torch.zeros_like(offset)
    r0, r1, _, _ = philox4x32(seed, offset & M32, (offset >> 32) & M32, zero, zero)
    return ((r0 >> 5) * (1 << 26) + (r1 >> 6)).double() * 2.0 ** -53
