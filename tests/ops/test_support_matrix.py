"""The support matrix: what each CPU backend serves, written out here from the ops' docstrings and
this machine's CPU flags, against what the dispatch declares (`_dispatch.serves`). The oracle tests
run every case a backend declares and assert the refusal of every case it declines
(tests/support.py), so a wrong declaration could hide a bug; this test pins the declarations.

PYLLMOPS_REQUIRE (CI sets it) names what must be present: "cpp" (pyllmops._C), "avx512" (its
AVX-512 kernels), "vnni"; a missing one is a failure here, not fewer tests elsewhere."""
import os

import pytest
import torch

from pyllmops import _ext
from pyllmops.ops import _dispatch
from tests.conftest import required_backends


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            return set(next((line for line in f if line.startswith("flags")), "").split())
    except OSError:
        return set()


FLAGS = _cpu_flags()
AVX512 = {"avx512f", "avx512bw"} <= FLAGS
VNNI = AVX512 and {"avx512vl", "avx512_vnni"} <= FLAGS
SIMD = AVX512 or {"avx2", "fma"} <= FLAGS  # the C++ decode kernels: AVX-512, else AVX2 + FMA
CPP = _ext.has_cpp()
TRITON = os.environ.get("TRITON_INTERPRET") == "1" and _dispatch.triton_available("cpu")


def test_required_backends_are_present():
    required = required_backends()
    unknown = required - {"cpp", "triton", "avx512", "vnni"}
    assert not unknown, f"PYLLMOPS_REQUIRE: unknown names {sorted(unknown)}"
    if "cpp" in required:
        assert CPP, "PYLLMOPS_REQUIRE=cpp but pyllmops._C does not import"
    if "triton" in required:
        assert TRITON, "PYLLMOPS_REQUIRE=triton but Triton (interpreter) is unavailable"
    if "avx512" in required:
        assert AVX512 and CPP and _ext.cpp().weight_only_simd()
    if "vnni" in required:
        assert VNNI and CPP and _ext.cpp().weight_only_vnni()


@pytest.mark.skipif(not CPP, reason="pyllmops._C not built (PYLLMOPS_REQUIRE=cpp makes this a failure)")
def test_cpp_sees_the_cpu_features():
    """The C++ core's runtime checks agree with /proc/cpuinfo: an AVX-512 (or AVX2 + FMA) machine
    gets those kernels (a build or detection regression would silently fall back to torch otherwise)."""
    assert _ext.cpp().weight_only_simd() == SIMD
    assert _ext.cpp().weight_only_vnni() == VNNI


def _int4(n, k, group_size, act_order=False):
    g = 1 if group_size == -1 else -(-k // group_size)
    return (torch.zeros(n, k // 2, dtype=torch.uint8), torch.ones(n, g), torch.zeros(n, g, dtype=torch.uint8),
            torch.zeros(k, dtype=torch.int32) if act_order else None)


# (M, K, group_size, act_order): decode and prefill M, group sizes around the kernels' rules
W4_CALLS = [(m, k, gs, act) for m in (1, 16, 17, 32, 33) for k in (96, 256, 320, 576)
            for gs in (32, 48, 64, 128, -1) for act in (False, True) if gs <= k]


def _w4a16_cpp(m, k, gs, act):
    # weight_only.py: no g_idx; past M = 32 dequantize + GEMM for any K; decode: K, group % 32, SIMD
    eff = k if gs == -1 else gs
    return CPP and not act and (m > 32 or (k % 32 == 0 and eff % 32 == 0 and SIMD))


def _w4a8_cpp(m, k, gs):
    # w4a8.py: decode M <= 16, group a multiple of 128 or per-channel, AVX-512 VNNI
    eff = k if gs == -1 else gs
    return CPP and m <= 16 and (eff % 128 == 0 or eff == k) and VNNI


@pytest.mark.parametrize("m, k, gs, act", W4_CALLS)
def test_int4_matrix(m, k, gs, act):
    q, s, z, g_idx = _int4(8, k, gs, act)
    x = torch.zeros(m, k)
    declared = {b: _dispatch.serves("w4a16_matmul", b, "cpu", x, q, s, z, gs, g_idx)
                for b in ("reference", "torch", "cpp", "triton", "cuda")}
    assert declared == {"reference": True, "torch": True, "cpp": _w4a16_cpp(m, k, gs, act), "triton": TRITON,
                        "cuda": False}
    if not act and k % 32 == 0:
        declared = {b: _dispatch.serves("w4a8_matmul", b, "cpu", x, q, s, z, gs) for b in ("reference", "torch", "cpp")}
        assert declared == {"reference": True, "torch": True, "cpp": _w4a8_cpp(m, k, gs)}


@pytest.mark.parametrize("m", [1, 16, 17, 40])
@pytest.mark.parametrize("k", [96, 100, 520])
def test_w8a16_matrix(m, k):
    x, q, s = torch.zeros(m, k), torch.zeros(8, k, dtype=torch.int8), torch.ones(8)
    declared = {b: _dispatch.serves("w8a16_matmul", b, "cpu", x, q, s) for b in ("torch", "cpp", "triton", "cuda")}
    # weight_only.py: past M = 16 blocks of float32 weight + GEMM; decode needs K % 16 and SIMD
    assert declared == {"torch": True, "cpp": CPP and (m > 16 or (k % 16 == 0 and SIMD)), "triton": TRITON,
                        "cuda": False}


@pytest.mark.parametrize("granularity, symmetric, static", [
    ("token", True, False), ("token", True, True), ("tensor", True, True), ("tensor", True, False),
    ("channel", True, False), ("token", False, False), ("tensor", False, False)])
def test_quantize_int8_matrix(granularity, symmetric, static):
    x = torch.zeros(4, 16)
    scale = None
    if static:
        scale = torch.ones(1) if granularity == "tensor" else torch.ones(4, 1)
    declared = {b: _dispatch.serves("quantize_int8", b, "cpu", x, granularity, symmetric, scale, None)
                for b in ("torch", "cpp", "triton")}
    # quant_int8_cpp.py / quant_int8.py: symmetric rows, per-token (dynamic or static) or static per-tensor
    rows = symmetric and (granularity == "token" or (granularity == "tensor" and static))
    assert declared == {"torch": True, "cpp": CPP and rows, "triton": TRITON and rows}
    cols = torch.zeros(16, 4).t()  # rows without unit column stride: the row kernels decline
    assert not _dispatch.serves("quantize_int8", "cpp", "cpu", cols, granularity, symmetric, scale, None)


def test_every_cpu_op_has_a_universal_backend():
    """Whatever the fast backends decline, the torch fallback serves (the default order ends there)."""
    for op in _dispatch.registered_ops():
        assert "torch" in _dispatch.available_backends(op, "cpu"), op
