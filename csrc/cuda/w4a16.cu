// Weight-only GEMV-style kernels for decode (M <= 16). One warp per output row: each lane reads
// 16 packed bytes per step with one 128-bit load (a warp reads 512 contiguous bytes), turns them
// into floats with bit tricks instead of int->float conversions, and dots them with x; the warp
// then reduces. The weight is read exactly once, so at M = 1 the kernel streams int4 bytes at
// memory speed.
//
// int4 -> half without conversion instructions: OR-ing a nibble into the mantissa of half 1024.0
// (0x6400) gives the half 1024 + q exactly; one lop3 does (w & mask) | 0x6400 for two nibbles at
// once (one per half of a 32-bit word). The high nibbles land as 1024 + 16 q and are fixed by
// one fma (x/16 - (64 + z)). The zero point is subtracted in the same instruction, so each pair
// of weights costs one lop3 and one half2 op before the float conversion.
// int8 -> half: byte b ^ 0x80 = b + 128 is placed under the exponent byte 0x64 with one
// __byte_perm (half 1024 + b + 128), minus 1152.
#include "cuda/w4a16.h"

namespace pyllmops::cuda {
namespace {

constexpr int kWarps = 8;  // rows per block

__device__ __forceinline__ uint32_t lop3_and_or(uint32_t a, uint32_t b, uint32_t c) {
  uint32_t r;
  // LUT 0xEA = (a & b) | c
  asm("lop3.b32 %0, %1, %2, %3, 0xEA;" : "=r"(r) : "r"(a), "r"(b), "r"(c));
  return r;
}

__device__ __forceinline__ __half2 as_half2(uint32_t v) { return *reinterpret_cast<__half2*>(&v); }

// 8 nibbles of one word (byte b = channels 2b, 2b+1) minus the zero point -> out[0..7] in channel order.
__device__ __forceinline__ void int4x8_to_float(uint32_t w, __half2 lo_bias, __half2 hi_bias, float* out) {
  const __half2 sixteenth = __float2half2_rn(1.0f / 16.0f);
#pragma unroll
  for (int b = 0; b < 2; ++b) {
    const uint32_t v = w >> (8 * b);  // bytes b and b + 2 sit in the low bytes of each half
    const float2 lo = __half22float2(__hsub2(as_half2(lop3_and_or(v, 0x000F000Fu, 0x64006400u)), lo_bias));
    const float2 hi = __half22float2(__hfma2(as_half2(lop3_and_or(v, 0x00F000F0u, 0x64006400u)), sixteenth, hi_bias));
    out[2 * b] = lo.x, out[2 * b + 4] = lo.y, out[2 * b + 1] = hi.x, out[2 * b + 5] = hi.y;
  }
}

// 4 signed bytes -> out[0..3].
__device__ __forceinline__ void int8x4_to_float(uint32_t w, float* out) {
  const uint32_t u = w ^ 0x80808080u;
  const __half2 bias = __float2half2_rn(1152.0f);
  const float2 even = __half22float2(__hsub2(as_half2(__byte_perm(u, 0x64646464u, 0x5250)), bias));
  const float2 odd = __half22float2(__hsub2(as_half2(__byte_perm(u, 0x64646464u, 0x5351)), bias));
  out[0] = even.x, out[2] = even.y, out[1] = odd.x, out[3] = odd.y;
}

__device__ __forceinline__ void to_float8(uint4 v, const __half*, float* out) {
  const __half2* h = reinterpret_cast<const __half2*>(&v);
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float2 f = __half22float2(h[i]);
    out[2 * i] = f.x, out[2 * i + 1] = f.y;
  }
}
__device__ __forceinline__ void to_float8(uint4 v, const __nv_bfloat16*, float* out) {
  const __nv_bfloat162* h = reinterpret_cast<const __nv_bfloat162*>(&v);
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float2 f = __bfloat1622float2(h[i]);
    out[2 * i] = f.x, out[2 * i + 1] = f.y;
  }
}

__device__ __forceinline__ void store(__half* p, float v) { *p = __float2half_rn(v); }
__device__ __forceinline__ void store(__nv_bfloat16* p, float v) { *p = __float2bfloat16_rn(v); }

// Rows of x are processed MT at a time (a compile-time bound; rows >= M are skipped).
template <typename T, int MT, bool INT4>
__global__ void __launch_bounds__(kWarps * 32) weight_only_gemv(
    const T* __restrict__ x, int M, int64_t K, const uint8_t* __restrict__ qw, const T* __restrict__ scales,
    const uint8_t* __restrict__ zeros, int64_t N, int64_t G, int64_t group_size, T* __restrict__ out) {
  constexpr int kPerLoad = INT4 ? 32 : 16;  // weights in 16 bytes
  const int lane = threadIdx.x % 32;
  const int64_t n = static_cast<int64_t>(blockIdx.x) * kWarps + threadIdx.x / 32;
  if (n >= N) return;
  const uint4* wrow = reinterpret_cast<const uint4*>(qw + n * (INT4 ? K / 2 : K));
  float acc[MT];
#pragma unroll
  for (int m = 0; m < MT; ++m) acc[m] = 0.f;

  for (int64_t c = lane; c < K / kPerLoad; c += 32) {
    const uint4 wv = __ldg(wrow + c);
    const uint32_t words[4] = {wv.x, wv.y, wv.z, wv.w};
    const int64_t k0 = c * kPerLoad;
    float wf[kPerLoad];
    float s = 1.f;
    if constexpr (INT4) {
      const int64_t g = k0 / group_size;
      const float z = zeros[n * G + g];
      s = to_float(scales[n * G + g]);
      const __half2 lo_bias = __float2half2_rn(1024.f + z), hi_bias = __float2half2_rn(-64.f - z);
#pragma unroll
      for (int i = 0; i < 4; ++i) int4x8_to_float(words[i], lo_bias, hi_bias, wf + 8 * i);
    } else {
#pragma unroll
      for (int i = 0; i < 4; ++i) int8x4_to_float(words[i], wf + 4 * i);
    }
#pragma unroll
    for (int m = 0; m < MT; ++m) {
      if (m >= M) break;
      const uint4* xv = reinterpret_cast<const uint4*>(x + m * K + k0);
      float dot = 0.f;
#pragma unroll
      for (int i = 0; i < kPerLoad / 8; ++i) {
        float xf[8];
        to_float8(__ldg(xv + i), x, xf);
#pragma unroll
        for (int j = 0; j < 8; ++j) dot = fmaf(wf[8 * i + j], xf[j], dot);
      }
      acc[m] = fmaf(dot, s, acc[m]);
    }
  }
#pragma unroll
  for (int m = 0; m < MT; ++m) {
    if (m >= M) break;
    float v = acc[m];
#pragma unroll
    for (int off = 16; off > 0; off /= 2) v += __shfl_xor_sync(0xffffffffu, v, off);
    if (lane == 0) store(out + m * N + n, INT4 ? v : v * to_float(scales[n]));
  }
}

template <typename T, bool INT4>
cudaError_t launch(const void* x, int64_t M, int64_t K, const uint8_t* qw, const void* scales,
                   const uint8_t* zeros, int64_t N, int64_t group_size, void* out, cudaStream_t stream) {
  if (M == 0 || N == 0) return cudaSuccess;
  if (M > 16) return cudaErrorInvalidValue;
  const int64_t G = INT4 ? (K + group_size - 1) / group_size : 1;
  const dim3 grid(static_cast<unsigned>((N + kWarps - 1) / kWarps)), block(kWarps * 32);
  const T* xp = static_cast<const T*>(x);
  const T* sp = static_cast<const T*>(scales);
  T* op = static_cast<T*>(out);
#define PYLLMOPS_WO_LAUNCH(MT) \
  weight_only_gemv<T, MT, INT4><<<grid, block, 0, stream>>>(xp, static_cast<int>(M), K, qw, sp, zeros, N, G, group_size, op)
  if (M <= 1) PYLLMOPS_WO_LAUNCH(1);
  else if (M <= 2) PYLLMOPS_WO_LAUNCH(2);
  else if (M <= 4) PYLLMOPS_WO_LAUNCH(4);
  else if (M <= 8) PYLLMOPS_WO_LAUNCH(8);
  else PYLLMOPS_WO_LAUNCH(16);
#undef PYLLMOPS_WO_LAUNCH
  return cudaGetLastError();
}

}  // namespace

cudaError_t w4a16_gemm(const void* x, DType dtype, int64_t M, int64_t K, const uint8_t* qweight,
                       const void* scales, const uint8_t* zeros, int64_t N, int64_t group_size,
                       void* out, cudaStream_t stream) {
  if (K % 32 || group_size % 32) return cudaErrorInvalidValue;
  switch (dtype) {
    case DType::F16: return launch<__half, true>(x, M, K, qweight, scales, zeros, N, group_size, out, stream);
    case DType::BF16: return launch<__nv_bfloat16, true>(x, M, K, qweight, scales, zeros, N, group_size, out, stream);
    default: return cudaErrorInvalidValue;
  }
}

cudaError_t w8a16_gemm(const void* x, DType dtype, int64_t M, int64_t K, const int8_t* qweight,
                       const void* scales, int64_t N, void* out, cudaStream_t stream) {
  if (K % 16) return cudaErrorInvalidValue;
  const uint8_t* qw = reinterpret_cast<const uint8_t*>(qweight);
  switch (dtype) {
    case DType::F16: return launch<__half, false>(x, M, K, qw, scales, nullptr, N, 1, out, stream);
    case DType::BF16: return launch<__nv_bfloat16, false>(x, M, K, qw, scales, nullptr, N, 1, out, stream);
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace pyllmops::cuda
