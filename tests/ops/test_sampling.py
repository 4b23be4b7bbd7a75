"""pyllmops.sample / top_k_top_p_filter against the float64 definition (reference_filter), the
HF warpers, and each other. Distribution tests draw N tokens from one row (the row expanded N
times, a different seed per copy) and run a chi-square test against the exact filtered
distribution; their seeds are fixed, so they are deterministic, and the p-value bar (1e-6) cannot
be passed by luck by a wrong distribution of the sizes used here."""
import pytest
import torch

import pyllmops
from pyllmops.ops.philox import philox4x32, row_uniforms
from pyllmops.ops.sampling import reference_filter

from ..conftest import cpu_backends

BACKENDS = cpu_backends("sample")
FAST = [b for b in BACKENDS if b != "triton"]  # the Triton interpreter runs ~0.1 s per row
P_MIN = 1e-6


def _case(v: int, case: int):
    """Fixed random logits [V] and parameters for distribution case `case`."""
    g = torch.Generator().manual_seed(1000 * v + case)
    x = torch.randn(v, generator=g) * 2
    u = torch.rand(4, generator=g).tolist()
    params = dict(temperature=0.5 + u[0],
                  top_k=0 if case % 2 else int(1 + u[1] * v),
                  top_p=0.6 + 0.4 * u[2] if case < 2 else 1.0,
                  min_p=None if case % 2 == 0 else 0.03 * u[3])
    return x, params


def _kept_probs(x, params):
    b = torch.ones(1)
    return reference_filter(x[None], b * params["temperature"], b.long() * params["top_k"], b * params["top_p"],
                            b * (params["min_p"] or 0.0))[0]


def _chi2_pvalue(draws: torch.Tensor, probs: torch.Tensor) -> float:
    n = draws.numel()
    counts = torch.bincount(draws, minlength=probs.numel()).double()
    expected = probs * n
    big = expected >= 5
    obs, exp = counts[big], expected[big]
    if float(expected[~big].sum()) >= 1:  # lump the rare tokens into one bin
        obs = torch.cat([obs, counts[~big].sum()[None]])
        exp = torch.cat([exp, expected[~big].sum()[None]])
    df = obs.numel() - 1
    if df == 0:
        return 1.0
    chi2 = ((obs - exp) ** 2 / exp).sum()
    return float(torch.special.gammaincc(torch.tensor(df / 2, dtype=torch.float64), chi2 / 2))


def _draw(backend, x, params, n, base_seed, chunk=50_000):
    out = []
    for start in range(0, n, chunk):
        m = min(chunk, n - start)
        with pyllmops.use_backend(backend):
            out.append(pyllmops.sample(x.expand(m, -1), seed=torch.arange(m) + base_seed + start, offset=7, **params))
    return torch.cat(out)


# cpp (the CPU default): 4 cases per V, 200k draws each. torch (the fallback, ~50x slower per draw
# at V = 1000): cases 0-1, 200k draws, 50k at V = 1000.
DIST_CASES = [pytest.param(b, v, c, marks=[pytest.mark.slow] if b != "cpp" and v == 1000 else [])
              for b in FAST for v in (7, 50, 1000) for c in range(4) if b == "cpp" or c < 2]


@pytest.mark.parametrize("backend, v, case", DIST_CASES)
def test_distribution_chi_square(backend, v, case):
    x, params = _case(v, case)
    probs = _kept_probs(x, params)
    n = 50_000 if backend != "cpp" and v == 1000 else 200_000
    draws = _draw(backend, x, params, n, base_seed=v * 10 + case)
    assert bool((probs[draws] > 0).all()), "a draw fell outside the kept set"
    assert _chi2_pvalue(draws, probs) > P_MIN


@pytest.mark.slow
@pytest.mark.skipif("triton" not in BACKENDS, reason="Triton interpreter not available")
def test_distribution_chi_square_triton():
    # The interpreter runs ~0.1 s per row: 120 draws only, so this catches gross errors; the fine
    # check is test_backends_agree (the same token as cpp for the same seed, cpp being tested at
    # 200k draws) plus test_filter_matches_reference (the same kept distribution).
    x, params = _case(7, 0)
    probs = _kept_probs(x, params)
    draws = _draw("triton", x, params, 120, base_seed=5)
    assert bool((probs[draws] > 0).all())
    assert _chi2_pvalue(draws, probs) > P_MIN


def _random_batch(b, v, gen_seed):
    g = torch.Generator().manual_seed(gen_seed)
    x = torch.randn(b, v, generator=g) * 3
    t = torch.rand(b, generator=g) + 0.3
    t[::7] = 0.0  # some greedy rows
    k = torch.randint(-2, v + 3, (b,), generator=g)
    p = torch.rand(b, generator=g) * 0.7 + 0.3
    p[::5] = 1.0
    q = torch.rand(b, generator=g) * 0.1
    q[::3] = 0.0
    seed = torch.randint(-2**63, 2**63 - 1, (b,), generator=g)
    offset = torch.randint(0, 2**40, (b,), generator=g)
    return x, dict(temperature=t, top_k=k, top_p=p, min_p=q, seed=seed, offset=offset)


@pytest.mark.parametrize("v, b", [(7, 200), (50, 200), (1000, 100)])
def test_backends_agree(v, b):
    """Backends share the uniform and the kept set: the same token unless float rounding of a sum
    sits on a boundary (never seen at these sizes; allowed for 1% of the rows)."""
    x, kw = _random_batch(b, v, v)
    ids = {}
    for backend in ["reference"] + BACKENDS:
        n = 12 if backend == "triton" else b
        with pyllmops.use_backend(backend):
            ids[backend] = pyllmops.sample(x[:n], **{k_: t[:n] for k_, t in kw.items()})
    for backend, got in ids.items():
        ref = ids["reference"][:got.numel()]
        assert float((got == ref).float().mean()) >= 0.99, backend


@pytest.mark.parametrize("backend", BACKENDS)
def test_filter_matches_reference(backend):
    x, kw = _random_batch(12 if backend == "triton" else 200, 50, 3)
    params = {k: kw[k] for k in ("temperature", "top_k", "top_p", "min_p")}
    with pyllmops.use_backend(backend):
        probs = pyllmops.top_k_top_p_filter(x, **params)
    ref = reference_filter(x, params["temperature"], params["top_k"], params["top_p"], params["min_p"])
    assert probs.dtype == torch.float32 and probs.shape == x.shape
    assert torch.equal(probs > 0, ref > 0)
    torch.testing.assert_close(probs.double(), ref, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("backend", BACKENDS)
def test_batch_composition_invariance(backend):
    """A row's token depends on its own logits, parameters, seed and offset only."""
    b = 6 if backend == "triton" else 12
    x, kw = _random_batch(b, 300, 11)
    with pyllmops.use_backend(backend):
        full = pyllmops.sample(x, **kw)
        perm = torch.randperm(b)
        shuffled = pyllmops.sample(x[perm], **{k: t[perm] for k, t in kw.items()})
        single = torch.cat([pyllmops.sample(x[i:i + 1], **{k: t[i:i + 1] for k, t in kw.items()}) for i in range(3)])
    assert torch.equal(shuffled, full[perm])
    assert torch.equal(single, full[:3])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_sample_their_float32_values(backend, dtype):
    x, kw = _random_batch(6 if backend == "triton" else 32, 200, 5)
    x = x.to(dtype)
    with pyllmops.use_backend(backend):
        assert torch.equal(pyllmops.sample(x, **kw), pyllmops.sample(x.float(), **kw))


@pytest.mark.parametrize("backend", BACKENDS)
def test_greedy_is_first_argmax(backend, seed):
    x = torch.randn(6, 100)
    x[2, 10] = x[2, 70] = x[2].max() + 1  # tie: the first index wins, as torch.argmax
    x[4, 99] = x[4].max() + 1
    t = torch.tensor([0.0, 1.0, 0.0, 0.7, 0.0, 0.0])
    with pyllmops.use_backend(backend):
        ids = pyllmops.sample(x, temperature=t, top_k=5, top_p=0.5, seed=seed)
        all_greedy = pyllmops.sample(x, temperature=0.0)
    greedy = t == 0
    assert torch.equal(ids[greedy], x.argmax(-1)[greedy])
    assert torch.equal(all_greedy, x.argmax(-1))
    assert int(ids[2]) == 10


def _hf_warp(scores, temperature, top_k, top_p, min_p):
    """transformers' TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper, MinPLogitsWarper
    (min_tokens_to_keep=1), in their generation order, on float64 scores [B, V]."""
    scores = scores / temperature
    if 0 < top_k < scores.shape[-1]:
        scores = scores.masked_fill(scores < torch.topk(scores, top_k)[0][..., -1, None], float("-inf"))
    if top_p < 1:
        sorted_logits, sorted_indices = torch.sort(scores, descending=False)
        cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        remove = cumulative <= (1 - top_p)
        remove[..., -1:] = 0
        scores = scores.masked_fill(remove.scatter(1, sorted_indices, remove), float("-inf"))
    if min_p:
        probs = torch.softmax(scores, dim=-1)
        scores = scores.masked_fill(probs < min_p * probs.amax(dim=-1, keepdim=True), float("-inf"))
    return scores.softmax(-1)


@pytest.mark.parametrize("top_k, top_p, min_p", [(0, 0.9, 0.0), (40, 1.0, 0.0), (40, 0.8, 0.0), (0, 1.0, 0.05),
                                                 (20, 0.7, 0.02)])
def test_matches_hf_warpers(top_k, top_p, min_p, seed):
    x = torch.randn(32, 500, dtype=torch.float64) * 2
    hf = _hf_warp(x, 0.8, top_k, top_p, min_p)
    b = torch.ones(32)
    ref = reference_filter(x, b * 0.8, b.long() * top_k, b * top_p, b * min_p)
    assert torch.equal(hf > 0, ref > 0)
    torch.testing.assert_close(ref, hf, rtol=1e-6, atol=1e-9)  # the reference rounds x to float32 first
    for backend in FAST:
        with pyllmops.use_backend(backend):
            got = pyllmops.top_k_top_p_filter(x.float(), 0.8, top_k, top_p, min_p)
        assert torch.equal(got > 0, hf > 0), backend


@pytest.mark.parametrize("backend", BACKENDS)
def test_ties(backend):
    x = torch.tensor([[3.0, 2.0, 2.0, 2.0, 1.0, 0.0],     # top-k 2: ties at the k-th value kept (HF)
                      [1.0, 1.0, 1.0, 1.0, 0.0, -1.0]])   # top-p 0.3: the whole tied head is kept
    with pyllmops.use_backend(backend):
        probs = pyllmops.top_k_top_p_filter(x, 1.0, torch.tensor([2, 0]), torch.tensor([1.0, 0.3]))
    assert torch.equal(probs > 0, torch.tensor([[True, True, True, True, False, False],
                                                [True, True, True, True, False, False]]))
    torch.testing.assert_close(probs[1, :4], torch.full((4,), 0.25))


def test_philox_known_answers():
    """Random123's philox4x32_R(10) known-answer vectors, for the torch definition and the C++ one."""
    kat = [((0, 0, 0, 0), (0, 0), (0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8)),
           ((0xffffffff,) * 4, (0xffffffff,) * 2, (0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd)),
           ((0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344), (0xa4093822, 0x299f31d0),
            (0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1))]
    for ctr, key, want in kat:
        seed = key[0] | (key[1] << 32)
        seed = seed - 2**64 if seed >= 2**63 else seed
        got = philox4x32(torch.tensor([seed]), *(torch.tensor([c]) for c in ctr))
        assert tuple(int(g) for g in got) == want
        if "cpp" in BACKENDS:
            from pyllmops import _ext
            assert _ext.cpp().philox4x32(*ctr, *key) == want


@pytest.mark.skipif("cpp" not in BACKENDS, reason="C++ core not built")
def test_uniforms_identical_in_cpp():
    from pyllmops import _ext

    s = torch.randint(-2**63, 2**63 - 1, (300,))
    o = torch.randint(-2**62, 2**62, (300,))
    u = row_uniforms(s, o)
    assert all(_ext.cpp().row_uniform(int(a), int(b)) == float(c) for a, b, c in zip(s, o, u))
    assert float(u.min()) >= 0 and float(u.max()) < 1


def test_seeds(seed):
    x = torch.randn(8, 100)
    torch.manual_seed(seed)
    a = pyllmops.sample(x, 1.0, 0, 0.95)
    torch.manual_seed(seed)
    assert torch.equal(pyllmops.sample(x, 1.0, 0, 0.95), a)  # seed=None: torch's generator decides
    assert torch.equal(pyllmops.sample(x, seed=5), pyllmops.sample(x, seed=torch.arange(8) + 5))
    draws = pyllmops.sample(x[:1].expand(64, -1), seed=3, offset=torch.arange(64))
    assert draws.unique().numel() > 5  # the offset moves the stream


def test_compiles_fullgraph():
    def f(x, t, s):
        return pyllmops.sample(x, t, 20, 0.9, seed=s, offset=3)

    x, t, s = torch.randn(4, 64), torch.full((4,), 0.8), torch.arange(4)
    assert torch.equal(torch.compile(f, fullgraph=True, backend="eager")(x, t, s), f(x, t, s))
    assert "sample" in dir(torch.ops.pyllmops)


@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_values(backend):
    x = torch.randn(4, 30)
    with pyllmops.use_backend(backend):
        for row, bad in [(2, float("nan")), (1, float("inf"))]:
            y = x.clone()
            y[row, 5] = bad
            with pytest.raises(ValueError, match=f"logits row {row} contains NaN"):
                pyllmops.sample(y, seed=0)
        y = x.clone()
        y[3] = float("-inf")
        with pytest.raises(ValueError, match="logits row 3 is all -inf"):
            pyllmops.sample(y, seed=0)
        with pytest.raises(ValueError, match="logits row 3 is all -inf"):
            pyllmops.top_k_top_p_filter(y)
        for name, values in [("temperature", [1.0, -1.0, 1.0, 1.0]), ("temperature", [1.0, float("nan"), 1, 1]),
                             ("top_p", [0.5, 0.5, 0.0, 0.5]), ("top_p", [1.5, 0.5, 0.5, 0.5]),
                             ("min_p", [0.0, 0.0, 0.0, 1.5])]:
            with pytest.raises(ValueError, match=name):
                pyllmops.sample(x, **{name: torch.tensor(values)}, seed=0)


@pytest.mark.parametrize("kwargs, exc, name", [
    (dict(temperature=-0.5), ValueError, "temperature"),
    (dict(top_p=0.0), ValueError, "top_p"),
    (dict(top_p=1.01), ValueError, "top_p"),
    (dict(min_p=-0.1), ValueError, "min_p"),
    (dict(top_k=2.5), TypeError, "top_k"),
    (dict(top_k=torch.tensor([2.0, 3.0, 4.0, 5.0])), TypeError, "top_k"),
    (dict(top_k=True), TypeError, "top_k"),
    (dict(temperature=torch.ones(3)), ValueError, "temperature"),
    (dict(top_p=torch.ones(4, 1)), ValueError, "top_p"),
    (dict(seed=torch.zeros(4, device="meta", dtype=torch.int64)), ValueError, "seed"),
    (dict(offset=torch.zeros(4)), TypeError, "offset"),
    (dict(seed=1.5), TypeError, "seed"),
    (dict(seed=2**64), ValueError, "seed"),
])
def test_bad_arguments(kwargs, exc, name):
    with pytest.raises(exc, match=name):
        pyllmops.sample(torch.randn(4, 30), **kwargs)


def test_bad_logits():
    with pytest.raises(ValueError, match="logits"):
        pyllmops.sample(torch.randn(30))
    with pytest.raises(TypeError, match="logits"):
        pyllmops.sample(torch.zeros(2, 30, dtype=torch.int32))


_COMPILE_SCRIPT = """
import sys
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from pyllmops.kernels.sampling import _sample_row

sig = {"x_ptr": "*bf16", "ids_ptr": "*i64", "probs_ptr": "*fp32", "t_ptr": "*fp32", "k_ptr": "*i64",
       "p_ptr": "*fp32", "q_ptr": "*fp32", "seed_ptr": "*i64", "off_ptr": "*i64", "V": "i32", "stride": "i32",
       "WANT_PROBS": "constexpr", "BLOCK": "constexpr", "DIG": "constexpr"}
for cap in map(int, sys.argv[1:]):
    src = ASTSource(fn=_sample_row, signature=sig, constexprs={"WANT_PROBS": True, "BLOCK": 1024, "DIG": 16})
    assert "sample_row" in triton.compile(src, target=GPUTarget("cuda", cap, 32)).asm["ptx"]
"""


@pytest.mark.slow
def test_triton_kernel_compiles_for_gpu():
    """No GPU here: lower the kernel to PTX/cubin for sm_80 and sm_90 so the compiled path (not only
    the interpreter) is checked. In a subprocess: the compiler needs TRITON_INTERPRET unset."""
    import os
    import subprocess
    import sys

    pytest.importorskip("triton")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, "-c", _COMPILE_SCRIPT, "80", "90"], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
