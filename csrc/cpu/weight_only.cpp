// Weight-only GEMM for decode-sized M. The weight is read once and each value is used for up to
// kTileM rows of x: int4 reads 1/8 of the bytes of an fp32 weight, so at M = 1 the kernel should
// run at the speed 8 MB (4096 x 4096) can be read from L3: 277 us on 1 Sapphire Rapids core of
// this VM, 147 us on 2. Three int4 kernels for w4a16_gemm, plus w4a8_gemm:
//
// vnni_digits (group size a multiple of 128 or K, CPUs with AVX-512 VNNI): x is split per call, per
// 128-channel block, into 3 signed-byte digits, x ~= step * (a 2^16 + b 2^8 + c), |x - that| <=
// step / 2 = 2^-24 max|x of the block| (the rounding of an fp32 value of that size; a per-row power
// of two keeps the steps normal floats for any size of x). The int4 x
// digit products then run on vpdpbusd (64 MACs per instruction) in exact int32 arithmetic: per
// block of 128 weights of a row, 2 ands and a shift split the 64 packed bytes into low (even
// channels) and high (odd) nibbles, 6 vpdpbusd and 2 shifts (Horner over the digits) give the
// block's int32 sums, and one convert and one FMA scale them by scale * step. 13 vector ops per 128
// weights at M = 1 against 28 for the FMA kernel below. The zero point is not applied per weight:
// sum_k (q_k - z) s x_k = s sum_k q_k x_k - s z sum_k x_k, the second term from fp32 group sums.
// Error against the float64 reference: 1-6e-7 of max|y| on random and on outlier-heavy x, where
// fp32 F.linear on the dequantized weight has 1-7e-7 (up to 4x less on small outlier-heavy K).
//
// avx512_fma (everything else: group sizes 32/64/96...): per 32 channels and row, widen 16
// packed bytes to int32, mask/shift out the two nibbles, convert to float, FMA against x
// de-interleaved into even/odd halves; the zero point as above.
//
// avx2_fma (CPUs without AVX-512, any group size the others take): the avx512_fma kernel on
// 8-lane vectors. The int8 kernel and the prefill dequantization have AVX2 versions too.
//
// avx2_digits (CPUs without AVX-512, M = 1, group size as for vnni_digits): the digit kernel with
// vpmaddubsw + vpmaddwd in place of vpdpbusd, exact in the same way.
//
// w4a8_gemm: the digit kernel with one digit, x quantized per 32 channels like llama.cpp's Q8_0
// (pyllmops/ops/w4a8.py): 2 vpdpbusd per 128 weights of a row, then convert, times the weight
// scale, FMA with the 16 lanes' activation scales. An approximation of w4a16 (0.5-1.7% relative
// RMS error on SmolLM2's activations), opt-in.
//
// At M = 1 the digit kernel runs within ~15% of the time it takes to read the weight from L3: the
// weight bytes, not the arithmetic, set the time there (per-kernel timings: docs/cpu-kernels.md).
// Tried and not kept: a vpermps lookup table (16 dequantized weights of a (row, group) in a
// register, indexed by the nibbles: 7 shifts + 8 permutes + 8 FMAs per 128 weights), bound by those
// 23 ops on the 2 vector ports (1.7x the digit kernel's time in a prototype); bf16 dot
// products (vdpbf16ps runs at a quarter of the FMA rate here); GFNI for the high nibbles (2%);
// prefetchnta and cldemote on the weight (to spare L2 for the caller) made L3 drop it: 3x slower.
// Without the software prefetch of the next rows the digit kernel spends a third of its time
// waiting for L3.
#include "cpu/weight_only.h"

#if !defined(__clang__)
// GCC 12 false positives inside its own avx512fintrin.h helpers (undefined-vector idiom).
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "cpu/cpu_features.h"
#include "cpu/int4_blocks.h"
#include "cpu/parallel.h"
#include "cpu/row_tiles.h"

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

// sum of x over each group: [M, G], in double so the zero-point term loses nothing. Eight partial
// sums (groups are multiples of 32 channels): one chain of K dependent adds was 4 us at K = 4096.
std::vector<double> group_sums(const float* x, int64_t M, int64_t K, int64_t gs, int64_t G) {
  std::vector<double> s(static_cast<size_t>(M * G), 0.0);
  for (int64_t m = 0; m < M; ++m)
    for (int64_t g = 0; g < G; ++g) {
      double part[8] = {};
      for (int64_t k = g * gs; k < std::min(K, (g + 1) * gs); k += 8)
        for (int i = 0; i < 8; ++i) part[i] += x[m * K + k + i];
      s[m * G + g] = ((part[0] + part[1]) + (part[2] + part[3])) + ((part[4] + part[5]) + (part[6] + part[7]));
    }
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

// ---------------------------------------------------------------- int4, AVX2 + FMA
// The avx512_fma tile on 8-lane vectors, for CPUs without AVX-512 (AMD Zen 2/3, client Intel):
// per 32 channels of a row, bytes 0-7 and 8-15 widened to int32 give the low nibbles (x channels
// [0, 16) of the de-interleaved unit) and the high ones ([16, 32)); 4 FMAs per row of x, into two
// accumulators per (m, row) so that NT rows keep both FMA ports busy.
__attribute__((target("avx2,fma"))) inline float hsum_avx2(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
}

__attribute__((target("avx2,fma"))) inline __m256i widen8_avx2(const uint8_t* p) {
  return _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)));
}

template <int MT, int NT>
__attribute__((target("avx2,fma"))) inline void w4_tile_avx2(
    const float* xd, const double* xs, int64_t K, const uint8_t* qw, const float* scales,
    const uint8_t* zeros, int64_t gs, int64_t G, float* out, int64_t N, int64_t n) {
  const __m256i low4 = _mm256_set1_epi32(0xF);
  __m256 total[MT][NT];
  double corr[MT][NT];
  for (int m = 0; m < MT; ++m)
    for (int j = 0; j < NT; ++j) total[m][j] = _mm256_setzero_ps(), corr[m][j] = 0.0;
  for (int64_t g = 0; g < G; ++g) {
    __m256 acc0[MT][NT], acc1[MT][NT];
    for (int m = 0; m < MT; ++m)
      for (int j = 0; j < NT; ++j) acc0[m][j] = acc1[m][j] = _mm256_setzero_ps();
    const int64_t u1 = std::min(K, (g + 1) * gs) / 32;
    for (int64_t u = g * gs / 32; u < u1; ++u) {
      for (int j = 0; j < NT; ++j) {
        const uint8_t* row = qw + (n + j) * (K / 2) + u * 16;
        const __m256i b0 = widen8_avx2(row), b1 = widen8_avx2(row + 8);
        const __m256 lo0 = _mm256_cvtepi32_ps(_mm256_and_si256(b0, low4));
        const __m256 lo1 = _mm256_cvtepi32_ps(_mm256_and_si256(b1, low4));
        const __m256 hi0 = _mm256_cvtepi32_ps(_mm256_srli_epi32(b0, 4));
        const __m256 hi1 = _mm256_cvtepi32_ps(_mm256_srli_epi32(b1, 4));
        for (int m = 0; m < MT; ++m) {
          const float* xu = xd + m * K + u * 32;
          acc0[m][j] = _mm256_fmadd_ps(lo0, _mm256_loadu_ps(xu), acc0[m][j]);
          acc1[m][j] = _mm256_fmadd_ps(lo1, _mm256_loadu_ps(xu + 8), acc1[m][j]);
          acc0[m][j] = _mm256_fmadd_ps(hi0, _mm256_loadu_ps(xu + 16), acc0[m][j]);
          acc1[m][j] = _mm256_fmadd_ps(hi1, _mm256_loadu_ps(xu + 24), acc1[m][j]);
        }
      }
    }
    for (int j = 0; j < NT; ++j) {
      const float s = scales[(n + j) * G + g];
      const double sz = static_cast<double>(s) * zeros[(n + j) * G + g];
      for (int m = 0; m < MT; ++m) {
        total[m][j] = _mm256_fmadd_ps(_mm256_add_ps(acc0[m][j], acc1[m][j]), _mm256_set1_ps(s), total[m][j]);
        corr[m][j] += sz * xs[m * G + g];
      }
    }
  }
  for (int m = 0; m < MT; ++m)
    for (int j = 0; j < NT; ++j) out[m * N + n + j] = static_cast<float>(hsum_avx2(total[m][j]) - corr[m][j]);
}

// Output rows per AVX2 tile: 3 * MT * NT accumulators plus 4 weight vectors within 16 registers.
template <int MT>
constexpr int kTileN2 = MT == 1 ? 4 : MT == 2 ? 2 : 1;

template <int MT>
__attribute__((target("avx2,fma"))) void w4_rows_avx2(
    const float* xd, const double* xs, int64_t K, const uint8_t* qw, const float* scales,
    const uint8_t* zeros, int64_t gs, int64_t G, float* out, int64_t N, int64_t n0, int64_t n1) {
  constexpr int NT = kTileN2<MT>;
  int64_t n = n0;
  for (; n + NT <= n1; n += NT) w4_tile_avx2<MT, NT>(xd, xs, K, qw, scales, zeros, gs, G, out, N, n);
  for (; n < n1; ++n) w4_tile_avx2<MT, 1>(xd, xs, K, qw, scales, zeros, gs, G, out, N, n);
}

// ---------------------------------------------------------------- int4 x int8 digits, AVX-512 VNNI
// x goes to signed bytes per 128-channel block: D = 3 digits (w4a16, exact) or D = 1 (w4a8, Q8_0).
// One block of a weight row is 64 packed bytes: low nibbles = even channels, high = odd ones, so
// each digit of a block is stored as [even channels 64 | odd channels 64], and after vpdpbusd
// int32 lane l of a block holds channels [8l, 8l + 8).
constexpr int64_t kBlock = int4_blocks::kChannels;  // channels per block of a row (64 packed bytes)
constexpr int32_t kDigitMax = 127 * (65536 + 256 + 1);  // largest |N| whose balanced digits fit int8
constexpr int kQ8Block = 32;                              // w4a8: channels per activation scale

template <int D>
constexpr int64_t kBlockBytes = D * kBlock;

// The power of two that brings a row's largest step to [1, 2), kept within the normal float
// exponents so that 2^-shift is a normal float too.
int row_shift(double largest_step) { return std::clamp(-std::ilogb(largest_step), -126, 126); }

std::vector<float> unscales(const std::vector<int>& shift) {
  std::vector<float> u(shift.size());
  for (size_t i = 0; i < shift.size(); ++i) u[i] = std::ldexp(1.f, -shift[i]);
  return u;
}

// x [M, K] (K % 32 == 0) -> 3 digits per channel, digits [M, B, 3 * 128] (B = ceil(K / 128), zero
// beyond K: the caller passes it zeroed), step [M, B] and shift [M]: x = 2^-shift * step * (a 2^16 +
// b 2^8 + c) to within half a step, max|x of the block| / 2 / kDigitMax. The per-row power of two
// keeps step and scale * step normal floats whatever the size of x (x ~ 1e-34 lost 3 digits without).
__attribute__((target("avx512f,avx512bw,avx512vl"))) void split_digits(const float* x, int64_t M, int64_t K,
                                                                         int8_t* digits, float* step, int* shift) {
  const __m512i even_idx = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  const __m512i odd_idx = _mm512_add_epi32(even_idx, _mm512_set1_epi32(1));
  const __m512i lim = _mm512_set1_epi32(kDigitMax), half = _mm512_set1_epi32(128), byte = _mm512_set1_epi32(255);
  const int64_t B = int4_blocks::count(K);
  std::vector<float> tops(static_cast<size_t>(B));
  for (int64_t m = 0; m < M; ++m) {
    float row_top = 0.f;
    for (int64_t b = 0; b < B; ++b) {
      const float* xb = x + m * K + b * kBlock;
      __m512 mx = _mm512_setzero_ps();
      for (int64_t i = 0; i < std::min(kBlock, K - b * kBlock); i += 16)
        mx = _mm512_max_ps(mx, _mm512_abs_ps(_mm512_loadu_ps(xb + i)));
      tops[b] = _mm512_reduce_max_ps(mx);
      // a non-finite x gets step 0 here; its group sum (the zero-point term) makes the output non-finite
      if (!(tops[b] <= std::numeric_limits<float>::max())) tops[b] = 0.f;
      row_top = std::max(row_top, tops[b]);
    }
    shift[m] = row_top > 0.f ? row_shift(static_cast<double>(row_top) / kDigitMax) : 0;
    for (int64_t b = 0; b < B; ++b) {
      const float* xb = x + m * K + b * kBlock;
      const int chunks = static_cast<int>(std::min<int64_t>(kBlock, K - b * kBlock) / 32);  // the rest stays 0
      const double d = static_cast<double>(tops[b]) / kDigitMax;
      step[m * B + b] = static_cast<float>(std::ldexp(d, shift[m]));
      const __m512d inv = _mm512_set1_pd(d > 0.0 ? 1.0 / d : 0.0);
      int8_t* out = digits + (m * B + b) * kBlockBytes<3>;
      for (int u = 0; u < chunks; ++u)
        for (int h = 0; h < 2; ++h) {
          const __m512 v = _mm512_permutex2var_ps(_mm512_loadu_ps(xb + 32 * u), h ? odd_idx : even_idx,
                                                  _mm512_loadu_ps(xb + 32 * u + 16));
          const __m256i lo = _mm512_cvtpd_epi32(_mm512_mul_pd(_mm512_cvtps_pd(_mm512_castps512_ps256(v)), inv));
          const __m256i hi = _mm512_cvtpd_epi32(_mm512_mul_pd(
              _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1))), inv));
          __m512i n = _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
          n = _mm512_max_epi32(_mm512_min_epi32(n, lim), _mm512_sub_epi32(_mm512_setzero_si512(), lim));
          // balanced base-256 digits: c = ((n + 128) mod 256) - 128, then the same for (n - c) / 256
          const __m512i c = _mm512_sub_epi32(_mm512_and_si512(_mm512_add_epi32(n, half), byte), half);
          const __m512i n1 = _mm512_srai_epi32(_mm512_sub_epi32(n, c), 8);
          const __m512i bd = _mm512_sub_epi32(_mm512_and_si512(_mm512_add_epi32(n1, half), byte), half);
          const __m512i a = _mm512_srai_epi32(_mm512_sub_epi32(n1, bd), 8);
          int8_t* o = out + h * 64 + u * 16;
          _mm_storeu_si128(reinterpret_cast<__m128i*>(o), _mm512_cvtepi32_epi8(a));
          _mm_storeu_si128(reinterpret_cast<__m128i*>(o + 128), _mm512_cvtepi32_epi8(bd));
          _mm_storeu_si128(reinterpret_cast<__m128i*>(o + 256), _mm512_cvtepi32_epi8(c));
        }
    }
  }
  // tops' destructor would otherwise be a tail call into operator delete without a vzeroupper,
  // leaving the upper register state dirty for the SSE code that follows (see dequant_span_avx512)
  tops.clear();
  tops.shrink_to_fit();
  _mm256_zeroupper();
}

// x [M, K] (K % 32 == 0) -> Q8_0: per 32 channels d = max|x| / 127 and q = round_half_even(x / d)
// (0 where d = 0), in IEEE float32 like the reference; q [M, B, 128], lane_step [M, B, 16] = 2^shift
// d of lane l's channels (both zero beyond K: the caller passes them zeroed), shift [M] as in
// split_digits, xsum [M, G] = 2^shift * sum of d q over each group (in double). A block with a NaN
// or inf gets d = NaN, so every output that reads it is NaN.
__attribute__((target("avx512f,avx512bw,avx512vl"))) void quantize_q8(const float* x, int64_t M, int64_t K,
                                                                        int64_t gs, int8_t* q, float* lane_step,
                                                                        int* shift, double* xsum) {
  const __m512i even_idx = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  const __m512i odd_idx = _mm512_add_epi32(even_idx, _mm512_set1_epi32(1));
  const int64_t B = int4_blocks::count(K), G = (K + gs - 1) / gs;
  for (int64_t m = 0; m < M; ++m) {
    float row_d = 0.f;
    for (int64_t g = 0; g < G; ++g) xsum[m * G + g] = 0.0;
    for (int64_t b = 0; b < B; ++b)
      for (int u = 0; u < std::min<int64_t>(kBlock, K - b * kBlock) / kQ8Block; ++u) {
        const int64_t k0 = b * kBlock + u * kQ8Block;
        const __m512 x0 = _mm512_loadu_ps(x + m * K + k0), x1 = _mm512_loadu_ps(x + m * K + k0 + 16);
        const float top = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(x0), _mm512_abs_ps(x1)));
        // (x - x) is NaN exactly for NaN and inf, whatever max_ps does with a NaN
        const bool finite = _mm512_cmp_ps_mask(_mm512_sub_ps(x0, x0), _mm512_sub_ps(x1, x1), _CMP_ORD_Q) == 0xFFFF;
        const float d = finite ? top / 127.f : std::numeric_limits<float>::quiet_NaN();
        __m512i q0 = _mm512_setzero_si512(), q1 = _mm512_setzero_si512();
        if (finite && d > 0.f) {
          const __m512 dv = _mm512_set1_ps(d);
          q0 = _mm512_cvtps_epi32(_mm512_div_ps(x0, dv));  // MXCSR default: round half to even
          q1 = _mm512_cvtps_epi32(_mm512_div_ps(x1, dv));
        }
        int8_t* o = q + (m * B + b) * kBlockBytes<1> + u * 16;
        _mm_storeu_si128(reinterpret_cast<__m128i*>(o), _mm512_cvtepi32_epi8(_mm512_permutex2var_epi32(q0, even_idx, q1)));
        _mm_storeu_si128(reinterpret_cast<__m128i*>(o + 64), _mm512_cvtepi32_epi8(_mm512_permutex2var_epi32(q0, odd_idx, q1)));
        for (int l = 0; l < 4; ++l) lane_step[(m * B + b) * 16 + u * 4 + l] = d;
        xsum[m * G + k0 / gs] += static_cast<double>(d) * _mm512_reduce_add_epi32(_mm512_add_epi32(q0, q1));
        if (d <= std::numeric_limits<float>::max()) row_d = std::max(row_d, d);
      }
    shift[m] = row_d > 0.f ? row_shift(row_d) : 0;
    for (int64_t i = m * B * 16; i < (m + 1) * B * 16; ++i) lane_step[i] = std::ldexp(lane_step[i], shift[m]);
    for (int64_t g = 0; g < G; ++g) xsum[m * G + g] = std::ldexp(xsum[m * G + g], shift[m]);
  }
}

// The activation side of one call (split_digits or quantize_q8) and the int4 weight.
struct DigitX {
  const int8_t* digits;        // [M, B, kBlockBytes<D>]
  const float* step;           // D = 3: [M, B]; D = 1: [M, B, 16] (per int32 lane)
  const float* gsum;           // [M, G] 2^shift * sum of x over each group
  const float* unscale;        // [M] 2^-shift: undoes the power of two in step and gsum
  const int32_t* block_group;  // [B] group of each block
  int64_t B, G;
};
struct Int4Weight {
  const uint8_t* qw;  // [N, K/2]
  const float* scales;
  const uint8_t* zeros;  // [N, G]
  int64_t row_bytes;
  __mmask64 last_block;  // the bytes of a row's last 128-channel block that exist
};

constexpr int kSplitRows = 4;  // output rows per step: one decode of their weight serves every row of x

// What a tile needs besides the weight: for D = 3, scale_step[m][j][b] = scales[n + j, g(b)] *
// step[m][b] (broadcast from memory in the loop); the zero-point term sum_g s z sum_g(x) as a
// 16-lane vector per (m, j), which starts the accumulator with its sign flipped.
template <int D, int MT, int NT>
__attribute__((target("avx512f,avx512bw,avx512vl"))) inline void digit_tile_setup(
    const DigitX& x, int64_t m0, const Int4Weight& w, int64_t n, float* scale_step, __m512 (&total)[MT][NT]) {
  const int64_t B = x.B, G = x.G;
  for (int j = 0; j < NT; ++j) {
    const float* srow = w.scales + (n + j) * G;
    const uint8_t* zrow = w.zeros + (n + j) * G;
    if constexpr (D == 3) {
      for (int64_t b = 0; b < B; b += 16) {
        const __mmask16 k = static_cast<__mmask16>(B - b >= 16 ? 0xFFFF : (1u << (B - b)) - 1);
        // G == B: one group per block (group size 128, or one block in all), a plain load; a
        // gather (microcoded on Zen 4) was a sixth of the M = 1 kernel's time there
        const __m512 s = G == B ? _mm512_maskz_loadu_ps(k, srow + b)
                                : _mm512_mask_i32gather_ps(_mm512_setzero_ps(), k,
                                                           _mm512_maskz_loadu_epi32(k, x.block_group + b), srow, 4);
        for (int m = 0; m < MT; ++m)
          _mm512_mask_storeu_ps(scale_step + (m * NT + j) * B + b, k,
                                _mm512_mul_ps(s, _mm512_maskz_loadu_ps(k, x.step + (m0 + m) * B + b)));
      }
    }
    __m512 c[MT];
    for (int m = 0; m < MT; ++m) c[m] = _mm512_setzero_ps();
    for (int64_t g = 0; g < G; g += 16) {
      const __mmask16 k = static_cast<__mmask16>(G - g >= 16 ? 0xFFFF : (1u << (G - g)) - 1);
      const __m512 sz = _mm512_mul_ps(_mm512_maskz_loadu_ps(k, srow + g),
                                      _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(k, zrow + g))));
      for (int m = 0; m < MT; ++m) c[m] = _mm512_fmadd_ps(sz, _mm512_maskz_loadu_ps(k, x.gsum + (m0 + m) * G + g), c[m]);
    }
    for (int m = 0; m < MT; ++m) total[m][j] = _mm512_sub_ps(_mm512_setzero_ps(), c[m]);
  }
}

// One block of 128 channels (64 packed bytes of each row; the last block of a K that is not a
// multiple of 128 loads only its bytes, mask `tail`, and meets zero digits beyond K) for rows
// n..n+NT-1 and rows m0..m0+MT-1 of x. Per (m, row), D = 3: 6 vpdpbusd (3 digits x 2 nibble
// halves) into one int32 accumulator, Horner-shifted by 8 bits between digits (|lane| <= 8
// channels * 15 * kDigitMax < 2^31: exact), then one convert and one FMA with scale * step. D = 1:
// 2 vpdpbusd, convert, times the scale, FMA with the lanes' activation scales.
template <int D, int MT, int NT>
__attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni"))) inline void digit_block(
    const DigitX& x, int64_t m0, const Int4Weight& w, int64_t n, int64_t b, bool full, __mmask64 tail,
    const float* scale_step, __m512 (&total)[MT][NT]) {
  const int64_t B = x.B, G = x.G;
  const __m512i low4 = _mm512_set1_epi8(0x0F);
  __m512i lo[NT], hi[NT];
  for (int j = 0; j < NT; ++j) {
    const uint8_t* p = w.qw + (n + j) * w.row_bytes + b * 64;
    const __m512i v = full ? _mm512_loadu_si512(p) : _mm512_maskz_loadu_epi8(tail, p);
    // the next step's rows: with the hardware prefetcher alone, 1.5x the time at M = 1
    _mm_prefetch(reinterpret_cast<const char*>(p + kSplitRows * w.row_bytes), _MM_HINT_T0);
    lo[j] = _mm512_and_si512(v, low4);
    hi[j] = _mm512_and_si512(_mm512_srli_epi16(v, 4), low4);
  }
  for (int m = 0; m < MT; ++m) {
    const int8_t* xb = x.digits + ((m0 + m) * B + b) * kBlockBytes<D>;
    const __m512i ae = _mm512_loadu_si512(xb), ao = _mm512_loadu_si512(xb + 64);
    if constexpr (D == 3) {
      const __m512i be = _mm512_loadu_si512(xb + 128), bo = _mm512_loadu_si512(xb + 192);
      const __m512i ce = _mm512_loadu_si512(xb + 256), co = _mm512_loadu_si512(xb + 320);
      for (int j = 0; j < NT; ++j) {
        __m512i acc = _mm512_dpbusd_epi32(_mm512_setzero_si512(), lo[j], ae);
        acc = _mm512_slli_epi32(_mm512_dpbusd_epi32(acc, hi[j], ao), 8);
        acc = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(acc, lo[j], be), hi[j], bo);
        acc = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(_mm512_slli_epi32(acc, 8), lo[j], ce), hi[j], co);
        total[m][j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc), _mm512_set1_ps(scale_step[(m * NT + j) * B + b]),
                                      total[m][j]);
      }
    } else {
      const __m512 lane_step = _mm512_loadu_ps(x.step + ((m0 + m) * B + b) * 16);
      for (int j = 0; j < NT; ++j) {
        const __m512i acc = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(_mm512_setzero_si512(), lo[j], ae), hi[j], ao);
        const __m512 s = _mm512_set1_ps(w.scales[(n + j) * G + x.block_group[b]]);
        total[m][j] = _mm512_fmadd_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(acc), s), lane_step, total[m][j]);
      }
    }
  }
}

// Output rows n..n+NT-1 for rows m0..m0+MT-1 of x.
template <int D, int MT, int NT>
__attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni"))) inline void digit_tile(
    const DigitX& x, int64_t m0, const Int4Weight& w, int64_t n, float* out, int64_t N, float* scale_step) {
  const int64_t B = x.B, G = x.G;
  // the next step's scales and zeros, which digit_tile_setup would otherwise wait for
  for (int64_t i = 0; i < NT * G * 4; i += 64)
    _mm_prefetch(reinterpret_cast<const char*>(w.scales + (n + kSplitRows) * G) + i, _MM_HINT_T0);
  for (int64_t i = 0; i < NT * G; i += 64)
    _mm_prefetch(reinterpret_cast<const char*>(w.zeros + (n + kSplitRows) * G + i), _MM_HINT_T0);
  __m512 total[MT][NT];
  digit_tile_setup<D, MT, NT>(x, m0, w, n, scale_step, total);
  for (int64_t b = 0; b + 1 < B; ++b) digit_block<D, MT, NT>(x, m0, w, n, b, true, 0, scale_step, total);
  digit_block<D, MT, NT>(x, m0, w, n, B - 1, false, w.last_block, scale_step, total);
  for (int m = 0; m < MT; ++m)
    for (int j = 0; j < NT; ++j) out[(m0 + m) * N + n + j] = _mm512_reduce_add_ps(total[m][j]) * x.unscale[m0 + m];
}

// kSplitRows output rows (NT = 1: one row) for rows m0.. of x: 4 x 4 tiles for MT <= 2, two
// 4 x 2 tiles above (a 4 x 4 tile's 16 accumulators plus weights and digits spill registers).
template <int D, int MT, int NT>
__attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni"))) void digit_step(
    const DigitX& x, int64_t m0, const Int4Weight& w, int64_t n, float* out, int64_t N, float* scale_step) {
  if constexpr (NT == 1 || MT <= 2) {
    digit_tile<D, MT, NT>(x, m0, w, n, out, N, scale_step);
  } else {
    digit_tile<D, MT, NT / 2>(x, m0, w, n, out, N, scale_step);
    digit_tile<D, MT, NT / 2>(x, m0, w, n + NT / 2, out, N, scale_step);
  }
}

// Rows n0..n1 of the output for all M rows of x. Every row tile of x meets the weight of a step
// while it is in L1 (one pass over the weight whatever M).
template <int D, int NT>
__attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni"))) void digit_steps(
    const DigitX& x, int64_t M, const Int4Weight& w, int64_t n, float* out, int64_t N, float* scale_step) {
  for (int64_t m0 = 0; m0 < M; m0 += kTileM) {
    switch (std::min<int64_t>(kTileM, M - m0)) {
      case 1: digit_step<D, 1, NT>(x, m0, w, n, out, N, scale_step); break;
      case 2: digit_step<D, 2, NT>(x, m0, w, n, out, N, scale_step); break;
      case 3: digit_step<D, 3, NT>(x, m0, w, n, out, N, scale_step); break;
      default: digit_step<D, 4, NT>(x, m0, w, n, out, N, scale_step); break;
    }
  }
}

template <int D>
void digit_rows(const DigitX& x, int64_t M, const Int4Weight& w, int64_t n0, int64_t n1, float* out, int64_t N) {
  std::vector<float> scale_step(static_cast<size_t>(D == 3 ? kTileM * kSplitRows * x.B : 0));
  int64_t n = n0;
  for (; n + kSplitRows <= n1; n += kSplitRows) digit_steps<D, kSplitRows>(x, M, w, n, out, N, scale_step.data());
  for (; n < n1; ++n) digit_steps<D, 1>(x, M, w, n, out, N, scale_step.data());
}

// The D-digit kernel over all output rows, for x already in digits.
template <int D>
void digit_gemm(const DigitX& x, int64_t M, int64_t K, const uint8_t* qweight, const float* scales,
                const uint8_t* zeros, int64_t N, float* out, int threads) {
  const Int4Weight w{qweight, scales, zeros, K / 2, int4_blocks::tail_mask(K)};
  parallel_for(N, threads, kGrainN, [&](int64_t n0, int64_t n1) { digit_rows<D>(x, M, w, n0, n1, out, N); });
}

// ---------------------------------------------------------------- int4 x int8 digits, AVX2
// The vnni_digits kernel for CPUs with AVX2 but no AVX-512 (AMD Zen 2/3, client Intel), on the
// same digits of x (split_digits_avx2: the same values as split_digits). AVX2 has no vpdpbusd:
// per digit and 64 packed bytes of a row, 4 vpmaddubsw (u8 nibble x s8 digit -> s16 sums of 2,
// |.| <= 2 * 15 * 128) summed in int16 (8 products, <= 15360: no saturation), one vpmaddwd to
// int32 lanes of 16 channels (by 256 for the top digit, by 1 for the others) and a Horner shift by 8
// bits (|lane| <= 16 * 15 * kDigitMax < 2^31: exact). 38 vector ops per 128 weights and row of x
// against 56 for the avx2_fma kernel at M = 1; that kernel converts the weight once for all rows of x (40 ops) and then
// needs 16 FMAs per row, so from M = 2 on it is the cheaper one and w4a16_kernel picks it.
//
// split_digits on AVX2, value for value: per element the same double product x / step, rounded
// half to even by vcvtpd2dq (a NaN, i.e. x non-finite, clamps to -kDigitMax), then the balanced
// base-256 digits in int32 lanes. A scalar version with std::nearbyint per element cost 4-10 us
// per call at K = 576-1536, as much as the kernel's own work on a 576 x 576 weight.
__attribute__((target("avx2,fma"))) void split_digits_avx2(const float* x, int64_t M, int64_t K, int8_t* digits,
                                                           float* step, int* shift) {
  const int64_t B = int4_blocks::count(K);
  std::vector<float> tops(static_cast<size_t>(B));
  alignas(32) int32_t d3[3][kBlock];  // the block's digits a, b, c in channel order
  const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFFFFFF));
  const __m256d hi = _mm256_set1_pd(kDigitMax), lo = _mm256_set1_pd(-kDigitMax);
  const __m256i half = _mm256_set1_epi32(128), byte = _mm256_set1_epi32(255);
  for (int64_t m = 0; m < M; ++m) {
    const float* xm = x + m * K;
    float row_top = 0.f;
    for (int64_t b = 0; b < B; ++b) {
      __m256 t = _mm256_setzero_ps();
      for (int64_t k = b * kBlock; k < std::min(K, (b + 1) * kBlock); k += 8)
        t = _mm256_max_ps(_mm256_and_ps(_mm256_loadu_ps(xm + k), abs_mask), t);  // a NaN x leaves t
      alignas(32) float lanes[8];
      _mm256_store_ps(lanes, t);
      float top = 0.f;
      for (float l : lanes) top = std::max(top, l);
      tops[b] = top <= std::numeric_limits<float>::max() ? top : 0.f;  // as split_digits: non-finite -> step 0
      row_top = std::max(row_top, tops[b]);
    }
    shift[m] = row_top > 0.f ? row_shift(static_cast<double>(row_top) / kDigitMax) : 0;
    for (int64_t b = 0; b < B; ++b) {
      const double d = static_cast<double>(tops[b]) / kDigitMax, inv = d > 0.0 ? 1.0 / d : 0.0;
      step[m * B + b] = static_cast<float>(std::ldexp(d, shift[m]));
      const int64_t k0 = b * kBlock, n = std::min(K, k0 + kBlock) - k0;  // n % 32 == 0
      const __m256d iv = _mm256_set1_pd(inv);
      for (int64_t i = 0; i < n; i += 8) {
        __m256d t[2] = {_mm256_mul_pd(_mm256_cvtps_pd(_mm_loadu_ps(xm + k0 + i)), iv),
                        _mm256_mul_pd(_mm256_cvtps_pd(_mm_loadu_ps(xm + k0 + i + 4)), iv)};
        __m128i r[2];
        for (int h = 0; h < 2; ++h)  // t >= max -> max; -max < t < max -> round(t); else (and NaN) -> -max
          r[h] = _mm256_cvtpd_epi32(_mm256_blendv_pd(lo, _mm256_min_pd(t[h], hi), _mm256_cmp_pd(t[h], lo, _CMP_GT_OQ)));
        const __m256i v = _mm256_set_m128i(r[1], r[0]);
        const __m256i c = _mm256_sub_epi32(_mm256_and_si256(_mm256_add_epi32(v, half), byte), half);
        const __m256i v1 = _mm256_srai_epi32(_mm256_sub_epi32(v, c), 8);
        const __m256i bd = _mm256_sub_epi32(_mm256_and_si256(_mm256_add_epi32(v1, half), byte), half);
        _mm256_store_si256(reinterpret_cast<__m256i*>(d3[0] + i), _mm256_srai_epi32(_mm256_sub_epi32(v1, bd), 8));
        _mm256_store_si256(reinterpret_cast<__m256i*>(d3[1] + i), bd);
        _mm256_store_si256(reinterpret_cast<__m256i*>(d3[2] + i), c);
      }
      int8_t* out = digits + (m * B + b) * kBlockBytes<3>;
      for (int j = 0; j < 3; ++j)  // [even channels 64 | odd channels 64] per digit
        for (int64_t e = 0; e < n / 2; ++e) {
          out[j * kBlock + e] = static_cast<int8_t>(d3[j][2 * e]);
          out[j * kBlock + 64 + e] = static_cast<int8_t>(d3[j][2 * e + 1]);
        }
    }
  }
}

// One digit of a block against its 64 weight bytes' nibbles: int16 sums of 8 products per lane.
__attribute__((target("avx2,fma"))) inline __m256i digit_sums_avx2(__m256i lo0, __m256i lo1, __m256i hi0,
                                                                   __m256i hi1, const int8_t* digit) {
  const __m256i* xd = reinterpret_cast<const __m256i*>(digit);
  const __m256i s = _mm256_add_epi16(_mm256_maddubs_epi16(lo0, _mm256_loadu_si256(xd)),
                                     _mm256_maddubs_epi16(lo1, _mm256_loadu_si256(xd + 1)));
  return _mm256_add_epi16(_mm256_add_epi16(s, _mm256_maddubs_epi16(hi0, _mm256_loadu_si256(xd + 2))),
                          _mm256_maddubs_epi16(hi1, _mm256_loadu_si256(xd + 3)));
}

// Block b of rows n..n+NT-1 against rows m0..m0+MT-1 of x, into total (kept in registers: the
// loops over rows are unrolled). kTail: the short last block (16, 32 or 48 bytes), loaded with
// masks (zero beyond, where zero digits meet them; a copy into a zeroed buffer stalled every row
// on store forwarding, 15% of K = 576's time).
template <int MT, int NT, bool kTail>
__attribute__((target("avx2,fma"), always_inline)) inline void digit_block_avx2(
    const DigitX& x, int64_t m0, const Int4Weight& w, int64_t n, int64_t b, __m256i keep0, __m256i keep1,
    __m256 (&total)[MT][NT]) {
  const int64_t B = x.B, G = x.G;
  const __m256i low4 = _mm256_set1_epi8(0x0F), ones = _mm256_set1_epi16(1), by256 = _mm256_set1_epi16(256);
#pragma GCC unroll 4
  for (int j = 0; j < NT; ++j) {
    const uint8_t* p = w.qw + (n + j) * w.row_bytes + b * 64;
    // the next step's rows: the hardware prefetcher alone leaves the kernel waiting (as vnni_digits)
    _mm_prefetch(reinterpret_cast<const char*>(p + kSplitRows * w.row_bytes), _MM_HINT_T0);
    _mm_prefetch(reinterpret_cast<const char*>(p + kSplitRows * w.row_bytes + 63), _MM_HINT_T0);
    const __m256i v0 = kTail ? _mm256_maskload_epi32(reinterpret_cast<const int*>(p), keep0)
                             : _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
    const __m256i v1 = kTail ? _mm256_maskload_epi32(reinterpret_cast<const int*>(p + 32), keep1)
                             : _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + 32));
    const __m256i lo0 = _mm256_and_si256(v0, low4), lo1 = _mm256_and_si256(v1, low4);
    const __m256i hi0 = _mm256_and_si256(_mm256_srli_epi16(v0, 4), low4);
    const __m256i hi1 = _mm256_and_si256(_mm256_srli_epi16(v1, 4), low4);
    const float s = w.scales[(n + j) * G + x.block_group[b]];
#pragma GCC unroll 4
    for (int m = 0; m < MT; ++m) {
      const int8_t* xb = x.digits + ((m0 + m) * B + b) * kBlockBytes<3>;
      // Horner: 256 a + b in one step (vpmaddwd by 256 and by 1), then 256 (256 a + b) + c
      __m256i acc = _mm256_add_epi32(_mm256_madd_epi16(digit_sums_avx2(lo0, lo1, hi0, hi1, xb), by256),
                                     _mm256_madd_epi16(digit_sums_avx2(lo0, lo1, hi0, hi1, xb + kBlock), ones));
      acc = _mm256_add_epi32(_mm256_slli_epi32(acc, 8),
                             _mm256_madd_epi16(digit_sums_avx2(lo0, lo1, hi0, hi1, xb + 2 * kBlock), ones));
      total[m][j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(acc), _mm256_set1_ps(s * x.step[(m0 + m) * B + b]),
                                    total[m][j]);
    }
  }
}

// Output rows n..n+NT-1 for rows m0..m0+MT-1 of x; tail_bytes: the bytes of a row's last block.
template <int MT, int NT>
__attribute__((target("avx2,fma"))) inline void digit_tile_avx2(const DigitX& x, int64_t m0, const Int4Weight& w,
                                                                 int64_t n, int64_t tail_bytes, float* out, int64_t N) {
  const int64_t B = x.B, G = x.G;
  __m256 total[MT][NT];
  for (int j = 0; j < NT; ++j)
    for (int m = 0; m < MT; ++m) total[m][j] = _mm256_setzero_ps();
  const __m256i byte_at = _mm256_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28);
  const __m256i keep0 = _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(tail_bytes)), byte_at);
  const __m256i keep1 = _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(tail_bytes) - 32), byte_at);
  const int64_t full = tail_bytes == 64 ? B : B - 1;
  for (int64_t b = 0; b < full; ++b) digit_block_avx2<MT, NT, false>(x, m0, w, n, b, keep0, keep1, total);
  if (full < B) digit_block_avx2<MT, NT, true>(x, m0, w, n, full, keep0, keep1, total);
  for (int j = 0; j < NT; ++j)
    for (int m = 0; m < MT; ++m) {
      float c = 0.f;  // the zero-point term sum_g s z sum_g(x), in the units of total
      for (int64_t g = 0; g < G; ++g)
        c += w.scales[(n + j) * G + g] * static_cast<float>(w.zeros[(n + j) * G + g]) * x.gsum[(m0 + m) * G + g];
      out[(m0 + m) * N + n + j] = (hsum_avx2(total[m][j]) - c) * x.unscale[m0 + m];
    }
}

template <int MT>
__attribute__((target("avx2,fma"))) void digit_rows_avx2(const DigitX& x, int64_t m0, const Int4Weight& w,
                                                         int64_t tail_bytes, int64_t n0, int64_t n1, float* out,
                                                         int64_t N) {
  constexpr int NT = MT <= 2 ? kSplitRows : kSplitRows / 2;  // MT * NT accumulators + 4 nibble vectors
  int64_t n = n0;
  for (; n + NT <= n1; n += NT) digit_tile_avx2<MT, NT>(x, m0, w, n, tail_bytes, out, N);
  for (; n < n1; ++n) digit_tile_avx2<MT, 1>(x, m0, w, n, tail_bytes, out, N);
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

constexpr int64_t kW8FarTiles = 8;

// The int8 tiles' prefetch, at each k % 64 == 0 of a tile of NT rows starting at row n: the rows
// `near` tiles on into L1 and kW8FarTiles tiles on into L2, a cache line per row.
template <int NT>
inline void prefetch_w8_lines(const int8_t* qw, int64_t K, int64_t n, int64_t near, int64_t k) {
  for (int j = 0; j < NT; ++j) {
    _mm_prefetch(reinterpret_cast<const char*>(qw + (n + near * NT + j) * K + k), _MM_HINT_T0);
    _mm_prefetch(reinterpret_cast<const char*>(qw + (n + kW8FarTiles * NT + j) * K + k), _MM_HINT_T1);
  }
}

template <int MT, int NT>
__attribute__((target("avx512f,avx512bw"))) inline void w8_tile_avx512(
    const float* x, int64_t K, const int8_t* qw, const float* scales, float* out, int64_t N, int64_t n) {
  __m512 even[MT][NT], odd[MT][NT];
  for (int m = 0; m < MT; ++m)
    for (int j = 0; j < NT; ++j) even[m][j] = odd[m][j] = _mm512_setzero_ps();
  int64_t k = 0;
  // Streamed from DRAM (SmolLM2's 28 MB LM head after the decoder's weights evicted it), the tile
  // waits on memory: per 64 weights of a row, the next tile's line into L1 and the line
  // kW8FarTiles tiles on into L2 (Zen 4, the head cold from DRAM: 7.3 GB/s with neither, 10 with
  // the L1 one, 18 with both on 1 thread; 4-32 tiles alike; 2 threads 15 -> 31 GB/s)
  for (; k + 32 <= K; k += 32) {
    if (k % 64 == 0) prefetch_w8_lines<NT>(qw, K, n, 1, k);
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

template <int MT, int NT>
__attribute__((target("avx2,fma"))) inline void w8_step_avx2(
    const float* x, int64_t K, const int8_t* qw, int64_t n, int64_t k, __m256 (&acc)[MT][NT]) {
  __m256 w[NT];
  for (int j = 0; j < NT; ++j)
    w[j] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(qw + (n + j) * K + k))));
  for (int m = 0; m < MT; ++m) {
    const __m256 xv = _mm256_loadu_ps(x + m * K + k);
    for (int j = 0; j < NT; ++j) acc[m][j] = _mm256_fmadd_ps(w[j], xv, acc[m][j]);
  }
}

constexpr int kW8Ahead = 2;  // measured on Zen 3: 1 and 2 tiles ahead alike, 4 too far
template <int MT, int NT>
__attribute__((target("avx2,fma"))) inline void w8_tile_avx2(
    const float* x, int64_t K, const int8_t* qw, const float* scales, float* out, int64_t N, int64_t n) {
  __m256 even[MT][NT], odd[MT][NT];
  for (int m = 0; m < MT; ++m)
    for (int j = 0; j < NT; ++j) even[m][j] = odd[m][j] = _mm256_setzero_ps();
  // The rows kW8Ahead tiles on, a cache line per row and 64 weights: streamed from DRAM (an LM
  // head), the hardware prefetcher alone left the tile waiting for half of its time. And, as in
  // w8_tile_avx512, the line kW8FarTiles tiles on into L2 (this tile run on Zen 4 with the head
  // cold: 7.8 -> 18 GB/s on 1 thread, 16 -> 24 on 2; not measured on an AVX2-only CPU).
  for (int64_t k = 0; k < K; k += 16) {  // K % 16 == 0
    if (k % 64 == 0) prefetch_w8_lines<NT>(qw, K, n, kW8Ahead, k);
    w8_step_avx2<MT, NT>(x, K, qw, n, k, even);
    w8_step_avx2<MT, NT>(x, K, qw, n, k + 8, odd);
  }
  for (int m = 0; m < MT; ++m)
    for (int j = 0; j < NT; ++j) out[m * N + n + j] = hsum_avx2(_mm256_add_ps(even[m][j], odd[m][j])) * scales[n + j];
}

template <int MT>
__attribute__((target("avx2,fma"))) void w8_rows_avx2(
    const float* x, int64_t K, const int8_t* qw, const float* scales, float* out, int64_t N, int64_t n0, int64_t n1) {
  constexpr int NT = kTileN2<MT>;  // 2 * MT * NT accumulators and NT weight vectors
  int64_t n = n0;
  for (; n + NT <= n1; n += NT) w8_tile_avx2<MT, NT>(x, K, qw, scales, out, N, n);
  for (; n < n1; ++n) w8_tile_avx2<MT, 1>(x, K, qw, scales, out, N, n);
}

}  // namespace

namespace {

bool has_avx512() {
  static const bool ok = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw");
  return ok;
}

}  // namespace

bool weight_only_simd() { return has_avx512() || has_avx2_fma(); }

bool weight_only_vnni() {
  static const bool ok = has_avx512() && __builtin_cpu_supports("avx512vl") &&
                         __builtin_cpu_supports("avx512vnni");
  return ok;
}

const char* w4a16_kernel(int64_t K, int64_t group_size, int64_t M) {
  if (!weight_only_simd()) return "scalar";
  // each 128-channel block in one group; the last block may be short (K % 32 == 0 always)
  const bool blocks = group_size % kBlock == 0 || group_size == K;
  // per 128 weights, AVX2 digits: 8 + ~30 per row of x; FMA: 40 + 16 per row. Digits at M = 1 only
  if (!has_avx512()) return blocks && M == 1 ? "avx2_digits" : "avx2_fma";
  return weight_only_vnni() && blocks ? "vnni_digits" : "avx512_fma";
}

namespace {

// The activation side of a 3-digit call, made once per x: its digits (split_digits or
// split_digits_avx2, which give the same values), steps and the group sums in their units.
struct Digits3 {
  using Split = void (*)(const float*, int64_t, int64_t, int8_t*, float*, int*);
  Digits3(Split split, const float* x, int64_t M, int64_t K, int64_t group_size, const std::vector<double>& xs)
      : B(int4_blocks::count(K)), G((K + group_size - 1) / group_size),
        digits(static_cast<size_t>(M * B * kBlockBytes<3>)), step(static_cast<size_t>(M * B)),
        gsum(static_cast<size_t>(M * G)), groups(int4_blocks::groups(B, group_size)) {
    std::vector<int> shift(static_cast<size_t>(M));
    split(x, M, K, digits.data(), step.data(), shift.data());
    for (int64_t i = 0; i < M * G; ++i) gsum[i] = static_cast<float>(std::ldexp(xs[i], shift[i / G]));
    unscale = unscales(shift);
  }
  DigitX view() const { return {digits.data(), step.data(), gsum.data(), unscale.data(), groups.data(), B, G}; }

  int64_t B, G;
  std::vector<int8_t> digits;
  std::vector<float> step, gsum, unscale;
  std::vector<int32_t> groups;
};

// Runs fn(i, r0, r1) for the rows [r0, r1) of gemm i that fall in [n0, n1) of all gemms' rows.
template <typename F>
void for_segments(const Int4Gemm* gemms, int count, int64_t n0, int64_t n1, F&& fn) {
  int64_t first = 0;
  for (int i = 0; i < count && first < n1; first += gemms[i].N, ++i) {
    const int64_t r0 = std::max<int64_t>(n0 - first, 0), r1 = std::min<int64_t>(n1 - first, gemms[i].N);
    if (r0 < r1) fn(i, r0, r1);
  }
}

}  // namespace

void w4a16_gemm(const float* x, int64_t M, int64_t K, const uint8_t* qweight, const float* scales,
                const uint8_t* zeros, int64_t N, int64_t group_size, float* out, int threads) {
  const Int4Gemm gemm{qweight, scales, zeros, N, out};
  w4a16_gemm_multi(x, M, K, group_size, &gemm, 1, threads);
}

void w4a16_gemm_multi(const float* x, int64_t M, int64_t K, int64_t group_size, const Int4Gemm* gemms, int count,
                      int threads) {
  const int64_t G = (K + group_size - 1) / group_size;
  int64_t rows = 0;
  for (int i = 0; i < count; ++i) rows += gemms[i].N;
  const std::vector<double> xs = group_sums(x, M, K, group_size, G);
  const std::string kernel = w4a16_kernel(K, group_size, M);
  if (kernel == "vnni_digits" || kernel == "avx2_digits") {
    const Digits3 d(kernel == "vnni_digits" ? &split_digits : &split_digits_avx2, x, M, K, group_size, xs);
    if (kernel == "vnni_digits") {
      for (int i = 0; i < count; ++i)
        digit_gemm<3>(d.view(), M, K, gemms[i].qweight, gemms[i].scales, gemms[i].zeros, gemms[i].N, gemms[i].out,
                      threads);
      return;
    }
    const DigitX dx = d.view();
    const int64_t tail_bytes = int4_blocks::tail_bytes(K);
    parallel_for(rows, threads, kGrainN, [&](int64_t n0, int64_t n1) {
      for_segments(gemms, count, n0, n1, [&](int i, int64_t r0, int64_t r1) {
        const Int4Weight w{gemms[i].qweight, gemms[i].scales, gemms[i].zeros, K / 2, 0};
        for_row_tiles<kTileM>(M, [&](auto mt, int64_t m0) {
          digit_rows_avx2<decltype(mt)::value>(dx, m0, w, tail_bytes, r0, r1, gemms[i].out, gemms[i].N);
        });
      });
    });
    return;
  }
  const std::vector<float> xd = deinterleave(x, M, K);
  const bool avx512 = kernel == "avx512_fma", avx2 = kernel == "avx2_fma";
  parallel_for(rows, threads, kGrainN, [&](int64_t n0, int64_t n1) {
    for_segments(gemms, count, n0, n1, [&](int i, int64_t r0, int64_t r1) {
      const Int4Gemm& g = gemms[i];
      if (!avx512 && !avx2) {
        w4_rows_scalar(xd.data(), xs.data(), M, K, g.qweight, g.scales, g.zeros, group_size, G, g.out, g.N, r0, r1);
        return;
      }
      for_row_tiles<kTileM>(M, [&](auto mt, int64_t m0) {
        constexpr int MT = decltype(mt)::value;
        const float* xm = xd.data() + m0 * K;
        const double* sm = xs.data() + m0 * G;
        if (avx512)
          w4_rows_avx512<MT>(xm, sm, K, g.qweight, g.scales, g.zeros, group_size, G, g.out + m0 * g.N, g.N, r0, r1);
        else
          w4_rows_avx2<MT>(xm, sm, K, g.qweight, g.scales, g.zeros, group_size, G, g.out + m0 * g.N, g.N, r0, r1);
      });
    });
  });
}

void w4a8_gemm(const float* x, int64_t M, int64_t K, const uint8_t* qweight, const float* scales,
               const uint8_t* zeros, int64_t N, int64_t group_size, float* out, int threads) {
  const int64_t B = int4_blocks::count(K), G = (K + group_size - 1) / group_size;
  std::vector<int8_t> q(static_cast<size_t>(M * B * kBlockBytes<1>));
  std::vector<float> lane_step(static_cast<size_t>(M * B * 16));
  std::vector<double> xsum(static_cast<size_t>(M * G));
  std::vector<int> shift(static_cast<size_t>(M));
  quantize_q8(x, M, K, group_size, q.data(), lane_step.data(), shift.data(), xsum.data());
  const std::vector<float> gsum(xsum.begin(), xsum.end());
  const std::vector<int32_t> bg = int4_blocks::groups(B, group_size);
  digit_gemm<1>({q.data(), lane_step.data(), gsum.data(), unscales(shift).data(), bg.data(), B, G}, M, K, qweight,
                scales, zeros, N, out, threads);
}

namespace {

// One row's group [k, k1): (q - z) * s in float32, the same two roundings as the torch
// dequantization. Any k parity (odd group sizes start groups mid-byte).
void dequant_span_scalar(const uint8_t* row, float s, float z, int64_t k, int64_t k1, float* w) {
  if (k % 2 && k < k1) w[k] = (static_cast<float>(row[k / 2] >> 4) - z) * s, ++k;
  for (; k + 1 < k1; k += 2) {
    const uint8_t b = row[k / 2];
    w[k] = (static_cast<float>(b & 0xF) - z) * s;
    w[k + 1] = (static_cast<float>(b >> 4) - z) * s;
  }
  if (k < k1) w[k] = (static_cast<float>(row[k / 2] & 0xF) - z) * s;
}

// The same for an even k, 32 weights (16 bytes) per step: nibbles to float, then interleave the
// low (even k) and high (odd k) halves back into k order. Returns where it stopped (< 32 left).
// The caller runs the scalar tail: a tail call from here skipped the vzeroupper, and the SSE code
// after it ran with a dirty upper state, 2x slower than the plain scalar loop.
__attribute__((target("avx512f,avx512bw"))) int64_t dequant_span_avx512(const uint8_t* row, float s, float z,
                                                                        int64_t k, int64_t k1, float* w) {
  const __m512i low4 = _mm512_set1_epi32(0xF);
  const __m512i first = _mm512_set_epi32(23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
  const __m512i second = _mm512_set_epi32(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8);
  const __m512 sv = _mm512_set1_ps(s), zv = _mm512_set1_ps(z);
  for (; k + 32 <= k1; k += 32) {
    const __m512i b = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(row + k / 2)));
    const __m512 lo = _mm512_mul_ps(_mm512_sub_ps(_mm512_cvtepi32_ps(_mm512_and_si512(b, low4)), zv), sv);
    const __m512 hi = _mm512_mul_ps(_mm512_sub_ps(_mm512_cvtepi32_ps(_mm512_srli_epi32(b, 4)), zv), sv);
    _mm512_storeu_ps(w + k, _mm512_permutex2var_ps(lo, first, hi));
    _mm512_storeu_ps(w + k + 16, _mm512_permutex2var_ps(lo, second, hi));
  }
  return k;
}

// The same on 8-lane vectors: bytes e..e+7 give channels 2e..2e+15, the low and high nibbles
// interleaved back into k order with unpack (within 128-bit lanes) and a lane permute.
__attribute__((target("avx2,fma"))) int64_t dequant_span_avx2(const uint8_t* row, float s, float z, int64_t k,
                                                              int64_t k1, float* w) {
  const __m256i low4 = _mm256_set1_epi32(0xF);
  const __m256 sv = _mm256_set1_ps(s), zv = _mm256_set1_ps(z);
  for (; k + 16 <= k1; k += 16) {
    const __m256i b = widen8_avx2(row + k / 2);
    const __m256 lo = _mm256_mul_ps(_mm256_sub_ps(_mm256_cvtepi32_ps(_mm256_and_si256(b, low4)), zv), sv);
    const __m256 hi = _mm256_mul_ps(_mm256_sub_ps(_mm256_cvtepi32_ps(_mm256_srli_epi32(b, 4)), zv), sv);
    const __m256 a = _mm256_unpacklo_ps(lo, hi), c = _mm256_unpackhi_ps(lo, hi);
    _mm256_storeu_ps(w + k, _mm256_permute2f128_ps(a, c, 0x20));
    _mm256_storeu_ps(w + k + 8, _mm256_permute2f128_ps(a, c, 0x31));
  }
  return k;
}

}  // namespace

void w4_dequantize(const uint8_t* qweight, const float* scales, const uint8_t* zeros, int64_t N, int64_t K,
                   int64_t group_size, float* out, int threads) {
  const int64_t G = (K + group_size - 1) / group_size;
  const bool avx512 = has_avx512(), avx2 = has_avx2_fma();
  parallel_for(N, threads, kGrainN, [&](int64_t n0, int64_t n1) {
    for (int64_t n = n0; n < n1; ++n)
      for (int64_t g = 0; g < G; ++g) {
        const int64_t k0 = g * group_size, k1 = std::min(K, k0 + group_size);
        const float s = scales[n * G + g], z = zeros[n * G + g];
        const uint8_t* row = qweight + n * (K / 2);
        int64_t k = k0;
        if (k0 % 2 == 0 && avx512) k = dequant_span_avx512(row, s, z, k0, k1, out + n * K);
        else if (k0 % 2 == 0 && avx2) k = dequant_span_avx2(row, s, z, k0, k1, out + n * K);
        dequant_span_scalar(row, s, z, k, k1, out + n * K);
      }
  });
}

void w8a16_gemm(const float* x, int64_t M, int64_t K, const int8_t* qweight, const float* scales,
                int64_t N, float* out, int threads) {
  const bool avx512 = has_avx512(), avx2 = has_avx2_fma();
  parallel_for(N, threads, kGrainN, [&](int64_t n0, int64_t n1) {
    if (!avx512 && !avx2) {
      w8_rows_scalar(x, M, K, qweight, scales, out, N, n0, n1);
      return;
    }
    for_row_tiles<kTileM>(M, [&](auto mt, int64_t m0) {
      constexpr int MT = decltype(mt)::value;
      if (avx512)
        w8_rows_avx512<MT>(x + m0 * K, K, qweight, scales, out + m0 * N, N, n0, n1);
      else
        w8_rows_avx2<MT>(x + m0 * K, K, qweight, scales, out + m0 * N, N, n0, n1);
    });
  });
}

}  // namespace pyllmops::cpu
