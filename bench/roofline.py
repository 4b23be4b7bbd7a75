"""Roofline limits per GPU: the ideal time of an op from the bytes it must move and the tensor
FLOPs it must do, so a benchmark row reads as a fraction of what the card allows.

    ideal = max(bytes / bandwidth, flops / peak[kind])     fraction = ideal / measured time

Two sets of limits per card: the datasheet's (dense, no sparsity) and, where this workplace
measured them, the attainable ones (a 1 GiB device copy_ counting bytes read + written; a bf16
8192^3 torch.matmul). A row prints the ideal at the datasheet limit and its fraction of both.
Cards are found by substrings of torch.cuda.get_device_name().
"""
from __future__ import annotations

from dataclasses import dataclass, field

TB = 1e12


@dataclass(frozen=True)
class Limits:
    bandwidth: float                                       # bytes/s of device memory
    flops: dict[str, float] = field(default_factory=dict)  # FLOP/s (OP/s for int8) by operand kind


@dataclass(frozen=True)
class Card:
    name: str
    match: tuple[str, ...]       # all must occur in the device name (case-insensitive)
    peak: Limits
    measured: Limits | None = None
    source: str = ""


def _tensor(bf16: float, int8: float, fp8: float | None = None, tf32: float | None = None) -> dict[str, float]:
    out = {"bf16": bf16 * TB, "fp16": bf16 * TB, "int8": int8 * TB}
    if fp8:
        out["fp8"] = fp8 * TB
    if tf32:
        out["tf32"] = tf32 * TB
    return out


CARDS = [
    Card("H200", ("H200",), Limits(4.8 * TB, _tensor(989, 1979, 1979, 494)),
         source="NVIDIA H200 datasheet (SXM), dense"),
    Card("H100 SXM", ("H100", "HBM3"), Limits(3.35 * TB, _tensor(989, 1979, 1979, 494)),
         measured=Limits(3.0 * TB, {"bf16": 798 * TB, "fp16": 798 * TB}),
         source="NVIDIA H100 datasheet (SXM5), dense; measured: this workplace's H100 (copy_, bf16 8192^3 matmul)"),
    Card("H100 SXM", ("H100", "SXM"), Limits(3.35 * TB, _tensor(989, 1979, 1979, 494)),
         source="NVIDIA H100 datasheet (SXM5), dense"),
    Card("H100 PCIe", ("H100", "PCIe"), Limits(2.0 * TB, _tensor(756, 1513, 1513, 378)),
         source="NVIDIA H100 datasheet (PCIe), dense"),
    Card("A100 SXM 80GB", ("A100", "80GB"), Limits(2.039 * TB, _tensor(312, 624, tf32=156)),
         source="NVIDIA A100 datasheet (SXM 80GB), dense"),
    Card("A100 40GB", ("A100",), Limits(1.555 * TB, _tensor(312, 624, tf32=156)),
         source="NVIDIA A100 datasheet (40GB), dense"),
]


def card_for(device_name: str) -> Card | None:
    """The first card whose every match string occurs in device_name, or None (CPU, unknown GPU)."""
    low = device_name.lower()
    for card in CARDS:
        if all(m.lower() in low for m in card.match):
            return card
    return None


def ideal_time(limits: Limits, nbytes: float, flops: float = 0.0, kind: str | None = None) -> float | None:
    """Seconds at the limits: max(memory time, compute time). None when the FLOPs' kind has no
    peak in `limits` (then the compute side is unknown, not free)."""
    if nbytes < 0 or flops < 0:
        raise ValueError("nbytes and flops must be >= 0")
    t_mem = nbytes / limits.bandwidth
    if not flops:
        return t_mem
    if kind not in limits.flops:
        return None
    return max(t_mem, flops / limits.flops[kind])


def roofline(device_name: str, seconds: float, nbytes: float, flops: float = 0.0, kind: str | None = None) -> dict:
    """Roofline columns for one measured row: the ideal time at the datasheet peak, its fraction of
    the measured time, and the fraction of the measured-attainable limits where known. {} for a
    device with no table entry."""
    card = card_for(device_name)
    if card is None or seconds <= 0:
        return {}
    out = {"card": card.name}
    ideal = ideal_time(card.peak, nbytes, flops, kind)
    if ideal is not None:
        out.update(ideal_s=ideal, of_peak=ideal / seconds,
                   bound="compute" if flops and flops / card.peak.flops[kind] > nbytes / card.peak.bandwidth
                   else "memory")
    if card.measured is not None:
        attainable = ideal_time(card.measured, nbytes, flops, kind)
        if attainable is not None:
            out["of_measured"] = attainable / seconds
    return out
