#include "cpu/w8a8_epilogue.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "cpu/cpu_features.h"
#include "cpu/parallel.h"

#if defined(__x86_64__)
#include <immintrin.h>
#define PYLLMOPS_X86 1
#endif

namespace pyllmops::cpu {
namespace {

// float32 -> bfloat16 bits, round to nearest even; NaN stays a (quiet) NaN. Same as torch's cast.
inline uint16_t float_to_bf16(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  if (std::isnan(f)) return static_cast<uint16_t>((bits >> 16) | 0x40u);
  return static_cast<uint16_t>((bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16);
}

// float32 -> IEEE binary16 bits, round to nearest even (overflow to inf, subnormals kept).
inline uint16_t float_to_half(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  const uint32_t sign = (x >> 16) & 0x8000u;
  x &= 0x7fffffffu;
  if (x >= 0x7f800000u) return static_cast<uint16_t>(sign | 0x7c00u | (x > 0x7f800000u ? 0x200u : 0));
  if (x >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);  // rounds past 65504
  if (x < 0x38800000u) {  // subnormal half (or zero): scale so the half ulp is 1, round the integer
    float a;
    std::memcpy(&a, &x, 4);
    return static_cast<uint16_t>(sign | static_cast<uint32_t>(std::nearbyint(a * 16777216.0f)));
  }
  const uint32_t r = x + 0xfffu + ((x >> 13) & 1u) - 0x38000000u;
  return static_cast<uint16_t>(sign | (r >> 13));
}

struct Args {
  const void* acc;
  bool acc_int32;
  int64_t N;
  const float* sa;
  bool a_per_row;
  const float* sb;
  bool b_per_col;
  const float* bias;
  void* out;
  FloatType out_type;
};

void rows_scalar(const Args& p, int64_t begin, int64_t end) {
  for (int64_t m = begin; m < end; ++m) {
    const float sa = p.sa == nullptr ? 1.f : p.sa[p.a_per_row ? m : 0];
    for (int64_t n = 0; n < p.N; ++n) {
      const int64_t i = m * p.N + n;
      float v = p.acc_int32 ? static_cast<float>(static_cast<const int32_t*>(p.acc)[i])
                            : static_cast<const float*>(p.acc)[i];
      if (p.sa != nullptr) v *= sa;
      if (p.sb != nullptr) v *= p.sb[p.b_per_col ? n : 0];
      if (p.bias != nullptr) v += p.bias[n];
      switch (p.out_type) {
        case FloatType::F32: static_cast<float*>(p.out)[i] = v; break;
        case FloatType::F16: static_cast<uint16_t*>(p.out)[i] = float_to_half(v); break;
        case FloatType::BF16: static_cast<uint16_t*>(p.out)[i] = float_to_bf16(v); break;
      }
    }
  }
}

#if PYLLMOPS_X86
#define AVX512 __attribute__((target("avx512f,avx512bw,avx512vl")))

// 16 float32 -> 16 bfloat16 (round to nearest even, NaN kept quiet), the bit trick of float_to_bf16.
AVX512 inline __m256i cvt_bf16(__m512 v) {
  const __m512i bits = _mm512_castps_si512(v);
  const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(1));
  __m512i r = _mm512_srli_epi32(_mm512_add_epi32(_mm512_add_epi32(bits, _mm512_set1_epi32(0x7fff)), lsb), 16);
  const __mmask16 nan = _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
  r = _mm512_mask_or_epi32(r, nan, _mm512_srli_epi32(bits, 16), _mm512_set1_epi32(0x40));
  return _mm512_cvtepi32_epi16(r);
}

AVX512 void rows_avx512(const Args& p, int64_t begin, int64_t end) {
  const __m512 one = _mm512_set1_ps(1.f);
  for (int64_t m = begin; m < end; ++m) {
    const __m512 sa = p.sa == nullptr ? one : _mm512_set1_ps(p.sa[p.a_per_row ? m : 0]);
    const __m512 sb_all = p.sb != nullptr && !p.b_per_col ? _mm512_set1_ps(p.sb[0]) : one;
    for (int64_t n = 0; n < p.N; n += 16) {
      const __mmask16 k = p.N - n >= 16 ? 0xffff : static_cast<__mmask16>((1u << (p.N - n)) - 1);
      const int64_t i = m * p.N + n;
      __m512 v = p.acc_int32 ? _mm512_cvtepi32_ps(_mm512_maskz_loadu_epi32(k, static_cast<const int32_t*>(p.acc) + i))
                             : _mm512_maskz_loadu_ps(k, static_cast<const float*>(p.acc) + i);
      // Multiplying by an exact 1 changes nothing, so the absent scales need no branches.
      v = _mm512_mul_ps(v, sa);
      v = _mm512_mul_ps(v, p.b_per_col ? _mm512_maskz_loadu_ps(k, p.sb + n) : sb_all);
      if (p.bias != nullptr) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(k, p.bias + n));
      switch (p.out_type) {
        case FloatType::F32: _mm512_mask_storeu_ps(static_cast<float*>(p.out) + i, k, v); break;
        case FloatType::F16:
          _mm256_mask_storeu_epi16(static_cast<uint16_t*>(p.out) + i, k,
                                   _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
          break;
        case FloatType::BF16: _mm256_mask_storeu_epi16(static_cast<uint16_t*>(p.out) + i, k, cvt_bf16(v)); break;
      }
    }
  }
}

#endif

}  // namespace

void w8a8_epilogue(const void* acc, bool acc_int32, int64_t M, int64_t N, const float* scale_a, bool a_per_row,
                   const float* scale_b, bool b_per_col, const float* bias, void* out, FloatType out_type,
                   int threads) {
  const Args p{acc, acc_int32, N, scale_a, a_per_row, scale_b, b_per_col, bias, out, out_type};
  auto rows = &rows_scalar;
#if PYLLMOPS_X86
  if (has_avx512_bw_vl()) rows = &rows_avx512;
#endif
  // A chunk should be worth handing to a thread (see quantize_int8_rows): 2^16 elements, ~12 us.
  const int64_t grain = std::max<int64_t>(1, (1 << 16) / std::max<int64_t>(N, 1));
  parallel_for(M, threads, grain, [&](int64_t begin, int64_t end) { rows(p, begin, end); });
}

}  // namespace pyllmops::cpu
