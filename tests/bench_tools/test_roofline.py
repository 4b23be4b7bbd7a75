"""bench/roofline.py's arithmetic: ideal time = max(bytes / bandwidth, FLOPs / peak), the card
lookup by device name, and the fractions, checked against hand-computed values."""
import pytest

from bench.roofline import CARDS, Limits, card_for, ideal_time, roofline

TB = 1e12


@pytest.mark.parametrize("name, card", [
    ("NVIDIA H100 80GB HBM3", "H100 SXM"), ("NVIDIA H100 PCIe", "H100 PCIe"), ("NVIDIA H200", "H200"),
    ("NVIDIA A100-SXM4-80GB", "A100 SXM 80GB"), ("NVIDIA A100-PCIE-40GB", "A100 40GB")])
def test_card_lookup(name, card):
    assert card_for(name).name == card


def test_unknown_device_has_no_columns():
    assert card_for("AMD EPYC 9654") is None
    assert roofline("AMD EPYC 9654", 1e-3, 1e9) == {}


def test_memory_bound_decode_gemv():
    # W4A16 M=1, K=N=8192: 32 MiB of int4 weight + 1 MiB of fp16 scales/zeros; 2*8192*8192 FLOPs.
    nbytes, flops = 8192 * 8192 // 2 + 2 * 8192 * 64 * 2, 2 * 8192 * 8192
    h100 = card_for("NVIDIA H100 80GB HBM3")
    t = ideal_time(h100.peak, nbytes, flops, "fp16")
    assert t == pytest.approx(nbytes / 3.35e12)   # the memory side dominates by ~100x
    row = roofline("NVIDIA H100 80GB HBM3", 2 * t, nbytes, flops, "fp16")
    assert row["bound"] == "memory" and row["of_peak"] == pytest.approx(0.5)
    assert row["of_measured"] == pytest.approx(nbytes / 3.0e12 / (2 * t))


def test_compute_bound_gemm():
    # bf16 8192^3: 2*8192^3 FLOPs over 3 * 128 MiB; at 989 TFLOP/s it is compute-bound.
    n = 8192
    nbytes, flops = 3 * n * n * 2, 2 * n ** 3
    row = roofline("NVIDIA H100 80GB HBM3", 1.5e-3, nbytes, flops, "bf16")
    assert row["bound"] == "compute"
    assert row["ideal_s"] == pytest.approx(flops / 989e12)
    assert row["of_peak"] == pytest.approx(flops / 989e12 / 1.5e-3)
    assert row["of_measured"] == pytest.approx(flops / 798e12 / 1.5e-3)   # the 8192^3 matmul measured here


def test_int8_uses_int8_peak_and_unknown_kind_is_not_free():
    lim = Limits(2 * TB, {"int8": 100 * TB})
    assert ideal_time(lim, 0, 1e12, "int8") == pytest.approx(0.01)
    assert ideal_time(lim, 1e9, 1e12, "fp8") is None
    assert ideal_time(lim, 4e12) == pytest.approx(2.0)
    # a kind the measured limits lack (int8 on the H100 entry): no "of_measured", peak still given
    row = roofline("NVIDIA H100 80GB HBM3", 1e-3, 1e6, 2e12, "int8")
    assert "of_measured" not in row and row["ideal_s"] == pytest.approx(2e12 / 1979e12)


def test_bad_arguments():
    with pytest.raises(ValueError, match="nbytes"):
        ideal_time(CARDS[0].peak, -1)
