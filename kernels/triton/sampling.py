"""Sorting-free sampling: one program per row, thresholds found by radix search.

The definition is pyllmops/ops/sampling.py's. Passes over the row (BLOCK-wide chunks, so any V up
to 2**31 works with bounded registers; rows after the first pass come from L2 on a GPU):

  1      max, NaN/+inf check (greedy rows stop here: first index of the max)
  8      top-k (when on): the k-th largest x by radix search on an order-preserving 32-bit key,
         4 bits per pass: each pass counts x >= 16 candidate keys at once ([BLOCK, 16] compare)
  1 + 8  top-p (when on): Z = sum of surviving w = exp((x - m) / t), then the same radix search
         on w's bits for the largest key K whose strictly-greater mass is still >= p * Z: the kept
         tokens are those with key(w) > K
  2      W = kept mass; inverse CDF in vocabulary order (tl.cumsum per chunk + a running total)

Randomness is tl.philox, which is Philox4x32-10 with the key taken from the 64-bit seed exactly
as pyllmops/ops/philox.py does. Sums are float32 (the C++ kernel sums in float64).
"""
import torch
import triton
import triton.language as tl

from pyllmops.ops import sampling as _codes

DIGITS = 16  # candidates per radix pass (4 bits)
# Row status codes (pyllmops/ops/sampling.py), as constexpr globals so compiled kernels can read them.
BAD_VALUE = tl.constexpr(_codes.BAD_VALUE)
ALL_NEG_INF = tl.constexpr(_codes.ALL_NEG_INF)
BAD_TEMPERATURE = tl.constexpr(_codes.BAD_TEMPERATURE)
BAD_TOP_P = tl.constexpr(_codes.BAD_TOP_P)
BAD_MIN_P = tl.constexpr(_codes.BAD_MIN_P)


@triton.jit
def _x_key(x):
    """float32 -> int64 in [0, 2**32), monotone in x (-inf lowest)."""
    b = x.to(tl.int32, bitcast=True)
    b = tl.where(b < 0, b ^ 0x7FFFFFFF, b)
    return b.to(tl.int64) + 2147483648


@triton.jit
def _weights(x, m, t, keep_key, x_key_min):
    """w = exp((x - m) / t) for the top-k survivors (x_key >= x_key_min), else 0."""
    w = tl.exp(tl.math.div_rn(x - m, t))
    return tl.where((_x_key(x) >= x_key_min) & keep_key, w, 0.0)


@triton.jit
def _sample_row(x_ptr, ids_ptr, probs_ptr, t_ptr, k_ptr, p_ptr, q_ptr, seed_ptr, off_ptr, V, stride,
                WANT_PROBS: tl.constexpr, BLOCK: tl.constexpr, DIG: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    x_row = x_ptr + row * stride
    offs = tl.arange(0, BLOCK)
    digits = tl.arange(0, DIG).to(tl.int64)
    t = tl.load(t_ptr + row)
    k = tl.load(k_ptr + row)
    p = tl.load(p_ptr + row)
    q = tl.load(q_ptr + row)

    # pass 1: max and bad values
    mx = tl.full([BLOCK], float("-inf"), tl.float32)
    nbad = tl.zeros([BLOCK], tl.int32)
    for start in range(0, V, BLOCK):
        x = tl.load(x_row + start + offs, mask=start + offs < V, other=float("-inf")).to(tl.float32)
        nbad += ((x != x) | (x == float("inf"))).to(tl.int32)
        mx = tl.maximum(mx, x)
    m = tl.max(mx, axis=0)
    status = tl.where(tl.sum(nbad, axis=0) > 0, BAD_VALUE, 0)
    status = tl.where((status == 0) & (m == float("-inf")), ALL_NEG_INF, status)
    status = tl.where((q >= 0.0) & (q <= 1.0), status, BAD_MIN_P)
    status = tl.where((p > 0.0) & (p <= 1.0), status, BAD_TOP_P)
    status = tl.where((t >= 0.0) & (t < float("inf")), status, BAD_TEMPERATURE)
    greedy = t == 0.0
    t_safe = tl.where(greedy | (status != 0), 1.0, t)
    m_safe = tl.where(status != 0, 0.0, m)

    # top-k: largest key with count(x_key >= key) >= k, 4 bits per pass
    kmin = tl.zeros([], tl.int64)
    if (k > 0) & (k < V) & (status == 0) & (t > 0.0):
        for step in range(8):
            shift = 28 - 4 * step
            cand = kmin + (digits << shift)
            cnt = tl.zeros([DIG], tl.int64)
            for start in range(0, V, BLOCK):
                x = tl.load(x_row + start + offs, mask=start + offs < V, other=float("-inf")).to(tl.float32)
                key = tl.where(start + offs < V, _x_key(x), -1)
                cnt += tl.sum((key[:, None] >= cand[None, :]).to(tl.int64), axis=0)
            kmin += tl.maximum(tl.sum((cnt >= k).to(tl.int64), axis=0) - 1, 0) << shift

    # top-p: largest w key K whose strictly-greater mass is >= p * Z; kept = key(w) > K
    wkey_min = tl.zeros([], tl.int64)  # keep w's key >= wkey_min
    if (p < 1.0) & (status == 0) & (t > 0.0):
        zacc = tl.zeros([BLOCK], tl.float32)
        for start in range(0, V, BLOCK):
            x = tl.load(x_row + start + offs, mask=start + offs < V, other=float("-inf")).to(tl.float32)
            zacc += _weights(x, m_safe, t_safe, start + offs < V, kmin)
        target = p * tl.sum(zacc, axis=0)
        kq = tl.zeros([], tl.int64)
        for step in range(8):
            shift = 28 - 4 * step
            cand = kq + (digits << shift)
            mass = tl.zeros([DIG], tl.float32)
            for start in range(0, V, BLOCK):
                x = tl.load(x_row + start + offs, mask=start + offs < V, other=float("-inf")).to(tl.float32)
                w = _weights(x, m_safe, t_safe, start + offs < V, kmin)
                wk = w.to(tl.int32, bitcast=True).to(tl.int64)
                mass += tl.sum(tl.where(wk[:, None] > cand[None, :], w[:, None], 0.0), axis=0)
            kq += tl.maximum(tl.sum((mass >= target).to(tl.int64), axis=0) - 1, 0) << shift
        wkey_min = kq + 1

    # kept mass, then the inverse CDF in vocabulary order
    wacc = tl.zeros([BLOCK], tl.float32)
    for start in range(0, V, BLOCK):
        x = tl.load(x_row + start + offs, mask=start + offs < V, other=float("-inf")).to(tl.float32)
        w = _weights(x, m_safe, t_safe, start + offs < V, kmin)
        keep = (w.to(tl.int32, bitcast=True).to(tl.int64) >= wkey_min) & (w >= q)
        wacc += tl.where(keep, w, 0.0)
    total = tl.sum(wacc, axis=0)

    seed = tl.load(seed_ptr + row)
    off = tl.load(off_ptr + row)
    c0 = (off & 0xFFFFFFFF).to(tl.uint32)
    c1 = ((off >> 32) & 0xFFFFFFFF).to(tl.uint32)
    r0, r1, r2, r3 = tl.philox(seed, c0, c1, c0 * 0, c0 * 0)
    u = ((r0 >> 5).to(tl.float64) * 67108864.0 + (r1 >> 6).to(tl.float64)) * (1.0 / 9007199254740992.0)
    target = u * total.to(tl.float64)

    run = tl.zeros([], tl.float32)
    first = tl.zeros([], tl.int32) + V
    last = tl.zeros([], tl.int32)
    argmax = tl.zeros([], tl.int32) + V
    for start in range(0, V, BLOCK):
        idx = start + offs
        x = tl.load(x_row + idx, mask=idx < V, other=float("-inf")).to(tl.float32)
        w = _weights(x, m_safe, t_safe, idx < V, kmin)
        keep = (w.to(tl.int32, bitcast=True).to(tl.int64) >= wkey_min) & (w >= q)
        wk = tl.where(keep, w, 0.0)
        csum = run + tl.cumsum(wk, axis=0)
        first = tl.minimum(first, tl.min(tl.where((csum.to(tl.float64) > target) & (idx < V), idx, V), axis=0))
        last = tl.maximum(last, tl.max(tl.where(wk > 0.0, idx, 0), axis=0))
        argmax = tl.minimum(argmax, tl.min(tl.where((x == m) & (idx < V), idx, V), axis=0))
        run += tl.sum(wk, axis=0)
        if WANT_PROBS:
            pr = tl.where(greedy, tl.where(idx == argmax, 1.0, 0.0), wk / total)
            tl.store(probs_ptr + row * V + idx, pr, mask=idx < V)
    token = tl.where(first < V, first, last)
    token = tl.where(greedy, argmax, token)
    tl.store(ids_ptr + row, tl.where(status != 0, status, token).to(tl.int64))


def sample_rows(logits, temperature, top_k, top_p, min_p, seed, offset, want_probs=False):
    """logits [B, V] (unit column stride) and [B] parameters (see pyllmops.ops.sampling) ->
    (ids [B] int64 with negative status codes for bad rows, probs [B, V] fp32 or None)."""
    b, v = logits.shape
    ids = torch.empty(b, dtype=torch.int64, device=logits.device)
    probs = torch.empty((b, v), dtype=torch.float32, device=logits.device) if want_probs else ids
    block = min(1024, triton.next_power_of_2(max(v, 16)))
    if b:
        _sample_row[(b,)](logits, ids, probs, temperature, top_k, top_p, min_p, seed, offset, v, logits.stride(0),
                          WANT_PROBS=want_probs, BLOCK=block, DIG=DIGITS)
    return ids, (probs if want_probs else None)
