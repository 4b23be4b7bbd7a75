// Weight-only GEMM for decode-sized M. The weight is read once and each value is used for up to
// kTileM rows of x: int4 reads 1/8 of the bytes of an fp32 weight. On 2 Sapphire Rapids cores the
// int4 kernel is bound by the conversion to float (7 vector ops per 32 weights on the 2 512-bit
// ports), not by memory: 430 us for 4096 x 4096 at M = 1 with the weight cached, 580 us with a
// new layer's weight every call (bench/bench_weight_only.py).
//
// int4 inner loop, per 32 input channels (16 packed bytes) and row n:
//   widen the 16 bytes to 16 int32 lanes, low nibbles = channels 2j, high nibbles = 2j+1,
//   convert to float and FMA against x de-interleaved into (even, odd) halves per 32 channels.
// The zero point is not subtracted per weight: sum_k (q_k - z) x_k s = s (sum_k q_k x_k - z sum_k x_k),
// and sum_k x_k per group is computed once per call, so the inner loop only converts and multiplies.
#include "cpu/weight_only.h"

#include <immintrin.h>

#include <algorithm>
#include <vector>

#include "cpu/parallel.h"

namespace pyllmops::cpu {
namespace {

constexpr int kTileM = 4;      // rows of x sharing one decode of the weight
constexpr int64_t kGrainN = 64;  // output rows per parallel chunk (at least)

// x [M, K] -> per 32-channel unit u: [x(32u + 2e) for e < 16] ++ [x(32u + 2e + 1) for e < 16],
// so the even/odd nibbles of 16 packed bytes meet their activations with two contiguous loads.
std::vector<float> deinterleave(const float* x, int64_t M, int64_t K) {
  std::vector<float> out(static_cast<size_t>(M * K));
  for (int64_t m = 0; m < M; ++m)
    for (int64_t u = 0; u < K / 32; ++u)
      for (int e = 0; e < 16; ++e) {
        out[m * K + u * 32 + e] = x[m * K + u * 32 + 2 * e];
        out[m * K + u * 32 + 16 + e] = x[m * K + u * 32 + 2 * e + 1];
      }
  return out;
}

// sum of x over each group: [M, G], in double so the zero-point term loses nothing.
std::vector<double> group_sums(const float* x, int64_t M, int64_t K, int64_t gs, int64_t G) {
  std::vector<double> s(static_cast<size_t>(M * G), 0.0);
  for (int64_t m = 0; m < M; ++m)
    for (int64_t k = 0; k < K; ++k) s[m * G + k / gs] += x[m * K + k];
  return s;
}

// ---------------------------------------------------------------- int4, scalar (any CPU)
void w4_rows_scalar(const float* xd, const double* xs, int64_t M, int64_t K, const uint8_t* qw,
                    const float* scales, const uint8_t* zeros, int64_t gs, int64_t G, float* out,
                    int64_t N, int64_t n0, int64_t n1) {
  for (int64_t n = n0; n < n1; ++n) {
    const uint8_t* row = qw + n * (K / 2);
    for (int64_t m = 0; m < M; ++m) {
      const float* xm = xd + m * K;
      double total = 0.0;
      for (int64_t g = 0; g < G; ++g) {
        float acc = 0.f;
        const int64_t k1 = std::min(K, (g + 1) * gs);
        for (int64_t u = g * gs / 32; u < k1 / 32; ++u)
          for (int e = 0; e < 16; ++e) {
            const uint8_t b = row[u * 16 + e];
            acc += static_cast<float>(b & 0xF) * xm[u * 32 + e] + static_cast<float>(b >> 4) * xm[u * 32 + 16 + e];
          }
        const double s = scales[n * G + g];
        total += s * (acc - zeros[n * G + g] * xs[m * G + g]);
      }
      out[m * N + n] = static_cast<float>(total);
    }
  }
}

// ---------------------------------------------------------------- int4, AVX-512
// NT output rows at a time, each with separate accumulators for the low and high nibbles: one
// row's single FMA chain was bound by the FMA latency (4 MAC/cycle at M = 1, 465 us for
// 4096 x 4096 on 2 cores); 2 x NT independent chains keep both FMA ports busy.
template <int MT, int NT>
__attribute__((target("avx512f,avx512bw"))) inline void w4_tile_avx512(
    const float* xd, const double* xs, int64_t K, const uint8_t* qw, const float* scales,
    const uint8_t* zeros, int64_t gs, int64_t G, float* out, int64_t N, int64_t n) {
  const __m512i low4 = _mm512_set1_epi32(0xF);
  __m512 total[MT][NT];
  double corr[MT][NT];
  for (int m = 0; m < MT; ++m)
    for (int j = 0; j < NT; ++j) total[m][j] = _mm512_setzero_ps(), corr[m][j] = 0.0;
  for (int64_t g = 0; g < G; ++g) {
    __m512 lo_acc[MT][NT], hi_acc[MT][NT];
    for (int m = 0; m < MT; ++m)
      for (int j = 0; j < NT; ++j) lo_acc[m][j] = hi_acc[m][j] = _mm512_setzero_ps();
    const int64_t u1 = std::min(K, (g + 1) * gs) / 32;
    for (int64_t u = g * gs / 32; u < u1; ++u) {
      __m512 lo[NT], hi[NT];
      for (int j = 0; j < NT; ++j) {
        const uint8_t* row = qw + (n + j) * (K / 2);
        const __m512i b = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(row + u * 16)));
        lo[j] = _mm512_cvtepi32_ps(_mm512_and_si512(b, low4));
        hi[j] = _mm512_cvtepi32_ps(_mm512_srli_epi32(b, 4));
      }
      for (int m = 0; m < MT; ++m) {
        const __m512 xe = _mm512_loadu_ps(xd + m * K + u * 32), xo = _mm512_loadu_ps(xd + m * K + u * 32 + 16);
        for (int j = 0; j < NT; ++j) {
          lo_acc[m][j] = _mm512_fmadd_ps(lo[j], xe, lo_acc[m][j]);
          hi_acc[m][j] = _mm512_fmadd_ps(hi[j], xo, hi_acc[m][j]);
        }
      }
    }
    for (int j = 0; j < NT; ++j) {
      const float s = scales[(n + j) * G + g];
      const double sz = static_cast<double>(s) * zeros[(n + j) * G + g];
      for (int m = 0; m < MT; ++m) {
        total[m][j] = _mm512_fmadd_ps(_mm512_add_ps(lo_acc[m][j], hi_acc[m][j]), _mm512_set1_ps(s), total[m][j]);
        corr[m][j] += sz * xs[m * G + g];
      }
    }
  }
  for (int m = 0; m < MT; ++m)
    for (int j = 0; j < NT; ++j)
      out[m * N + n + j] = static_cast<float>(_mm512_reduce_add_ps(total[m][j]) - corr[m][j]);
}

// Output rows per tile: 2 * MT * NT accumulators plus 2 * NT weight vectors fit the 32 registers.
template <int MT>
constexpr int kTileN = MT == 1 ? 4 : 2;

template <int MT>
__attribute__((target("avx512f,avx512bw"))) void w4_rows_avx512(
    const float* xd, const double* xs, int64_t K, const uint8_t* qw, const float* scales,
    const uint8_t* zeros, int64_t gs, int64_t G, float* out, int64_t N, int64_t n0, int64_t n1) {
  constexpr int NT = kTileN<MT>;
  int64_t n = n0;
  for (; n + NT <= n1; n += NT) w4_tile_avx512<MT, NT>(xd, xs, K, qw, scales, zeros, gs, G, out, N, n);
  for (; n < n1; ++n) w4_tile_avx512<MT, 1>(xd, xs, K, qw, scales, zeros, gs, G, out, N, n);
}

// ---------------------------------------------------------------- int8
void w8_rows_scalar(const float* x, int64_t M, int64_t K, const int8_t* qw, const float* scales,
                    float* out, int64_t N, int64_t n0, int64_t n1) {
  for (int64_t n = n0; n < n1; ++n)
    for (int64_t m = 0; m < M; ++m) {
      float acc = 0.f;
      for (int64_t k = 0; k < K; ++k) acc += static_cast<float>(qw[n * K + k]) * x[m * K + k];
      out[m * N + n] = acc * scales[n];
    }
}

// NT output rows at a time and two accumulators per (m, row), alternating over k, for the same
// reason as the int4 tile: independent FMA chains.
template <int MT, int NT>
__attribute__((target("avx512f,avx512bw"))) inline void w8_step_avx512(
    const float* x, int64_t K, const int8_t* qw, int64_t n, int64_t k, __m512 (&acc)[MT][NT]) {
  __m512 w[NT];
  for (int j = 0; j < NT; ++j)
    w[j] = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(qw + (n + j) * K + k))));
  for (int m = 0; m < MT; ++m) {
    const __m512 xv = _mm512_loadu_ps(x + m * K + k);
    for (int j = 0; j < NT; ++j) acc[m][j] = _mm512_fmadd_ps(w[j], xv, acc[m][j]);
  }
}

template <int MT, int NT>
__attribute__((target("avx512f,avx512bw"))) inline void w8_tile_avx512(
    const float* x, int64_t K, const int8_t* qw, const float* scales, float* out, int64_t N, int64_t n) {
  __m512 even[MT][NT], odd[MT][NT];
  for (int m = 0; m < MT; ++m)
    for (int j = 0; j < NT; ++j) even[m][j] = odd[m][j] = _mm512_setzero_ps();
  int64_t k = 0;
  for (; k + 32 <= K; k += 32) {
    w8_step_avx512<MT, NT>(x, K, qw, n, k, even);
    w8_step_avx512<MT, NT>(x, K, qw, n, k + 16, odd);
  }
  if (k < K) w8_step_avx512<MT, NT>(x, K, qw, n, k, even);  // K % 16 == 0
  for (int m = 0; m < MT; ++m)
    for (int j = 0; j < NT; ++j)
      out[m * N + n + j] = _mm512_reduce_add_ps(_mm512_add_ps(even[m][j], odd[m][j])) * scales[n + j];
}

template <int MT>
__attribute__((target("avx512f,avx512bw"))) void w8_rows_avx512(
    const float* x, int64_t K, const int8_t* qw, const float* scales, float* out, int64_t N,
    int64_t n0, int64_t n1) {
  constexpr int NT = kTileN<MT>;
  int64_t n = n0;
  for (; n + NT <= n1; n += NT) w8_tile_avx512<MT, NT>(x, K, qw, scales, out, N, n);
  for (; n < n1; ++n) w8_tile_avx512<MT, 1>(x, K, qw, scales, out, N, n);
}

// Runs fn<MT>(row offset) over x in tiles of up to kTileM rows.
template <typename F>
void for_row_tiles(int64_t M, F&& fn) {
  for (int64_t m0 = 0; m0 < M; m0 += kTileM) {
    switch (std::min<int64_t>(kTileM, M - m0)) {
      case 1: fn(std::integral_constant<int, 1>{}, m0); break;
      case 2: fn(std::integral_constant<int, 2>{}, m0); break;
      case 3: fn(std::integral_constant<int, 3>{}, m0); break;
      default: fn(std::integral_constant<int, 4>{}, m0); break;
    }
  }
}

}  // namespace

bool weight_only_simd() {
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw");
}

void w4a16_gemm(const float* x, int64_t M, int64_t K, const uint8_t* qweight, const float* scales,
                const uint8_t* zeros, int64_t N, int64_t group_size, float* out, int threads) {
  const int64_t G = (K + group_size - 1) / group_size;
  const std::vector<float> xd = deinterleave(x, M, K);
  const std::vector<double> xs = group_sums(x, M, K, group_size, G);
  const bool simd = weight_only_simd();
  parallel_for(N, threads, kGrainN, [&](int64_t n0, int64_t n1) {
    if (!simd) {
      w4_rows_scalar(xd.data(), xs.data(), M, K, qweight, scales, zeros, group_size, G, out, N, n0, n1);
      return;
    }
    for_row_tiles(M, [&](auto mt, int64_t m0) {
      w4_rows_avx512<decltype(mt)::value>(xd.data() + m0 * K, xs.data() + m0 * G, K, qweight, scales, zeros,
                                          group_size, G, out + m0 * N, N, n0, n1);
    });
  });
}

void w8a16_gemm(const float* x, int64_t M, int64_t K, const int8_t* qweight, const float* scales,
                int64_t N, float* out, int threads) {
  const bool simd = weight_only_simd();
  parallel_for(N, threads, kGrainN, [&](int64_t n0, int64_t n1) {
    if (!simd) {
      w8_rows_scalar(x, M, K, qweight, scales, out, N, n0, n1);
      return;
    }
    for_row_tiles(M, [&](auto mt, int64_t m0) {
      w8_rows_avx512<decltype(mt)::value>(x + m0 * K, K, qweight, scales, out + m0 * N, N, n0, n1);
    });
  });
}

}  // namespace pyllmops::cpu
