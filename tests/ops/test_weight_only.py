"""w4a16_matmul / w8a16_matmul: every CPU backend against the float64 oracle written from the
definition (tests/reference.py: the packed int4 weight unpacked byte by byte)."""
import pytest
import torch

import pyllmops
from pyllmops.ops import _dispatch
from tests import reference
from tests.conftest import cpu_backends
from tests.support import compiled, cpu_has, forced


def _int4(n, k, group_size, act_order=False):
    g = 1 if group_size == -1 else -(-k // group_size)
    qweight = torch.randint(0, 256, (n, k // 2), dtype=torch.uint8)
    scales = torch.rand(n, g) * 0.02 + 1e-3
    zeros = torch.randint(0, 16, (n, g), dtype=torch.uint8)
    g_idx = torch.randint(0, g, (k,), dtype=torch.int32) if act_order else None
    return qweight, scales, zeros, g_idx


# (M, N, K): odd M, K not a multiple of 128 (ragged groups), the large-M prefill case kept narrow
SHAPES = [(1, 96, 256), (3, 40, 576), (17, 64, 320), (4097, 16, 128)]


# the Triton interpreter is slow: one large-M Triton case is enough (not generated, not skipped)
W4_CASES = [(b, shape, gs, act) for b in cpu_backends("w4a16_matmul") for shape in SHAPES for gs in (32, 64, 128, -1)
            for act in (False, True) if not (b == "triton" and shape[0] > 17 and (gs != 128 or act))]


@pytest.mark.parametrize("backend, shape, group_size, act_order", W4_CASES)
def test_w4a16_against_reference(backend, shape, group_size, act_order, seed):
    m, n, k = shape
    qweight, scales, zeros, g_idx = _int4(n, k, group_size, act_order)
    x = torch.randn(m, k)
    got = forced(backend, "w4a16_matmul", x, qweight, scales, zeros, group_size, g_idx)
    if got is None:  # declined, as the dispatch declares (asserted by `forced`)
        return
    ref = reference.w4_matmul(x, qweight, scales, zeros, group_size, g_idx)
    assert got.shape == (m, n) and got.dtype == torch.float32
    torch.testing.assert_close(got.double(), ref, rtol=1e-5, atol=1e-5 * float(ref.abs().max()))


@pytest.mark.parametrize("k, group_size", [(256, 128), (330, 64), (330, 33), (96, -1)])
def test_cpp_prefill_path_dequantizes_like_torch(k, group_size, seed):
    """M > 32 on the cpp backend: the C++ dequantization gives the torch fallback's float32 weight
    bit for bit (any K, odd and ragged groups: the scalar loop past the AVX2 spans), so the two
    backends' outputs are identical, and both are the float64 oracle's within float32 rounding."""
    if "cpp" not in cpu_backends("w4a16_matmul"):
        pytest.skip("no cpp backend")
    qweight, scales, zeros, _ = _int4(24, k, group_size)
    x = torch.randn(40, k)
    with pyllmops.use_backend("cpp"):
        got = pyllmops.w4a16_matmul(x, qweight, scales, zeros, group_size)
    with pyllmops.use_backend("torch"):
        want = pyllmops.w4a16_matmul(x, qweight, scales, zeros, group_size)
    ref = reference.w4_matmul(x, qweight, scales, zeros, group_size)
    torch.testing.assert_close(got.double(), ref, rtol=1e-5, atol=1e-5 * float(ref.abs().max()))
    torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_cpp_w8_prefill_path_matches_torch(seed):
    """w8a16 past decode M on the cpp backend: blocks of the int8 weight as float32, the output
    scaled per channel, as the torch fallback does in one piece."""
    if "cpp" not in cpu_backends("w8a16_matmul"):
        pytest.skip("no cpp backend")
    q8, s8 = torch.randint(-127, 128, (2100, 520), dtype=torch.int8), torch.rand(2100) * 0.01
    x = torch.randn(40, 520)
    assert _dispatch.select("w8a16_matmul", x.device, x, q8, s8)[0] == "cpp"
    with pyllmops.use_backend("cpp"):
        got = pyllmops.w8a16_matmul(x, q8, s8)
    ref = reference.w8_matmul(x, q8, s8)
    torch.testing.assert_close(got.double(), ref, rtol=1e-5, atol=1e-5 * float(ref.abs().max()))


_cpu_has = cpu_has


# (M, N, K, group_size, kernel): the C++ backend's VNNI digit kernel needs each 128-channel block in
# one group (group size a multiple of 128, or per-channel); its AVX-512 FMA kernel serves the rest
# (csrc/cpu/weight_only.cpp). A CPU without AVX-512 runs the digit cases at M = 1 on its AVX2 digit
# kernel and every other case on its AVX2 FMA kernel.
CPP_KERNEL_CASES = [
    (1, 97, 256, 128, "vnni_digits"),    # N not a multiple of the 4-row step
    (3, 40, 512, 256, "vnni_digits"),    # two blocks per group
    (5, 64, 1152, 128, "vnni_digits"),   # M over two row tiles of x; 9 blocks (masked tail)
    (2, 24, 2304, 128, "vnni_digits"),   # G = 18 groups (zero-point vector tail)
    (16, 33, 384, -1, "vnni_digits"),    # per-channel, M at the decode limit
    (4, 40, 576, 128, "vnni_digits"),    # K % 128 = 64: a short last block, a ragged last group
    (3, 16, 544, -1, "vnni_digits"),     # K % 128 = 32, per-channel
    (2, 8, 96, -1, "vnni_digits"),       # K < 128: one short block
    (1, 40, 576, 128, "vnni_digits"),    # M = 1 (the AVX2 digit kernel's case): short last block
    (1, 24, 2304, 128, "vnni_digits"),   # M = 1, G = 18
    (1, 8, 96, -1, "vnni_digits"),       # M = 1, K < 128
    (1, 96, 256, 64, "avx512_fma"),
    (4, 40, 576, 64, "avx512_fma"),
    (11, 40, 576, 128, "vnni_digits"),   # M = 11: three row tiles of x, the last one short (batched decode)
    (11, 40, 576, 64, "avx512_fma"),     # the same through the FMA kernel
]


@pytest.mark.parametrize("m, n, k, group_size, kernel", CPP_KERNEL_CASES)
@pytest.mark.parametrize("x_kind", ["randn", "outliers", "zero_block", "tiny", "huge"])
def test_w4a16_cpp_kernels(m, n, k, group_size, kernel, x_kind, seed):
    """Each C++ int4 kernel against the float64 reference, on activations with outlier channels
    (the digit kernel's step is relative to the largest |x| of each 128-channel block), with an
    all-zero block (step 0), and far from 1 (x 1e-35: steps below the smallest normal float)."""
    if "cpp" not in cpu_backends("w4a16_matmul"):
        pytest.skip("no C++ backend here")
    if not _cpu_has("avx512bw"):
        kernel = "avx2_digits" if kernel == "vnni_digits" and m == 1 else "avx2_fma"
    elif kernel == "vnni_digits" and not _cpu_has("avx512_vnni"):
        pytest.skip("no AVX-512 VNNI here")
    from pyllmops import _ext

    assert _ext.cpp().w4a16_kernel(k, k if group_size == -1 else group_size, m) == kernel
    qweight, scales, zeros, _ = _int4(n, k, group_size)
    x = torch.randn(m, k)
    if x_kind == "outliers":
        x[:, torch.randperm(k)[:3]] *= 300.0
    elif x_kind == "zero_block":
        x[:, :64] = 0.0
    elif x_kind in ("tiny", "huge"):
        x *= 1e-35 if x_kind == "tiny" else 1e30
    with pyllmops.use_backend("cpp"):
        got = pyllmops.w4a16_matmul(x, qweight, scales, zeros, group_size)
    ref = reference.w4_matmul(x, qweight, scales, zeros, group_size)
    torch.testing.assert_close(got.double(), ref, rtol=1e-5, atol=1e-5 * float(ref.abs().max()))


@pytest.mark.parametrize("m, k, group_size", [(1, 576, 128), (1, 96, -1), (3, 576, 128), (1, 1152, 256), (5, 320, 64),
                                               (9, 576, 128)])
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_w4a16_gemm_multi_equals_single_calls(m, k, group_size, threads, seed):
    """w4a16_gemm_multi (the fused decode step's q/k/v and gate/up: x prepared once, the rows of all
    weights in one parallel loop whose chunks straddle the weights) gives each weight exactly what
    w4a16_gemm gives it alone, for every kernel this CPU picks (digits at M = 1, FMA above)."""
    if "cpp" not in cpu_backends("w4a16_matmul"):
        pytest.skip("no C++ backend here")
    from pyllmops import _ext

    gs = k if group_size == -1 else group_size
    x = torch.randn(m, k)
    x[:, torch.randperm(k)[:2]] *= 300.0
    weights = [_int4(n, k, group_size)[:3] for n in (5, 70, 129)]
    alone = [torch.empty(m, w[0].shape[0]) for w in weights]
    for (qw, sc, z), out in zip(weights, alone):
        _ext.cpp().w4a16_gemm(x.data_ptr(), m, k, qw.data_ptr(), sc.data_ptr(), z.data_ptr(), qw.shape[0], gs,
                              out.data_ptr(), threads)
    together = [torch.full_like(o, float("nan")) for o in alone]
    _ext.cpp().w4a16_gemm_multi(x.data_ptr(), m, k, gs, [(qw.data_ptr(), sc.data_ptr(), z.data_ptr(), qw.shape[0],
                                                          out.data_ptr()) for (qw, sc, z), out in zip(weights, together)],
                                threads)
    for a, b in zip(alone, together):
        assert torch.equal(a, b)
    ref = reference.w4_matmul(x, *weights[1], group_size)
    torch.testing.assert_close(together[1].double(), ref, rtol=1e-5, atol=1e-5 * float(ref.abs().max()))


@pytest.mark.parametrize("m, n, k, group_size, kernel", CPP_KERNEL_CASES[:1] + CPP_KERNEL_CASES[-1:])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_w4a16_cpp_non_finite_input(m, n, k, group_size, kernel, bad, seed):
    """A NaN or inf in x makes every output that reads it non-finite (it is not lost in the
    digit split)."""
    if "cpp" not in cpu_backends("w4a16_matmul"):
        pytest.skip("no C++ backend here")
    qweight, scales, zeros, _ = _int4(n, k, group_size)
    x = torch.randn(m, k)
    x[0, 5] = bad
    with pyllmops.use_backend("cpp"):
        got = pyllmops.w4a16_matmul(x, qweight, scales, zeros, group_size)
    assert not torch.isfinite(got[0]).any()
    assert torch.isfinite(got[1:]).all()


@pytest.mark.parametrize("backend", cpu_backends("w4a16_matmul"))
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_w4a16_half_inputs(backend, dtype, seed):
    qweight, scales, zeros, _ = _int4(64, 256, 64)
    x = torch.randn(3, 256).to(dtype)
    got = forced(backend, "w4a16_matmul", x, qweight, scales.to(dtype), zeros, 64)
    if got is None:  # declined, as declared
        return
    ref = reference.w4_matmul(x, qweight, scales.to(dtype), zeros, 64)
    assert got.dtype == dtype
    torch.testing.assert_close(got.double(), ref, rtol=1e-2, atol=1e-2 * float(ref.abs().max()))


@pytest.mark.parametrize("m", [1, 2, 8, 13])
def test_bf16_x_decode_sizes_exact_products(m, seed):
    """bfloat16 x at decode sizes on the cpp backend (the bf16 dot-product kernels from 2 rows where
    the CPU has AVX512_BF16): the exact product of the given bf16 x and the exact weight, summed in
    float32, then rounded once to bfloat16, as float32 x cast to bf16 afterwards would be."""
    if "cpp" not in cpu_backends("w4a16_matmul"):
        pytest.skip("needs the C++ extension")
    qweight, scales, zeros, _ = _int4(96, 576, 128)
    q8, s8 = torch.randint(-127, 128, (96, 576), dtype=torch.int8), torch.rand(96) * 0.01 + 1e-4
    x = torch.randn(m, 576).bfloat16()
    with pyllmops.use_backend("cpp"):
        got4 = pyllmops.w4a16_matmul(x, qweight, scales, zeros, 128)
        got8 = pyllmops.w8a16_matmul(x, q8, s8)
    for got, ref, size in ((got4, reference.w4_matmul(x.float(), qweight, scales, zeros, 128),
                            x.double().abs() @ reference.dequantize_int4(qweight, scales, zeros, 128).abs().t()),
                           (got8, reference.w8_matmul(x.float(), q8, s8),
                            x.double().abs() @ (q8.double() * s8.double()[:, None]).abs().t())):
        assert got.dtype == torch.bfloat16
        err = (got.double() - ref).abs() - 2 ** -8 * ref.abs() - 2 ** -22 * size
        assert float(err.max()) <= 0


W8_CASES = [(b, shape, dt) for b in cpu_backends("w8a16_matmul") for shape in SHAPES
            for dt in (torch.float32, torch.bfloat16) if not (b == "triton" and shape[0] > 17 and dt != torch.float32)]


@pytest.mark.parametrize("backend, shape, dtype", W8_CASES)
def test_w8a16_against_reference(backend, shape, dtype, seed):
    m, n, k = shape
    qweight = torch.randint(-127, 128, (n, k), dtype=torch.int8)
    scales = torch.rand(n) * 0.01 + 1e-4
    x = torch.randn(m, k).to(dtype)
    got = forced(backend, "w8a16_matmul", x, qweight, scales)
    if got is None:  # declined, as declared
        return
    ref = reference.w8_matmul(x, qweight, scales)
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    assert got.dtype == dtype
    torch.testing.assert_close(got.double(), ref, rtol=tol, atol=tol * float(ref.abs().max()))


def test_default_backend_choice():
    qweight, scales, zeros, g_idx = _int4(32, 256, 128)
    x = torch.randn(1, 256)
    cpp = "cpp" in cpu_backends("w4a16_matmul")
    simd = (_cpu_has("avx512f") and _cpu_has("avx512bw")) or (_cpu_has("avx2") and _cpu_has("fma"))
    decode = "cpp" if cpp and simd else "torch"  # the decode kernels are AVX-512, else AVX2 + FMA
    assert _dispatch.select("w4a16_matmul", x.device, x, qweight, scales, zeros, 128, None)[0] == decode
    # act-order (g_idx) goes to the torch fallback; large M to cpp's dequantize + F.linear
    assert _dispatch.select("w4a16_matmul", x.device, x, qweight, scales, zeros, 128, torch.zeros(256, dtype=torch.int32))[0] == "torch"
    big = torch.randn(64, 256)
    assert _dispatch.select("w4a16_matmul", x.device, big, qweight, scales, zeros, 128, None)[0] == ("cpp" if cpp else "torch")


def test_gradient_wrt_input(seed):
    qweight, scales, zeros, g_idx = _int4(24, 128, 32, act_order=True)
    x = torch.randn(5, 128, dtype=torch.float64, requires_grad=True)
    y = pyllmops.w4a16_matmul(x.float(), qweight, scales, zeros, 32, g_idx)
    grad = torch.randn_like(y)
    (y * grad).sum().backward()
    w = reference.dequantize_int4(qweight, scales, zeros, 32, g_idx)
    torch.testing.assert_close(x.grad, grad.double() @ w, rtol=1e-5, atol=1e-5)

    q8, s8 = torch.randint(-127, 128, (24, 128), dtype=torch.int8), torch.rand(24)
    x8 = torch.randn(5, 128, requires_grad=True)
    pyllmops.w8a16_matmul(x8, q8, s8).sum().backward()
    torch.testing.assert_close(x8.grad, (q8.float() * s8[:, None]).sum(0).expand(5, 128), rtol=1e-5, atol=1e-4)


def test_compiles(seed):
    qweight, scales, zeros, _ = _int4(32, 128, 64)
    f = compiled(lambda x: pyllmops.w4a16_matmul(x, qweight, scales, zeros, 64) * 2)
    x = torch.randn(2, 128)
    ref = reference.w4_matmul(x, qweight, scales, zeros, 64) * 2
    torch.testing.assert_close(f(x).double(), ref, rtol=1e-5, atol=1e-5 * float(ref.abs().max()))


def test_eager_front_door_skips_only_what_it_may(seed):
    """Plain eager calls run the backend directly; the custom op (same result) serves autograd,
    fake tensors and compile, which the direct path cannot."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    qweight, scales, zeros, _ = _int4(48, 256, 128)
    x = torch.randn(3, 256)
    assert _dispatch.eager(x, qweight, scales, zeros, None)
    torch.testing.assert_close(pyllmops.w4a16_matmul(x, qweight, scales, zeros, 128),
                               torch.ops.pyllmops.w4a16_matmul(x, qweight, scales, zeros, 128, None), rtol=0, atol=0)
    xg = x.clone().requires_grad_()
    assert not _dispatch.eager(xg)
    with torch.no_grad():
        assert _dispatch.eager(xg)
    with FakeTensorMode() as mode:
        fx, fq, fs, fz = (mode.from_tensor(t) for t in (x, qweight, scales, zeros))
        assert not _dispatch.eager(fx)
        out = pyllmops.w4a16_matmul(fx, fq, fs, fz, 128)
    assert tuple(out.shape) == (3, 48)


def test_aten_int4pack_zero_convention(seed):
    """torch's CPU int4 kernel wants scales_and_zeros [G, N, 2] with a float zero:
    W = (q - 8) * s + zero_f. Ours is (q - z) * s, so zero_f = (8 - z) * s (why it is not our
    default path: see the ops module docstring)."""
    n, k, gs = 32, 256, 64
    qweight, scales, zeros, _ = _int4(n, k, gs)
    q = torch.stack((qweight & 0xF, qweight >> 4), -1).flatten(-2).int()
    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 1)
    sz = torch.stack((scales.t(), ((8 - zeros.float()) * scales).t()), -1).contiguous()
    x = torch.randn(3, k)
    got = torch.ops.aten._weight_int4pack_mm_for_cpu(x, packed, gs, sz)
    torch.testing.assert_close(got, pyllmops.w4a16_matmul(x, qweight, scales, zeros, gs), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("bad, exc, match", [
    (lambda q, s, z: pyllmops.w4a16_matmul(torch.randn(2, 128), q, s, z, 48), ValueError, r"scales must have shape \[N, G\] = \[8, 3\]"),
    (lambda q, s, z: pyllmops.w4a16_matmul(torch.randn(2, 128), q, s, z, 0), ValueError, "group_size must be -1"),
    (lambda q, s, z: pyllmops.w4a16_matmul(torch.randn(2, 128), q, s, z, 256), ValueError, "group_size must be -1"),
    (lambda q, s, z: pyllmops.w4a16_matmul(torch.randn(2, 128), q, s, z, 64.0), TypeError, "group_size must be an int"),
    (lambda q, s, z: pyllmops.w4a16_matmul(torch.randn(2, 100), q, s, z, 64), ValueError, r"qweight must have shape \[N, K/2\]"),
    (lambda q, s, z: pyllmops.w4a16_matmul(torch.randn(2, 128), q.int(), s, z, 64), TypeError, "qweight must have dtype"),
    (lambda q, s, z: pyllmops.w4a16_matmul(torch.randn(2, 128), q, s[:, :1], z, 64), ValueError, "scales must have shape"),
    (lambda q, s, z: pyllmops.w4a16_matmul(torch.randn(2, 128), q, s, z[:, :1], 64), ValueError, "zeros must have shape"),
    (lambda q, s, z: pyllmops.w4a16_matmul(torch.randn(2, 128), q, s, z.float(), 64), TypeError, "zeros must have dtype"),
    (lambda q, s, z: pyllmops.w4a16_matmul(torch.randn(2, 128), q, s, z, 64, torch.zeros(100, dtype=torch.int32)), ValueError, r"g_idx must have shape \[K\]"),
    (lambda q, s, z: pyllmops.w4a16_matmul(torch.randn(2, 128), q, s, z, 64, torch.full((128,), 2, dtype=torch.int32)), ValueError, r"g_idx values must lie in \[0, G=2\)"),
    (lambda q, s, z: pyllmops.w4a16_matmul(torch.randn(2, 128), q, s, z, 64, -torch.ones(128, dtype=torch.int64)), ValueError, "g_idx values"),
    (lambda q, s, z: pyllmops.w4a16_matmul(torch.randn(2, 128).int(), q, s, z, 64), TypeError, "x must have dtype"),
    (lambda q, s, z: pyllmops.w8a16_matmul(torch.randn(2, 128), torch.zeros(8, 64, dtype=torch.int8), torch.ones(8)), ValueError, r"qweight must have shape \[N, K\]"),
    (lambda q, s, z: pyllmops.w8a16_matmul(torch.randn(2, 128), torch.zeros(8, 128, dtype=torch.int8), torch.ones(4)), ValueError, r"scales must have shape \[N\]"),
])
def test_bad_input(bad, exc, match):
    q, s, z, _ = _int4(8, 128, 64)
    with pytest.raises(exc, match=match):
        bad(q, s, z)


def test_forced_cpp_rejects_unservable_group():
    if "cpp" not in cpu_backends("w4a16_matmul"):
        pytest.skip("no C++ backend here")
    q, s, z, _ = _int4(8, 96, 48)
    with pyllmops.use_backend("cpp"), pytest.raises(RuntimeError, match="forced backend"):
        pyllmops.w4a16_matmul(torch.randn(1, 96), q, s, z, 48)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("m", [1, 3, 16])
@pytest.mark.parametrize("group_size", [32, 128, -1])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_gpu_against_reference(backend, m, group_size, dtype, seed):
    qweight, scales, zeros, _ = (t.cuda() if t is not None else None for t in _int4(256, 576, group_size))
    scales = scales.to(dtype)
    q8 = torch.randint(-128, 128, (256, 576), dtype=torch.int8, device="cuda")
    x = torch.randn(m, 576, device="cuda").to(dtype)
    with pyllmops.use_backend(backend):
        got = pyllmops.w4a16_matmul(x, qweight, scales, zeros, group_size)
        got8 = pyllmops.w8a16_matmul(x, q8, scales[:, 0])
    for out, ref in ((got, reference.w4_matmul(x.cpu(), qweight.cpu(), scales.cpu(), zeros.cpu(), group_size)),
                     (got8, reference.w8_matmul(x.cpu(), q8.cpu(), scales[:, 0].cpu()))):
        assert out.dtype == dtype
        torch.testing.assert_close(out.cpu().double(), ref, rtol=1e-2, atol=1e-2 * float(ref.abs().max()))
