#include "cpu/quant_int8_rows.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <limits>

#include "cpu/cpu_features.h"
#include "cpu/parallel.h"

#if defined(__x86_64__)
#include <immintrin.h>
#define PYLLMOPS_X86 1
#endif

namespace pyllmops::cpu {
namespace {

constexpr float kTinyAmax = std::numeric_limits<float>::min() * 127.0f;

inline float half_to_float(uint16_t h) {
  // IEEE binary16 -> binary32, exact (subnormals included).
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1f, man = h & 0x3ffu;
  float f;
  if (exp == 0) {
    f = std::ldexp(static_cast<float>(man), -24);
  } else if (exp == 31) {
    f = man ? std::numeric_limits<float>::quiet_NaN() : std::numeric_limits<float>::infinity();
  } else {
    f = std::ldexp(static_cast<float>(man | 0x400u), static_cast<int>(exp) - 25);
  }
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  bits |= sign;
  std::memcpy(&f, &bits, 4);
  return f;
}

inline float load_scalar(const void* row, int64_t i, FloatType t) {
  switch (t) {
    case FloatType::F32: return static_cast<const float*>(row)[i];
    case FloatType::F16: return half_to_float(static_cast<const uint16_t*>(row)[i]);
    case FloatType::BF16: {
      const uint32_t bits = static_cast<uint32_t>(static_cast<const uint16_t*>(row)[i]) << 16;
      float f;
      std::memcpy(&f, &bits, 4);
      return f;
    }
  }
  return 0.f;
}

// max that keeps a NaN (std::max / fmax would drop it and hide bad input).
inline float nan_max(float a, float b) { return (std::isnan(b) || b > a) ? b : a; }

// Each row function quantizes one row and returns whether it held a NaN or inf.
bool row_scalar(const void* x, FloatType t, int64_t N, const float* fixed, int8_t* q, float* scale) {
  float s;
  bool bad = false;
  if (fixed == nullptr) {
    float amax = 0.f;
    for (int64_t i = 0; i < N; ++i) amax = nan_max(amax, std::fabs(load_scalar(x, i, t)));
    s = std::isnan(amax) ? amax : std::max(amax, kTinyAmax) / 127.0f;
    bad = !std::isfinite(amax);
  } else {
    s = *fixed;
  }
  *scale = s;
  for (int64_t i = 0; i < N; ++i) {
    const float xi = load_scalar(x, i, t);
    bad |= fixed != nullptr && !std::isfinite(xi);
    const float v = std::nearbyint(xi / s);  // default rounding: half to even
    q[i] = static_cast<int8_t>(std::fmin(std::fmax(v, -127.f), 127.f));
  }
  return bad;
}

#if PYLLMOPS_X86
#define AVX512 __attribute__((target("avx512f,avx512bw,avx512vl")))

// 16 floats from row + i; `mask` selects the valid lanes (others read as 0).
AVX512 inline __m512 load16(const void* row, int64_t i, FloatType t, __mmask16 mask) {
  switch (t) {
    case FloatType::F32: return _mm512_maskz_loadu_ps(mask, static_cast<const float*>(row) + i);
    case FloatType::F16:
      return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(mask, static_cast<const uint16_t*>(row) + i));
    case FloatType::BF16: {
      const __m256i h = _mm256_maskz_loadu_epi16(mask, static_cast<const uint16_t*>(row) + i);
      return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
    }
  }
  return _mm512_setzero_ps();
}

AVX512 bool row_avx512(const void* x, FloatType t, int64_t N, const float* fixed, int8_t* q, float* scale) {
  float s;
  bool bad = false;
  if (fixed == nullptr) {
    __m512 amax = _mm512_setzero_ps();
    __mmask16 nan_seen = 0;
    for (int64_t i = 0; i < N; i += 16) {
      const __mmask16 m = N - i >= 16 ? 0xffff : static_cast<__mmask16>((1u << (N - i)) - 1);
      const __m512 v = _mm512_abs_ps(load16(x, i, t, m));
      nan_seen |= _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
      amax = _mm512_max_ps(amax, v);
    }
    const float a = _mm512_reduce_max_ps(amax);
    s = nan_seen ? std::numeric_limits<float>::quiet_NaN() : std::max(a, kTinyAmax) / 127.0f;
    bad = !std::isfinite(s);
  } else {
    s = *fixed;
  }
  *scale = s;
  const __m512 vs = _mm512_set1_ps(s), lo = _mm512_set1_ps(-127.f), hi = _mm512_set1_ps(127.f);
  const __m512 fmax = _mm512_set1_ps(std::numeric_limits<float>::max());
  __mmask16 nonfinite = 0;  // what a static scale would hide (a dynamic one already shows it)
  for (int64_t i = 0; i < N; i += 16) {
    const __mmask16 m = N - i >= 16 ? 0xffff : static_cast<__mmask16>((1u << (N - i)) - 1);
    const __m512 xv = load16(x, i, t, m);
    // !(|x| <= FLT_MAX) holds exactly for NaN and +-inf; masked-off lanes read as 0.
    nonfinite |= _mm512_cmp_ps_mask(_mm512_abs_ps(xv), fmax, _CMP_NLE_UQ);
    // IEEE division, as in torch. (x * (1 / s) with a division only next to half-integers
    // measured no faster: the pass is bound by memory, not by the divider.)
    __m512 v = _mm512_div_ps(xv, vs);
    v = _mm512_roundscale_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    v = _mm512_min_ps(_mm512_max_ps(v, lo), hi);
    _mm_mask_storeu_epi8(q + i, m, _mm512_cvtepi32_epi8(_mm512_cvtps_epi32(v)));
  }
  return bad || nonfinite != 0;
}

#endif

}  // namespace

int64_t quantize_int8_rows(const void* x, FloatType dtype, int64_t M, int64_t N, int64_t ld,
                           const float* static_scale, bool per_tensor, int8_t* q, float* scale,
                           int threads) {
  const int64_t elem = dtype == FloatType::F32 ? 4 : 2;
  auto row_fn = &row_scalar;
#if PYLLMOPS_X86
  if (has_avx512_bw_vl()) row_fn = &row_avx512;
#endif
  // Rows are independent; a chunk of rows should be worth handing to a thread (~1 us for an
  // OpenMP thread still spinning after torch's last op, tens of us for a sleeping one or a new
  // std::thread): 2^16 elements take ~15 us.
  const int64_t grain = std::max<int64_t>(1, (1 << 16) / std::max<int64_t>(N, 1));
  std::atomic<int64_t> bad_rows{0};
  parallel_for(M, threads, grain, [&](int64_t begin, int64_t end) {
    int64_t bad = 0;
    for (int64_t r = begin; r < end; ++r) {
      const void* row = static_cast<const char*>(x) + r * ld * elem;
      const float* fixed = static_scale == nullptr ? nullptr : (per_tensor ? static_scale : static_scale + r);
      bad += row_fn(row, dtype, N, fixed, q + r * N, scale + r);
    }
    bad_rows += bad;
  });
  return bad_rows.load();
}

}  // namespace pyllmops::cpu
