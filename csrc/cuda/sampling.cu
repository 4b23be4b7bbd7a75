// Sorting-free sampling, one 512-thread block per row (the same algorithm as kernels/triton/sampling.py):
//
//   pass 1      max + NaN/+inf check (BlockReduce); greedy rows take the first index of the max.
//   8 passes    top-k (0 < k < V): the k-th largest x by radix search on an order-preserving key,
//               4 bits per pass: every thread counts its elements >= 16 candidate keys, one
//               BlockReduce of the 16 counts, and the largest candidate still holding >= k wins.
//   1+8 passes  top-p (p < 1): Z, then the same search on w = exp((x - m) / t)'s bits for the
//               largest key K whose strictly-greater mass is >= p * Z; kept = key(w) > K.
//   1 pass      each thread sums the kept w of its contiguous segment; one BlockScan gives every
//               segment's prefix and the total W; the thread whose segment holds u * W rescans it
//               in order (the same float ops, so it finds the crossing) -> token.
// Every pass after the first reads the row from L2 (a 256k fp32 row is 1 MB).
#include <cub/block/block_reduce.cuh>
#include <cub/block/block_scan.cuh>

#include <cfloat>
#include <cstdint>

#include "cuda/sampling.h"

namespace pyllmops::cuda {
namespace {

constexpr int kThreads = 512;
constexpr int kDigits = 16;  // candidates per radix pass (4 bits)
constexpr int64_t kBadValue = -1, kAllNegInf = -2, kBadTemperature = -3, kBadTopP = -4, kBadMinP = -5;

// Own functors: cub::Max/Min are gone in CCCL 3 (CUDA 13), cuda::maximum is missing in older ones.
struct MaxOp {
  template <typename V>
  __device__ V operator()(const V& a, const V& b) const { return a < b ? b : a; }
};
struct MinOp {
  template <typename V>
  __device__ V operator()(const V& a, const V& b) const { return b < a ? b : a; }
};

struct Acc16 {
  float v[kDigits];
};
struct Add16 {
  __device__ Acc16 operator()(const Acc16& a, const Acc16& b) const {
    Acc16 r;
#pragma unroll
    for (int d = 0; d < kDigits; ++d) r.v[d] = a.v[d] + b.v[d];
    return r;
  }
};

__device__ __forceinline__ void philox4x32(uint32_t c[4], uint32_t k0, uint32_t k1) {
#pragma unroll
  for (int round = 0; round < 10; ++round) {
    const uint32_t hi0 = __umulhi(0xD2511F53u, c[0]), lo0 = 0xD2511F53u * c[0];
    const uint32_t hi1 = __umulhi(0xCD9E8D57u, c[2]), lo1 = 0xCD9E8D57u * c[2];
    c[0] = hi1 ^ c[1] ^ k0;
    c[1] = lo1;
    c[2] = hi0 ^ c[3] ^ k1;
    c[3] = lo0;
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
}

__device__ __forceinline__ double row_uniform(int64_t seed, int64_t offset) {
  const uint64_t s = uint64_t(seed), o = uint64_t(offset);
  uint32_t c[4] = {uint32_t(o), uint32_t(o >> 32), 0u, 0u};
  philox4x32(c, uint32_t(s), uint32_t(s >> 32));
  return (double(c[0] >> 5) * 67108864.0 + double(c[1] >> 6)) * (1.0 / 9007199254740992.0);
}

// float -> uint32 monotone in x (-inf lowest).
__device__ __forceinline__ uint32_t x_key(float x) {
  const uint32_t b = __float_as_uint(x);
  return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}

struct Row {
  float m, t;        // max, temperature
  uint32_t kmin;     // top-k survivors: x_key >= kmin
  uint32_t wkey_min; // top-p survivors: w's bits >= wkey_min
  float q;           // min-p
  // Weight of a top-k survivor (0 for the others); `keep` adds the top-p and min-p cuts.
  __device__ __forceinline__ float weight(float x) const { return x_key(x) >= kmin ? expf((x - m) / t) : 0.0f; }
  __device__ __forceinline__ bool keep(float w) const { return __float_as_uint(w) >= wkey_min && w >= q; }
};

template <typename T>
__global__ void __launch_bounds__(kThreads) sample_kernel(const T* __restrict__ logits, int64_t V, int64_t ld,
                                                          const float* temperature, const int64_t* top_k,
                                                          const float* top_p, const float* min_p, const int64_t* seed,
                                                          const int64_t* offset, int64_t* ids, float* probs) {
  using ReduceF = cub::BlockReduce<float, kThreads>;
  using Reduce16 = cub::BlockReduce<Acc16, kThreads>;
  using ReduceI = cub::BlockReduce<int64_t, kThreads>;
  using ScanF = cub::BlockScan<float, kThreads>;
  __shared__ union {
    typename ReduceF::TempStorage f;
    typename Reduce16::TempStorage f16;
    typename ReduceI::TempStorage i;
    typename ScanF::TempStorage scan;
  } tmp;
  __shared__ float s_float;
  __shared__ int64_t s_int;
  __shared__ uint32_t s_key;

  const int64_t row = blockIdx.x;
  const int tid = threadIdx.x;
  const T* x = logits + row * ld;
  const float t = temperature[row], p = top_p[row], q = min_p[row];
  const int64_t k = top_k[row];

  // pass 1: max, bad values
  float mx = -INFINITY;
  float bad = 0.0f;
  for (int64_t i = tid; i < V; i += kThreads) {
    const float v = to_float(x[i]);
    bad += !(v <= FLT_MAX);
    mx = fmaxf(mx, v);
  }
  mx = ReduceF(tmp.f).Reduce(mx, MaxOp());
  __syncthreads();
  bad = ReduceF(tmp.f).Sum(bad);
  if (tid == 0) {
    int64_t status = 0;
    if (!(t >= 0.0f && t <= FLT_MAX)) status = kBadTemperature;
    else if (!(p > 0.0f && p <= 1.0f)) status = kBadTopP;
    else if (!(q >= 0.0f && q <= 1.0f)) status = kBadMinP;
    else if (bad > 0.0f) status = kBadValue;
    else if (mx == -INFINITY) status = kAllNegInf;
    s_int = status;
    s_float = mx;
  }
  __syncthreads();
  const int64_t status = s_int;
  Row r{s_float, t, 0u, 0u, q};
  if (status != 0 || t == 0.0f) {
    // greedy (or a bad row): the first index of the max
    int64_t first = V;
    if (status == 0)
      for (int64_t i = tid; i < V; i += kThreads)
        if (to_float(x[i]) == r.m) { first = i; break; }
    __syncthreads();
    first = ReduceI(tmp.i).Reduce(first, MinOp());
    if (tid == 0) ids[row] = status != 0 ? status : first;
    if (probs && status == 0) {
      __syncthreads();
      if (tid == 0) s_int = first;
      __syncthreads();
      for (int64_t i = tid; i < V; i += kThreads) probs[row * V + i] = i == s_int ? 1.0f : 0.0f;
    }
    return;
  }

  if (k > 0 && k < V) {  // k-th largest key: largest key with count(x_key >= key) >= k
    uint32_t prefix = 0;
    for (int shift = 28; shift >= 0; shift -= 4) {
      Acc16 cnt = {};
      for (int64_t i = tid; i < V; i += kThreads) {
        const uint32_t key = x_key(to_float(x[i]));
#pragma unroll
        for (int d = 0; d < kDigits; ++d) cnt.v[d] += key >= prefix + (uint32_t(d) << shift);
      }
      __syncthreads();
      cnt = Reduce16(tmp.f16).Reduce(cnt, Add16());
      if (tid == 0) {
        int best = 0;
        for (int d = 1; d < kDigits; ++d) best += cnt.v[d] >= float(k);
        s_key = prefix + (uint32_t(best) << shift);
      }
      __syncthreads();
      prefix = s_key;
    }
    r.kmin = prefix;
  }

  if (p < 1.0f) {  // largest w key K with mass(key(w) > K) >= p * Z; kept = key(w) > K
    float z = 0.0f;
    for (int64_t i = tid; i < V; i += kThreads) z += r.weight(to_float(x[i]));
    __syncthreads();
    z = ReduceF(tmp.f).Sum(z);
    if (tid == 0) s_float = p * z;
    __syncthreads();
    const float target = s_float;
    uint32_t prefix = 0;
    for (int shift = 28; shift >= 0; shift -= 4) {
      Acc16 mass = {};
      for (int64_t i = tid; i < V; i += kThreads) {
        const float w = r.weight(to_float(x[i]));
        const uint32_t key = __float_as_uint(w);
#pragma unroll
        for (int d = 0; d < kDigits; ++d) mass.v[d] += key > prefix + (uint32_t(d) << shift) ? w : 0.0f;
      }
      __syncthreads();
      mass = Reduce16(tmp.f16).Reduce(mass, Add16());
      if (tid == 0) {
        int best = 0;
        for (int d = 1; d < kDigits; ++d) best += mass.v[d] >= target;
        s_key = prefix + (uint32_t(best) << shift);
      }
      __syncthreads();
      prefix = s_key;
    }
    r.wkey_min = prefix + 1;
  }

  // Kept mass per contiguous segment, a block scan, then one thread rescans the segment holding u * W.
  const int64_t seg = (V + kThreads - 1) / kThreads;
  const int64_t begin = min(V, tid * seg), end = min(V, begin + seg);
  float part = 0.0f;
  int64_t last = -1;
  for (int64_t i = begin; i < end; ++i) {
    const float w = r.weight(to_float(x[i]));
    if (r.keep(w)) {
      part += w;
      if (w > 0.0f) last = i;
    }
  }
  float before, total;
  __syncthreads();
  ScanF(tmp.scan).ExclusiveSum(part, before, total);
  const double target = row_uniform(seed[row], offset[row]) * double(total);
  int64_t found = V;
  if (double(before) <= target && double(before + part) > target) {
    float run = before;
    for (int64_t i = begin; i < end; ++i) {
      const float w = r.weight(to_float(x[i]));
      if (r.keep(w)) run += w;
      if (double(run) > target) { found = i; break; }
    }
  }
  __syncthreads();
  found = ReduceI(tmp.i).Reduce(found, MinOp());
  __syncthreads();
  last = ReduceI(tmp.i).Reduce(last, MaxOp());
  if (tid == 0) ids[row] = found < V ? found : last;  // rounding left u * W out of reach: last kept
  if (probs) {
    if (tid == 0) s_float = total;
    __syncthreads();
    const float inv_total = 1.0f / s_float;
    for (int64_t i = tid; i < V; i += kThreads) {
      const float w = r.weight(to_float(x[i]));
      probs[row * V + i] = r.keep(w) ? w * inv_total : 0.0f;
    }
  }
}

template <typename T>
cudaError_t launch(const void* logits, int64_t B, int64_t V, int64_t ld, const float* temperature, const int64_t* top_k,
                   const float* top_p, const float* min_p, const int64_t* seed, const int64_t* offset, int64_t* ids,
                   float* probs, cudaStream_t stream) {
  if (B == 0) return cudaSuccess;
  sample_kernel<T><<<dim3(unsigned(B)), kThreads, 0, stream>>>(static_cast<const T*>(logits), V, ld, temperature, top_k,
                                                              top_p, min_p, seed, offset, ids, probs);
  return cudaGetLastError();
}

}  // namespace

cudaError_t sample_rows(const void* logits, DType dtype, int64_t B, int64_t V, int64_t ld, const float* temperature,
                        const int64_t* top_k, const float* top_p, const float* min_p, const int64_t* seed,
                        const int64_t* offset, int64_t* ids, float* probs, cudaStream_t stream) {
  switch (dtype) {
    case DType::F32:
      return launch<float>(logits, B, V, ld, temperature, top_k, top_p, min_p, seed, offset, ids, probs, stream);
    case DType::F16:
      return launch<__half>(logits, B, V, ld, temperature, top_k, top_p, min_p, seed, offset, ids, probs, stream);
    case DType::BF16:
      return launch<__nv_bfloat16>(logits, B, V, ld, temperature, top_k, top_p, min_p, seed, offset, ids, probs, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace pyllmops::cuda
