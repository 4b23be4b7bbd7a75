"""Temperature / top-k / top-p / min-p sampling, seeded per row.

    sample(logits [B, V] fp32/fp16/bf16, temperature, top_k, top_p, min_p=None, seed=None,
           offset=None) -> ids [B] int64
    top_k_top_p_filter(logits, temperature=1.0, top_k=0, top_p=1.0, min_p=None) -> probs [B, V] fp32

Every parameter is a Python scalar or a per-row tensor [B] on the logits' device.

The filtered distribution of one row (HF transformers' warper order and semantics):
  x = float32(logits[row]); m = max(x)
  temperature t == 0  -> greedy: the first index of the maximum (no randomness, filters ignored)
  top-k k (0 < k < V) -> keep x_i >= the k-th largest x (ties at the k-th value are all kept;
                         k <= 0 or k >= V disables it)
  w_i = exp((x_i - m) / t) in float32 for the survivors, 0 for the others; Z = sum(w)
  top-p p (p < 1)     -> keep w_i iff the mass of the weights strictly greater than w_i is < p * Z
                         (the smallest head of the distribution reaching p, ties kept; the most
                         probable token always survives; p = 1 disables it)
  min-p q (q > 0)     -> keep w_i >= q (w is relative to the top token, so this is HF's
                         "prob >= min_p * max prob"); None or 0 disables it
The kept weights renormalised are the distribution (top_k_top_p_filter returns exactly that).

Drawing: one uniform per row, u = Philox4x32-10(key=seed[row], counter=(offset[row], 0)) mapped to
[0, 1) with 53 bits (pyllmops/ops/philox.py). The token is the inverse CDF over the kept set in
vocabulary order: the first kept i whose running sum of kept weights (in vocabulary order) exceeds
u * W, W the kept total (the last kept token if rounding leaves none). A row's token is therefore a
function of its logits, parameters, seed and offset only: the same whatever else is in the batch,
and no host RNG state is touched (safe under CUDA graphs). seed=None draws the seeds from torch's
generator for the logits' device; a scalar seed s means seed[row] = s + row.

Backends compute the same kept set and the same u (bit-identical Philox), so they return the same
token except when float rounding decides: a running sum (or p * Z) within rounding of a boundary,
where the summation order differs (cpp and torch sum in float64, Triton and CUDA in float32) or the
float32 exp differs by an ulp or two (cpp uses its own vectorised polynomial and multiplies by 1 / t;
compiled Triton's tl.exp is ex2.approx.f32, and its probabilities divide with div.full.f32, so
top_k_top_p_filter's probabilities agree across backends to float32 tolerance, not bit for bit).
Within one backend the result is bit-reproducible whatever the batch; the cpp backend's also
whatever the thread count (torch.get_num_threads()) and instruction set (AVX-512, AVX2 or
neither). Ties at the top-p boundary: HF's sort keeps an arbitrary part of a tied group; here the
whole group is kept, as top-k does.

CPU calls: in eager mode on CPU tensors, sample() calls the C++ kernel directly (no custom-op
dispatch, Python scalars passed as scalars, a few microseconds per call); under torch.compile, or
with another backend forced, it goes through the custom op pyllmops::sample. Both run the same
kernel with the same checks.

Errors: a row with NaN or +inf, a row of only -inf, temperature < 0 or NaN, top_p outside (0, 1],
min_p outside [0, 1], a non-integer top_k, per-row tensors of the wrong shape, dtype or device.
"""
from __future__ import annotations

import numbers
from typing import Union

import torch

from pyllmops import _ext
from pyllmops.ops import _dispatch
from pyllmops.ops._validate import FLOAT_DTYPES, check_tensor
from pyllmops.ops.philox import row_uniforms

Param = Union[float, int, torch.Tensor, None]
INT_DTYPES = (torch.int32, torch.int64)
# Row status codes a backend returns in place of a token (csrc/cpu/sampling.h); the front door
# turns them into errors.
BAD_VALUE, ALL_NEG_INF, BAD_TEMPERATURE, BAD_TOP_P, BAD_MIN_P = -1, -2, -3, -4, -5
TOPK_FIRST_MAX = 1024  # the torch fallback takes torch.topk first up to this k


# ----------------------------------------------------------------------------- arguments
def _check_scalar(name: str, value: object, integer: bool) -> None:
    """Type (and int64 range) of a Python scalar parameter."""
    if integer:
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise TypeError(f"{name} must be an int or an int tensor, got {type(value).__name__}")
        if not -2**63 <= int(value) < 2**63:
            raise ValueError(f"{name} must fit in int64, got {value}")
    elif isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a float or a float tensor, got {type(value).__name__}")


def _per_row(name: str, value: Param, b: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """A scalar or [B] tensor -> a contiguous [B] tensor of `dtype` on `device` (shape/dtype/device
    checks only; value ranges are checked on real data, by the kernels or _status)."""
    integer = dtype == torch.int64
    if isinstance(value, torch.Tensor):
        allowed = INT_DTYPES if integer else FLOAT_DTYPES + (torch.float64,)
        check_tensor(name, value, dtypes=allowed, ndim=(0, 1), device=device)
        if value.dim() == 1 and value.shape[0] != b:
            raise ValueError(f"{name} must be a scalar or have shape ({b},) (one per row), got {tuple(value.shape)}")
        return value.to(dtype).expand(b).contiguous()
    _check_scalar(name, value, integer)
    return torch.full((b,), value, dtype=dtype, device=device)


def _check_ranges(temperature: Param, top_p: Param, min_p: Param) -> None:
    """Range checks of Python scalar parameters (tensors are checked on their values by the kernels)."""
    for name, value, ok in (("temperature", temperature, lambda x: x >= 0),
                            ("top_p", top_p, lambda x: 0 < x <= 1),
                            ("min_p", min_p, lambda x: 0 <= x <= 1)):
        if isinstance(value, numbers.Real) and not isinstance(value, bool) and not ok(value):
            raise ValueError(f"{name} out of range: {value} (temperature >= 0, top_p in (0, 1], min_p in [0, 1])")


def _status(x: torch.Tensor, temperature: torch.Tensor, top_p: torch.Tensor, min_p: torch.Tensor) -> torch.Tensor:
    """Row status codes [B] int64 (0 = fine) for the pure-torch backends; the kernels compute the
    same codes themselves, so the front door needs one check of the ids whatever the backend."""
    status = torch.zeros(x.shape[0], dtype=torch.int64, device=x.device)
    status = torch.where((x == float("-inf")).all(-1), ALL_NEG_INF, status)
    status = torch.where((torch.isnan(x) | (x == float("inf"))).any(-1), BAD_VALUE, status)
    status = torch.where((min_p >= 0) & (min_p <= 1), status, BAD_MIN_P)
    status = torch.where((top_p > 0) & (top_p <= 1), status, BAD_TOP_P)
    return torch.where((temperature >= 0) & torch.isfinite(temperature), status, BAD_TEMPERATURE)


def _check_status(ids: torch.Tensor, temperature: torch.Tensor, top_p: torch.Tensor, min_p: torch.Tensor) -> None:
    """Raise for the first row a backend flagged (ids < 0). One sync on GPU; skipped while a CUDA
    graph is being captured (the flagged rows then hold the negative codes)."""
    if ids.is_cuda and torch.cuda.is_current_stream_capturing():
        return
    bad = ids < 0
    if bool(bad.any()):
        row = int(bad.nonzero()[0, 0])
        _raise_row(row, int(ids[row]), temperature, top_p, min_p)


def _raise_row(row: int, code: int, temperature: Param, top_p: Param, min_p: Param) -> None:
    """The error for status `code` of row `row` (parameters: scalars or [B] tensors)."""
    def at(v):
        return float(v[row]) if isinstance(v, torch.Tensor) and v.dim() == 1 else float(v)

    messages = {
        BAD_VALUE: lambda: f"logits row {row} contains NaN or +inf",
        ALL_NEG_INF: lambda: f"logits row {row} is all -inf (nothing to sample)",
        BAD_TEMPERATURE: lambda: f"temperature must be finite and >= 0 (0 = greedy), got {at(temperature)} (row {row})",
        BAD_TOP_P: lambda: f"top_p must be in (0, 1] (1 disables it), got {at(top_p)} (row {row})",
        BAD_MIN_P: lambda: f"min_p must be in [0, 1] (0 disables it), got {at(min_p)} (row {row})",
    }
    raise ValueError(messages[code]() if code in messages else f"sampling failed in row {row} (status {code})")


def _topk_enabled(top_k: torch.Tensor, v: int) -> torch.Tensor:
    return (top_k > 0) & (top_k < v)


# ----------------------------------------------------------------------------- reference
def reference_filter(logits: torch.Tensor, temperature: torch.Tensor, top_k: torch.Tensor,
                     top_p: torch.Tensor, min_p: torch.Tensor, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """The definition, sort-based: probs [B, V] in `dtype` (float64: the exact oracle). Greedy rows
    are one-hot at the first maximum."""
    x = logits.float().to(dtype)
    b, v = x.shape
    m = x.max(-1, keepdim=True).values
    t = temperature.to(dtype)[:, None]
    greedy = t == 0
    w = torch.exp((x - m) / torch.where(greedy, torch.ones_like(t), t))
    k = torch.where(_topk_enabled(top_k, v), top_k, v)[:, None]
    kth = x.sort(-1, descending=True).values.gather(1, k - 1)
    w = torch.where(x >= kth, w, torch.zeros_like(w))
    sw = w.sort(-1, descending=True).values
    csum = sw.double().cumsum(-1)
    above = torch.cat([torch.zeros_like(csum[:, :1]), csum[:, :-1]], 1)  # mass strictly before each
    p = top_p.double()[:, None]
    n_kept = (above < p * csum[:, -1:]).sum(-1, keepdim=True).clamp(min=1)
    tau = torch.where(p >= 1, torch.zeros_like(sw[:, :1]), sw.gather(1, n_kept - 1))
    tau = torch.maximum(tau, min_p.to(dtype)[:, None])
    w = torch.where(w >= tau, w, torch.zeros_like(w))
    probs = w / w.sum(-1, keepdim=True)
    onehot = torch.nn.functional.one_hot(x.argmax(-1), v).to(dtype)
    return torch.where(greedy, onehot, probs)


def _inverse_cdf(w: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """w [B, C] >= 0 kept weights in vocabulary order, u [B] -> position [B] of the first running
    sum (float64) > u * total; the last positive weight when rounding leaves none."""
    c = w.double().cumsum(-1)
    pos = (c <= (u * c[:, -1])[:, None]).sum(-1)
    last = (w > 0).long().cumsum(-1).argmax(-1)  # first index reaching the final count = last positive
    return torch.minimum(pos, last)


@_dispatch.register("sample", "reference")
def _reference_sample(logits, temperature, top_k, top_p, min_p, seed, offset):
    x = logits.float()
    probs = reference_filter(x, temperature, top_k, top_p, min_p)
    ids = _inverse_cdf(probs, row_uniforms(seed, offset))
    ids = torch.where(temperature == 0, x.argmax(-1), ids)
    status = _status(x, temperature, top_p, min_p)
    return torch.where(status < 0, status, ids)


@_dispatch.register("top_k_top_p_filter", "reference")
def _reference_filter(logits, temperature, top_k, top_p, min_p):
    return reference_filter(logits, temperature, top_k, top_p, min_p).float()


# ----------------------------------------------------------------------------- torch fallback
def _top_k_first(x: torch.Tensor, top_k: torch.Tensor):
    """(values [B, C], vocab ids [B, C], k-th largest [B, 1]), candidates in vocabulary order
    holding every top-k survivor, from torch.topk, when every row has a small k and no row has
    ties past its k-th value; else None."""
    v = x.shape[1]
    if not bool(_topk_enabled(top_k, v).all()) or int(top_k.max()) > TOPK_FIRST_MAX:
        return None
    vals, ids = torch.topk(x, int(top_k.max()), dim=-1)
    kth = vals.gather(1, top_k[:, None] - 1)
    if not bool(((x >= kth).sum(-1) <= vals.shape[1]).all()):
        return None
    ids, order = ids.sort(-1)
    return vals.gather(1, order), ids, kth


def _torch_weights(x: torch.Tensor, temperature, top_k, top_p, min_p):
    """x [B, V] float32 -> (kept weights w [B, C] float32 in vocabulary order, their vocab ids
    [B, C], or None when C = V). On the top-k candidates when k is small, else on the whole row."""
    b, v = x.shape
    cand = _top_k_first(x, top_k)
    if cand is not None:
        vals, ids, kth = cand
    else:
        vals, ids = x, None
        k = torch.where(_topk_enabled(top_k, v), top_k, v)
        kth = x.sort(-1, descending=True).values.gather(1, k[:, None] - 1) if bool((k < v).any()) \
            else torch.full((b, 1), float("-inf"), device=x.device)
    t = torch.where(temperature == 0, torch.ones_like(temperature), temperature)[:, None]
    m = x.max(-1, keepdim=True).values
    w = torch.where(vals >= kth, torch.exp((vals - m) / t), torch.zeros_like(vals))
    tau = min_p[:, None]
    if bool((top_p < 1).any()):
        sw = w.sort(-1, descending=True).values
        csum = sw.double().cumsum(-1)
        above = torch.cat([torch.zeros_like(csum[:, :1]), csum[:, :-1]], 1)  # mass strictly before each
        p = top_p.double()[:, None]
        n_kept = (above < p * csum[:, -1:]).sum(-1, keepdim=True).clamp(min=1)
        tau = torch.maximum(tau, torch.where(p >= 1, torch.zeros_like(sw[:, :1]), sw.gather(1, n_kept - 1)))
    return torch.where(w >= tau, w, torch.zeros_like(w)), ids


@_dispatch.register("sample", "torch")
def _torch_sample(logits, temperature, top_k, top_p, min_p, seed, offset):
    x = logits.float()
    w, ids = _torch_weights(x, temperature, top_k, top_p, min_p)
    pos = _inverse_cdf(w, row_uniforms(seed, offset))
    out = pos if ids is None else ids.gather(1, pos[:, None])[:, 0]
    out = torch.where(temperature == 0, x.argmax(-1), out)
    status = _status(x, temperature, top_p, min_p)
    return torch.where(status < 0, status, out)


@_dispatch.register("top_k_top_p_filter", "torch")
def _torch_probs(logits, temperature, top_k, top_p, min_p):
    x = logits.float()
    w, ids = _torch_weights(x, temperature, top_k, top_p, min_p)
    w = w / w.sum(-1, keepdim=True)
    probs = w if ids is None else torch.zeros_like(x).scatter_(1, ids, w)
    onehot = torch.nn.functional.one_hot(x.argmax(-1), x.shape[1]).float()
    return torch.where(temperature[:, None] == 0, onehot, probs)


# ----------------------------------------------------------------------------- cpp / triton / cuda
_DTYPE_CODES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}
# Below this many logits a call runs on one thread. The rows (or a row's segments) run on
# OpenMP's team, torch's threads, which are still spinning from the op that produced the logits,
# so handing work over costs ~1 us. Measured on the 2-core CI machine (SCHED_FIFO, fresh logits,
# temperature 0.7): top-p 0.9 on 8 x 32000 75 us on 2 threads vs 139 us on one; 1 x 151936 53 vs
# 82 us; top-k 50 + top-p 0.9 on 1 x 128256 13 vs 23 us. (With a pool of our own, woken per call,
# 2 threads were slower than one below ~1M logits.)
PARALLEL_MIN_LOGITS = 1 << 16


def _threads(logits: torch.Tensor) -> int:
    return torch.get_num_threads() if logits.numel() >= PARALLEL_MIN_LOGITS else 1


def _native_args(logits, temperature, top_k, top_p, min_p, seed, offset):
    b, v = logits.shape
    return (logits.data_ptr(), _DTYPE_CODES[logits.dtype], b, v, logits.stride(0), temperature.data_ptr(),
            top_k.data_ptr(), top_p.data_ptr(), min_p.data_ptr(), seed.data_ptr(), offset.data_ptr())


def _cpp_run(logits, temperature, top_k, top_p, min_p, seed, offset, probs):
    b, v = logits.shape
    ids = torch.empty(b, dtype=torch.int64)
    _ext.cpp().sample_rows(logits.data_ptr(), _DTYPE_CODES[logits.dtype], b, v, logits.stride(0),
                           temperature.data_ptr(), 0.0, top_k.data_ptr(), 0, top_p.data_ptr(), 0.0, min_p.data_ptr(),
                           0.0, seed.data_ptr(), 0, offset.data_ptr(), 0, ids.data_ptr(),
                           probs.data_ptr() if probs is not None else 0, _threads(logits))
    return ids


@_dispatch.register("sample", "cpp", devices=("cpu",))
def _cpp_sample(logits, temperature, top_k, top_p, min_p, seed, offset):
    return _cpp_run(logits, temperature, top_k, top_p, min_p, seed, offset, None)


@_dispatch.register("top_k_top_p_filter", "cpp", devices=("cpu",))
def _cpp_probs(logits, temperature, top_k, top_p, min_p):
    probs = torch.empty(logits.shape, dtype=torch.float32)
    zeros = torch.zeros(logits.shape[0], dtype=torch.int64)
    _cpp_run(logits, temperature, top_k, top_p, min_p, zeros, zeros, probs)
    return probs


@_dispatch.register("sample", "triton")
def _triton_sample(logits, temperature, top_k, top_p, min_p, seed, offset):
    from pyllmops.kernels.sampling import sample_rows

    return sample_rows(logits, temperature, top_k, top_p, min_p, seed, offset)[0]


@_dispatch.register("top_k_top_p_filter", "triton")
def _triton_probs(logits, temperature, top_k, top_p, min_p):
    from pyllmops.kernels.sampling import sample_rows

    zeros = torch.zeros(logits.shape[0], dtype=torch.int64, device=logits.device)
    return sample_rows(logits, temperature, top_k, top_p, min_p, zeros, zeros, want_probs=True)[1]


def _cuda_run(logits, temperature, top_k, top_p, min_p, seed, offset, probs):
    ids = torch.empty(logits.shape[0], dtype=torch.int64, device=logits.device)
    _ext.cuda().sample_rows(*_native_args(logits, temperature, top_k, top_p, min_p, seed, offset), ids.data_ptr(),
                            probs.data_ptr() if probs is not None else 0,
                            torch.cuda.current_stream(logits.device).cuda_stream)
    return ids


@_dispatch.register("sample", "cuda", devices=("cuda",))
def _cuda_sample(logits, temperature, top_k, top_p, min_p, seed, offset):
    return _cuda_run(logits, temperature, top_k, top_p, min_p, seed, offset, None)


@_dispatch.register("top_k_top_p_filter", "cuda", devices=("cuda",))
def _cuda_probs(logits, temperature, top_k, top_p, min_p):
    probs = torch.empty(logits.shape, dtype=torch.float32, device=logits.device)
    zeros = torch.zeros(logits.shape[0], dtype=torch.int64, device=logits.device)
    _cuda_run(logits, temperature, top_k, top_p, min_p, zeros, zeros, probs)
    return probs


# ----------------------------------------------------------------------------- front doors
@torch.library.custom_op("pyllmops::sample", mutates_args=())
def _sample_op(logits: torch.Tensor, temperature: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor,
               min_p: torch.Tensor, seed: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
    ids = _dispatch.call("sample", logits.device, logits, temperature, top_k, top_p, min_p, seed, offset)
    _check_status(ids, temperature, top_p, min_p)
    return ids


@_sample_op.register_fake
def _(logits, temperature, top_k, top_p, min_p, seed, offset):
    return logits.new_empty((logits.shape[0],), dtype=torch.int64)


@torch.library.custom_op("pyllmops::top_k_top_p_filter", mutates_args=())
def _filter_op(logits: torch.Tensor, temperature: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor,
               min_p: torch.Tensor) -> torch.Tensor:
    _check_status(_status(logits.float(), temperature, top_p, min_p), temperature, top_p, min_p)
    return _dispatch.call("top_k_top_p_filter", logits.device, logits, temperature, top_k, top_p, min_p)


@_filter_op.register_fake
def _(logits, temperature, top_k, top_p, min_p):
    return logits.new_empty(logits.shape, dtype=torch.float32)


def _prepare(logits, temperature, top_k, top_p, min_p):
    check_tensor("logits", logits, dtypes=FLOAT_DTYPES, ndim=2)
    if logits.stride(-1) != 1:
        logits = logits.contiguous()
    b, dev = logits.shape[0], logits.device
    _check_ranges(temperature, top_p, min_p)
    return (logits, _per_row("temperature", temperature, b, dev, torch.float32),
            _per_row("top_k", top_k, b, dev, torch.int64), _per_row("top_p", top_p, b, dev, torch.float32),
            _per_row("min_p", 0.0 if min_p is None else min_p, b, dev, torch.float32))


def _cpp_eager(logits: torch.Tensor) -> bool:
    """Whether sample() may call the C++ kernel directly: real CPU tensors, not under torch.compile
    or torch.jit.trace (which need the custom op), and cpp is the backend the dispatcher would pick."""
    if (type(logits) is not torch.Tensor or not logits.is_cpu or torch.compiler.is_compiling()
            or torch.jit.is_tracing()):
        return False
    forced = _dispatch.forced_backends()
    return (forced is None or forced[:1] == ("cpp",)) and _ext.has_cpp()


def _kernel_arg(name: str, value: Param, b: int, dtype: torch.dtype, keep: list):
    """(address, scalar) of a parameter for the C++ kernel: a tensor's [B] copy (kept alive in
    `keep`) or a checked Python scalar, which the kernel broadcasts without a tensor."""
    kind = type(value)
    if kind is int and -2**63 <= value < 2**63 or kind is float and dtype is torch.float32:
        return 0, value  # the common case, without the slower generic checks
    if isinstance(value, torch.Tensor):
        if (value.dtype is dtype and value.is_cpu and value.dim() == 1 and value.shape[0] == b
                and value.is_contiguous() and type(value) is torch.Tensor):
            return value.data_ptr(), 0  # already what the kernel reads
        t = _per_row(name, value, b, torch.device("cpu"), dtype)
        keep.append(t)
        return t.data_ptr(), 0
    _check_scalar(name, value, dtype is torch.int64)
    return 0, value


_INT64_LIMIT = 2 ** 63
_IDS = torch.empty(0, dtype=torch.int64)  # new_empty on it allocates ids faster than torch.empty(dtype=...)


def _sample_cpp_eager(logits, temperature, top_k, top_p, min_p, seed, offset):
    """sample() on the CPU without the custom-op dispatch and without per-call parameter tensors:
    the same kernel and checks as the op path, a few microseconds per call instead of ~50. Python
    floats and ints in range (the usual arguments) pass straight through as kernel scalars; anything
    else takes _kernel_arg's checks."""
    code = _DTYPE_CODES.get(logits.dtype)
    if code is None or logits.dim() != 2 or logits.numel() == 0:
        check_tensor("logits", logits, dtypes=FLOAT_DTYPES, ndim=2)
    b, v = logits.shape
    ld, unit = logits.stride()
    if unit != 1:
        logits = logits.contiguous()
        ld = v
    keep = []
    t, k, p, q = temperature, top_k, top_p, 0.0 if min_p is None else min_p
    s, o = seed, 0 if offset is None else offset
    t_ptr = k_ptr = p_ptr = q_ptr = s_ptr = o_ptr = 0
    if type(t) is not float or not t >= 0:
        t_ptr, t = _kernel_arg("temperature", t, b, torch.float32, keep)
    if type(k) is not int or not -_INT64_LIMIT <= k < _INT64_LIMIT:
        k_ptr, k = _kernel_arg("top_k", k, b, torch.int64, keep)
    if type(p) is not float or not 0 < p <= 1:
        p_ptr, p = _kernel_arg("top_p", p, b, torch.float32, keep)
    if type(q) is not float or not 0 <= q <= 1:
        q_ptr, q = _kernel_arg("min_p", q, b, torch.float32, keep)
    if not (t_ptr or t >= 0) or not (p_ptr or 0 < p <= 1) or not (q_ptr or 0 <= q <= 1):
        _check_ranges(temperature, top_p, min_p)
    if s is None:
        s = torch.randint(-2**63, 2**63 - 1, (b,), dtype=torch.int64)
        keep.append(s)  # s is rebound to the kernel's scalar below
    if type(s) is not int or not -_INT64_LIMIT <= s < _INT64_LIMIT:
        s_ptr, s = _kernel_arg("seed", s, b, torch.int64, keep)
    if type(o) is not int or not -_INT64_LIMIT <= o < _INT64_LIMIT:
        o_ptr, o = _kernel_arg("offset", o, b, torch.int64, keep)
    ids = _IDS.new_empty(b)
    bad = _ext.cpp().sample_rows(logits.data_ptr(), code, b, v, ld, t_ptr, t, k_ptr, k, p_ptr, p, q_ptr, q,
                                 s_ptr, s, o_ptr, o, ids.data_ptr(), 0, _threads(logits))
    if bad >= 0:
        _raise_row(bad, int(ids[bad]), temperature, top_p, min_p)
    return ids


def sample(logits: torch.Tensor, temperature: Param = 1.0, top_k: Param = 0, top_p: Param = 1.0,
           min_p: Param = None, seed: Param = None, offset: Param = None) -> torch.Tensor:
    """Draw one token per row: logits [B, V] fp32/fp16/bf16 -> ids [B] int64.

    temperature (>= 0, 0 = greedy), top_k (int, <= 0 or >= V disables), top_p (in (0, 1], 1
    disables), min_p (in [0, 1], None/0 disables), seed and offset (int64): Python scalars or [B]
    tensors on the logits' device. See the module docstring for the exact definition."""
    if _cpp_eager(logits):
        return _sample_cpp_eager(logits, temperature, top_k, top_p, min_p, seed, offset)
    logits, t, k, p, q = _prepare(logits, temperature, top_k, top_p, min_p)
    b, dev = logits.shape[0], logits.device
    if seed is None:
        seeds = torch.randint(-2**63, 2**63 - 1, (b,), dtype=torch.int64, device=dev)
    elif isinstance(seed, torch.Tensor):
        seeds = _per_row("seed", seed, b, dev, torch.int64)
    else:
        _per_row("seed", seed, 1, dev, torch.int64)  # type and range check
        seeds = torch.arange(b, dtype=torch.int64, device=dev) + seed  # wraps like int64
    offsets = _per_row("offset", 0 if offset is None else offset, b, dev, torch.int64)
    return torch.ops.pyllmops.sample(logits, t, k, p, q, seeds, offsets)


def top_k_top_p_filter(logits: torch.Tensor, temperature: Param = 1.0, top_k: Param = 0, top_p: Param = 1.0,
                       min_p: Param = None) -> torch.Tensor:
    """The filtered, renormalised distribution sample() draws from: probs [B, V] float32 (zero
    outside the kept set; one-hot at the first maximum for temperature 0)."""
    return torch.ops.pyllmops.top_k_top_p_filter(*_prepare(logits, temperature, top_k, top_p, min_p))
