"""The Triton tensor-core W4A16 kernel (kernels/triton/w4a16.py): every entry of its per-M config table
forced, against the float64 reference (odd M and N, K with a ragged last group, group sizes
32 / 64 / 128 / -1, act-order, split-K), its fp16 tensor-core path, and the CUDA dispatch rule.
Under the interpreter (CI); tests/ops/test_w4a16_tc_compile.py compiles it for sm_80 / sm_90a."""
import pytest
import torch

import pyllmops
from pyllmops.kernels import w4a16 as tc
from pyllmops.ops.weight_only import (CUDA_GEMV_MAX_M, DECODE_MAX_M, _cuda_w4_supported, _reference_w4,
                                      dequantize_int4)


def _int4(n, k, group_size, act_order=False, scale_dtype=torch.float32):
    g = 1 if group_size == -1 else -(-k // group_size)
    qweight = torch.randint(0, 256, (n, k // 2), dtype=torch.uint8)
    scales = (torch.rand(n, g) * 0.02 + 1e-3).to(scale_dtype)
    zeros = torch.randint(0, 16, (n, g), dtype=torch.uint8)
    g_idx = torch.randint(0, g, (k,), dtype=torch.int32) if act_order else None
    return qweight, scales, zeros, g_idx


def _check(got, ref, tol):
    torch.testing.assert_close(got.double(), ref, rtol=tol, atol=tol * float(ref.abs().max()))


# one odd M inside each bucket of the table (the last: past 64, the prefill tile)
BUCKET_MS = [1, 19, 45, 67]


@pytest.mark.parametrize("m", BUCKET_MS)
@pytest.mark.parametrize("k, group_size", [(544, 32), (330, 32), (544, 64), (544, 128), (330, -1)])
@pytest.mark.parametrize("act_order", [False, True])
def test_config_table_against_reference(m, k, group_size, act_order, seed):
    """The config choose_config picks for M (N = 72: a partial column tile; K = 544 leaves a ragged
    last group of 32 at group sizes 64 and 128, K = 330 one of 10 at 32 and an odd byte count)."""
    n = 72
    qweight, scales, zeros, g_idx = _int4(n, k, group_size, act_order)
    gs = k if group_size == -1 else group_size
    x = torch.randn(m, k)
    cfg = tc.choose_config(m, n, k, gs, act_order, 132)
    got = tc.w4a16_matmul(x, qweight, scales, zeros, gs, g_idx, config=cfg)
    assert got.shape == (m, n) and got.dtype == torch.float32
    _check(got, _reference_w4(x.double(), qweight, scales, zeros, group_size, g_idx), 1e-5)


@pytest.mark.parametrize("split_k", [2, 3, 5])
@pytest.mark.parametrize("group_size, act_order", [(128, False), (64, True)])
def test_split_k_against_reference(split_k, group_size, act_order, seed):
    """K split over programs whose slices end inside a group (5 splits of 9 K blocks: uneven) and,
    with act-order, gather scales of any group in any slice."""
    m, n, k = 3, 40, 1088
    qweight, scales, zeros, g_idx = _int4(n, k, group_size, act_order)
    x = torch.randn(m, k)
    cfg = tc.choose_config(m, n, k, group_size, act_order, 132)._replace(split_k=split_k)
    got = tc.w4a16_matmul(x, qweight, scales, zeros, group_size, g_idx, config=cfg)
    _check(got, _reference_w4(x.double(), qweight, scales, zeros, group_size, g_idx), 1e-5)


@pytest.mark.parametrize("split_k", [1, 3])
def test_fp16_tensor_core_path(split_k, seed):
    """fp16 x and scales: the weight is dequantized into fp16 and the dot runs in fp16 (the
    interpreter evaluates an fp16 dot faithfully; on a GPU this is the mma / wgmma path). The
    exact oracle is x @ W16^T in float64 with W16 = the fp16 rounding of (q - z) * s; the fp16
    output rounding bounds the error."""
    m, n, k, gs = 5, 72, 512, 128
    qweight, scales, zeros, _ = _int4(n, k, gs, scale_dtype=torch.float16)
    x = torch.randn(m, k).half()
    cfg = tc.choose_config(m, n, k, gs, False, 132)._replace(split_k=split_k)
    got = tc.w4a16_matmul(x, qweight, scales, zeros, gs, None, config=cfg)
    assert got.dtype == torch.float16
    w16 = dequantize_int4(qweight, scales, zeros, gs, None, torch.float64).half().double()
    _check(got, x.double() @ w16.t(), 2e-3)


def test_bf16_inputs(seed):
    """bf16 x and scales (the interpreter's dot runs them in fp32; a GPU in bf16)."""
    qweight, scales, zeros, g_idx = _int4(40, 320, 64, act_order=True, scale_dtype=torch.bfloat16)
    x = torch.randn(9, 320).bfloat16()
    got = tc.w4a16_matmul(x, qweight, scales, zeros, 64, g_idx)
    assert got.dtype == torch.bfloat16
    _check(got, _reference_w4(x.double(), qweight, scales, zeros, 64, g_idx), 1e-2)


def test_non_contiguous_x(seed):
    qweight, scales, zeros, _ = _int4(40, 256, 128)
    x = torch.randn(256, 6).t()
    got = tc.w4a16_matmul(x, qweight, scales, zeros, 128)
    _check(got, _reference_w4(x.double(), qweight, scales, zeros, 128, None), 1e-5)


@pytest.mark.parametrize("m", [1, 16, 17, 32, 33, 64, 65, 4096])
def test_choose_config_buckets(m):
    """Each M lands in the smallest bucket that holds it; BLOCK_K lies inside one group where the
    group size allows, else is at most 64 (the gather path); split-K fills the SMs only while each
    split keeps MIN_BLOCKS_PER_SPLIT K blocks."""
    tops = [top for top, _ in tc.M_BUCKETS]
    want = next(cfg for top, cfg in tc.M_BUCKETS if top is None or m <= top)
    n = k = 8192
    cfg = tc.choose_config(m, n, k, 128, False, 132)
    assert (cfg.block_m, cfg.block_n, cfg.num_warps, cfg.num_stages) == (want[0], want[1], want[3], want[4])
    assert 128 % cfg.block_k == 0
    assert tops[:-1] == sorted(tops[:-1]) and tops[-1] is None
    tiles = -(-n // cfg.block_n) * -(-m // cfg.block_m)
    k_blocks = k // cfg.block_k
    assert cfg.split_k == 1 or k_blocks // cfg.split_k >= tc.MIN_BLOCKS_PER_SPLIT
    assert cfg.split_k == tc.MAX_SPLIT_K or tiles * cfg.split_k >= tc.PROGRAMS_PER_SM * 132 or \
        k_blocks // (cfg.split_k + 1) < tc.MIN_BLOCKS_PER_SPLIT
    assert tc.choose_config(m, n, k, 32, False, 132).block_k == 32
    assert tc.choose_config(m, n, k, 128, True, 132).block_k <= 64
    assert tc.choose_config(m, n, k, 96, False, 132).block_k <= 64


def test_decode_m1_splits_k_on_an_h100():
    """M = 1, K = N = 8192: 128 column tiles alone would leave an H100's 132 SMs half idle."""
    cfg = tc.choose_config(1, 8192, 8192, 128, False, 132)
    assert cfg.split_k >= 2 and cfg.block_m == 16


@pytest.mark.parametrize("m", [1, 4, 5, 16, 64])
def test_cuda_dispatch_rule(m):
    """On CUDA the CUDA-core GEMV takes M <= CUDA_GEMV_MAX_M, the tensor-core kernel the rest;
    forced, the GEMV still serves up to DECODE_MAX_M (benchmarks compare the two there)."""
    qweight, scales, zeros, _ = _int4(64, 256, 128)
    x = torch.randn(m, 256).half()
    assert _cuda_w4_supported(x, qweight, scales, zeros, 128, None) == (m <= CUDA_GEMV_MAX_M)
    with pyllmops.use_backend("cuda"):
        assert _cuda_w4_supported(x, qweight, scales, zeros, 128, None) == (m <= DECODE_MAX_M)


@pytest.mark.gpu
@pytest.mark.parametrize("m", BUCKET_MS)
@pytest.mark.parametrize("group_size, act_order", [(32, False), (128, False), (-1, False), (128, True)])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_gpu_config_table(m, group_size, act_order, dtype, seed):
    """Every bucket compiled on a GPU, fp16 and bf16 (the interpreter cannot run a bf16 dot)."""
    k = 576
    qweight, scales, zeros, g_idx = (t.cuda() if t is not None else None
                                     for t in _int4(264, k, group_size, act_order, scale_dtype=dtype))
    x = torch.randn(m, k, device="cuda").to(dtype)
    gs = k if group_size == -1 else group_size
    got = tc.w4a16_matmul(x, qweight, scales, zeros, gs, g_idx)
    assert got.dtype == dtype
    _check(got, _reference_w4(x.double(), qweight, scales, zeros, group_size, g_idx), 1e-2)
