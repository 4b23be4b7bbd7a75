// Temperature / top-k / top-p / min-p sampling on the CPU, one uniform per row from Philox4x32-10.
// The exact definition (kept set, weights, inverse CDF in vocabulary order) is in
// pyllmops/ops/sampling.py; this kernel computes it with one read of the logits and no full sort
// (see sampling.cpp).
#pragma once
#include <cstdint>

namespace pyllmops::cpu {

enum class LogitsType : int { F32 = 0, F16 = 1, BF16 = 2 };  // pyllmops/ops/sampling.py _DTYPE_CODES

// Row status written to ids[row] instead of a token.
constexpr int64_t kBadValue = -1;   // the row holds NaN or +inf
constexpr int64_t kAllNegInf = -2;  // every logit is -inf
constexpr int64_t kBadTemperature = -3;  // temperature < 0, NaN or inf
constexpr int64_t kBadTopP = -4;         // top_p outside (0, 1]
constexpr int64_t kBadMinP = -5;         // min_p outside [0, 1]

// A per-row parameter: ptr[row] when ptr is set, else the scalar `value` for every row.
template <class T>
struct RowArg {
  const T* ptr = nullptr;
  T value{};
  T at(int64_t row) const { return ptr ? ptr[row] : value; }
};

struct SampleParams {
  RowArg<float> temperature;  // >= 0; 0 = greedy
  RowArg<int64_t> top_k;      // <= 0 or >= V: disabled
  RowArg<float> top_p;        // (0, 1]; 1 = disabled
  RowArg<float> min_p;        // [0, 1]; 0 = disabled
  RowArg<int64_t> seed;       // a scalar seed s means seed[row] = s + row (wrapping)
  RowArg<int64_t> offset;
  int64_t seed_at(int64_t row) const {
    return seed.ptr ? seed.ptr[row] : int64_t(uint64_t(seed.value) + uint64_t(row));
  }
};

// Philox4x32-10 in place on the counter `c` with key (k0, k1) (Random123's philox4x32_R(10)).
void philox4x32(uint32_t c[4], uint32_t k0, uint32_t k1);

// The row's uniform in [0, 1): Philox(key = seed bits, counter = (offset lo, offset hi, 0, 0)),
// 53 bits from the first two outputs.
double row_uniform(int64_t seed, int64_t offset);

// logits [B, V] (row stride `ld` elements, unit column stride, V < 2^31) -> ids [B] (token or
// status). When `probs` is non-null it receives the filtered renormalised distribution [B, V] fp32
// (one-hot for greedy rows). Work runs on up to `threads` threads (0 = all): rows across threads,
// and a row split into block-aligned segments when there are fewer rows than threads. The result
// does not depend on the thread count. Returns the first row with a negative status, or -1.
int64_t sample_rows(const void* logits, LogitsType dtype, int64_t B, int64_t V, int64_t ld,
                    const SampleParams& params, int64_t* ids, float* probs, int threads);

}  // namespace pyllmops::cpu
