// CPU sampling kernel: no full sort; the logits read once from memory per row, and at most once
// more from the cache.
//
// Per row mode:
//
//  greedy (t == 0)   block max + NaN check; the first index of the running max.
//  small top-k       two passes over the row: maxima of ~4k disjoint chunks, whose k-th largest
//                    (searched bit by bit on order-preserving integer keys) bounds the row's k-th
//                    largest from below; then a gather of the values >= that bound (~1.1 k on
//                    random logits). The exact k-th largest of the candidates, the survivors'
//                    weights, the top-p cut-off (a rank sort up to 256 survivors, the histograms
//                    below beyond), min-p and the inverse CDF follow. Nothing branches on the data
//                    per element or per candidate: on fresh logits such branches mispredict about
//                    half the time, which cost more than reading the row.
//  top-k off / large the row's max m (and the k-th largest of a large k, by nth_element) first.
//                    Then, per block of kBlock logits, every weight w = exp((x - m) / t) once into
//                    a dense row (0 outside a large top-k) and the block's mass z_b (float lanes);
//                    Z = sum z_b in block order. With top-p, a band of weights expected to hold the
//                    cut-off is guessed before the weights from every 32nd logit (guess_band), and
//                    each block, still in L1, also yields its mass above the band and its weights
//                    in it. The cut-off is searched among the band's weights only (the bucket of
//                    their top 12 bits where the descending mass reaches p Z, from a histogram of
//                    every 8th weight checked by masked sums on a wide band; histograms by the next
//                    6 bits inside it; a sort of what is left) and the draw runs on the
//                    blocks' sums and one block. When the cut-off is not in the band the whole row's
//                    weights >= 0.999 (1 - p) Z / V are searched (lighter ones hold less than
//                    (1 - p) Z together, so top-p cuts them). Either way the work is a fixed number
//                    of passes over the row, whatever the number of tokens the nucleus keeps.
//  Sums of weights run in double in a fixed order (kLanes lanes, or a group's two halves paired in
//  float then 8 lanes, added in lane order, per block for the inverse CDF; bucket by bucket from
//  the top for the top-p search, then descending inside the last bucket), which decides the token
//  where a sum meets a boundary.
//  Weights are computed as 2^((x - m) * w_scale), w_scale = log2(e) / t rounded to float once
//  (exp2_nonpos: seven multiply-adds per lane).
//
// Threads (parallel_tasks: torch's OpenMP team, whose threads are warm after the op that made the
// logits, as the work is often tens of microseconds): rows across threads; with fewer rows than
// threads a row is also split into block-aligned segments of at least 16k logits (full mode: the
// segments' maxima first, then their weights; the last segment of a row to finish completes it).
// Blocks, their sums and the arrays the search and the draw read are the same however the row was
// split, so the ids do not depend on the thread count or on the batch.
//
// The block loops exist as portable loops (compiled for x86-64-v3, i.e. AVX2 + FMA, and baseline),
// AVX2 intrinsics and, for some, AVX-512 intrinsics, all doing the same float operations in the
// same order (16 lanes: one AVX-512 register or two AVX2 ones), so all give the same bits.
// PYLLMOPS_SAMPLING_ISA=avx2 or =portable caps the level (tests compare them). Implicit
// floating-point contraction is off (FMAs are explicit, std::fma in the portable code);
// no-trapping-math lets the portable loops vectorise.
#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF  // (clang does not trap on floating point by default)
#else
#pragma GCC optimize("fp-contract=off", "no-trapping-math")
// GCC 12 false positives inside its own avx512fintrin.h helpers (undefined-vector idiom).
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

#include "cpu/sampling.h"

#include <immintrin.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <utility>
#include <vector>

#include "cpu/parallel.h"

#define PYLLMOPS_SIMD __attribute__((target_clones("arch=x86-64-v3", "default")))
#define PYLLMOPS_AVX512 __attribute__((target("avx512f,fma")))
// Helpers must inline into every clone to be vectorised with it.
#define PYLLMOPS_INLINE inline __attribute__((always_inline))

namespace pyllmops::cpu {

void philox4x32(uint32_t c[4], uint32_t k0, uint32_t k1) {
  for (int round = 0; round < 10; ++round) {
    const uint64_t p0 = uint64_t(0xD2511F53u) * c[0];
    const uint64_t p1 = uint64_t(0xCD9E8D57u) * c[2];
    const uint32_t n0 = uint32_t(p1 >> 32) ^ c[1] ^ k0;
    const uint32_t n2 = uint32_t(p0 >> 32) ^ c[3] ^ k1;
    c[0] = n0;
    c[1] = uint32_t(p1);
    c[2] = n2;
    c[3] = uint32_t(p0);
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
}

double row_uniform(int64_t seed, int64_t offset) {
  const uint64_t s = uint64_t(seed), o = uint64_t(offset);
  uint32_t c[4] = {uint32_t(o), uint32_t(o >> 32), 0u, 0u};
  philox4x32(c, uint32_t(s), uint32_t(s >> 32));
  return (double(c[0] >> 5) * 67108864.0 + double(c[1] >> 6)) * (1.0 / 9007199254740992.0);
}

namespace {

constexpr int kLanes = 16;
constexpr int64_t kBlock = 2048;            // logits per block (8 KiB of fp32)
constexpr int64_t kMinSegmentBlocks = 8;    // a row is split into segments of at least 16k logits
constexpr int64_t kMinParallel = 1 << 16;   // fewer logits than this run on the calling thread
constexpr float kNegInf = -std::numeric_limits<float>::infinity();
constexpr float kFloatMax = std::numeric_limits<float>::max();
// Weights below kEpsShare * (1 - p) * Z / V hold less than (1 - p) * Z together, so top-p cuts them
// all; the margin below 1 is far more than the float rounding of Z.
constexpr double kEpsShare = 0.999;
constexpr int kBucketShift = 20;  // w's top 12 bits: 8 exponent + 3 mantissa (w in [0, 1])
constexpr int kBuckets = (0x3F800000 >> kBucketShift) + 1;
constexpr int64_t kMaxChunkAccumulators = 1024;  // 16k chunk maxima: top-k mode up to k = 4096
constexpr int64_t kMaxTopK = 4096;

PYLLMOPS_INLINE uint32_t bits_of(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}
PYLLMOPS_INLINE float float_of(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// IEEE half -> float with integer ops: shifting the 15 low bits into place leaves the exponent
// biased by 15 instead of 127, which a multiply by 2^112 fixes (and it normalises subnormals).
PYLLMOPS_INLINE float half_to_float(uint16_t h) {
  const uint32_t em = h & 0x7fffu;
  float mag = float_of(em << 13) * 0x1p112f;
  if (em >= 0x7c00u) mag = float_of((em << 13) | 0x7f800000u);  // inf, NaN
  return float_of(bits_of(mag) | (uint32_t(h & 0x8000u) << 16));
}

PYLLMOPS_SIMD void convert_row(const uint16_t* src, float* dst, int64_t n, bool bf16) {
  if (bf16) {
    for (int64_t i = 0; i < n; ++i) dst[i] = float_of(uint32_t(src[i]) << 16);
  } else {
    for (int64_t i = 0; i < n; ++i) dst[i] = half_to_float(src[i]);
  }
}

// 2^v for v <= 0 to ~1.5 ulp, 0 below -125 (no subnormals); branch-free. A weight is
// 2^((x - m) * log2(e) / t): one multiply, then 2^n * 2^f (n = v rounded, f in [-1/2, 1/2]) with a
// degree-6 polynomial for 2^f (relative minimax with p(0) = 1, so the max weighs exactly 1). Seven
// multiply-adds per lane against Cephes expf's twelve (the weights are the FMA pipes' work: they
// set top-p's time); the rounding of v costs the same |v| * 2^-24 as (x - m) / t's did before.
// exp2_nonpos8 below is the same sequence of float operations on 8 lanes (std::fma rounds once,
// as the vector FMA does).
constexpr float kExp2Low = -125.0f;  // 2^n * 2^f stays a normal float
constexpr float kRoundShifter = 12582912.0f;  // 1.5 * 2^23: v + it rounds v to an integer (|v| < 2^22)
constexpr float kExp2Poly[6] = {0.6931471824645996f, 0.24022647738456726f, 0.055503323674201965f,
                                0.009618437848985195f, 0.0013398880837485194f, 0.00015353367780335248f};
PYLLMOPS_INLINE float exp2_nonpos(float v) {
  const float vc = v < kExp2Low ? kExp2Low : v;  // also maps -inf; NaN stays NaN (bad rows only)
  const float shifted = vc + kRoundShifter;      // its low mantissa bits hold n
  const float f = vc - (shifted - kRoundShifter);
  float y = kExp2Poly[5];
  for (int k = 4; k >= 0; --k) y = std::fma(y, f, kExp2Poly[k]);
  y = std::fma(y, f, 1.0f);
  // y in [0.70, 1.42]: adding n to its exponent field multiplies by 2^n (n >= -125: still normal).
  const float scaled = float_of(bits_of(y) + (bits_of(shifted) << 23));
  return v < kExp2Low ? 0.0f : scaled;
}

PYLLMOPS_INLINE bool is_bad(float v) { return v != v || v > kFloatMax; }  // NaN or +inf

// Lane sums reduced in lane order (both implementations), so the block mass has one value.
PYLLMOPS_INLINE float lane_sum(const float* acc) {
  float s = acc[0];
  for (int j = 1; j < kLanes; ++j) s += acc[j];
  return s;
}

struct BlockMax {
  float max;
  bool bad;  // NaN or +inf seen
};

// Candidates (value, vocabulary index), structure of arrays; every writer keeps kLanes of slack.
struct Cands {
  std::vector<float> x;
  std::vector<int32_t> idx;
  int64_t n = 0;
  void room_for(int64_t extra) {
    if (n + extra + kLanes > int64_t(x.size())) {
      const size_t size = std::max<size_t>(2 * x.size(), size_t(n + extra + kLanes));
      x.resize(size);
      idx.resize(size);
    }
  }
};

// ------------------------------------------------------------------ portable block kernels
// Full groups of kLanes go through fixed-length inner loops, which the compiler vectorises; lane j
// of every group accumulates element i with i % kLanes == j, as in the AVX-512 loops.
PYLLMOPS_SIMD BlockMax block_max_portable(const float* x, int64_t n) {
  float acc[kLanes];
  int32_t bad[kLanes];
  for (int j = 0; j < kLanes; ++j) acc[j] = kNegInf, bad[j] = 0;
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes)
    for (int j = 0; j < kLanes; ++j) acc[j] = std::max(acc[j], x[i + j]), bad[j] |= is_bad(x[i + j]);
  for (; i < n; ++i) acc[i % kLanes] = std::max(acc[i % kLanes], x[i]), bad[i % kLanes] |= is_bad(x[i]);
  BlockMax r{kNegInf, false};
  for (int j = 0; j < kLanes; ++j) r.max = std::max(r.max, acc[j]), r.bad |= bad[j] != 0;
  return r;
}

// Appends the values x[i] >= thr (index base + i) to c, skipping groups of kLanes without one.
PYLLMOPS_SIMD void append_at_least(const float* x, int64_t n, int32_t base, float thr, Cands& c) {
  float* cx = c.x.data();
  int32_t* ci = c.idx.data();
  int64_t cn = c.n;
  for (int64_t g = 0; g < n; g += kLanes) {
    const int64_t e = std::min(n, g + kLanes);
    int32_t any = 0;
    for (int64_t i = g; i < e; ++i) any |= x[i] >= thr;
    if (!any) continue;
    for (int64_t i = g; i < e; ++i) {
      cx[cn] = x[i];
      ci[cn] = base + int32_t(i);
      cn += x[i] >= thr;
    }
  }
  c.n = cn;
}

// Maxima of x[0, n) in s * kLanes disjoint chunks: group g of kLanes values goes to accumulator
// g % s, lane j of a group to lane j (acc[(g % s) * kLanes + j]); unused lanes stay -inf. Also
// the maximum and the NaN / +inf check.
PYLLMOPS_SIMD BlockMax chunk_max_portable(const float* x, int64_t n, int64_t s, float* acc) {
  int32_t bad[kLanes] = {};
  std::fill(acc, acc + s * kLanes, kNegInf);
  for (int64_t i = 0, a = 0; i < n; i += kLanes, a = a + 1 == s ? 0 : a + 1) {
    float* ac = acc + a * kLanes;
    if (n - i >= kLanes) {
      for (int j = 0; j < kLanes; ++j) ac[j] = std::max(ac[j], x[i + j]), bad[j] |= is_bad(x[i + j]);
    } else {
      for (int64_t j = 0; j < n - i; ++j) ac[j] = std::max(ac[j], x[i + j]), bad[j] |= is_bad(x[i + j]);
    }
  }
  BlockMax r{kNegInf, false};
  for (int64_t j = 0; j < s * kLanes; ++j) r.max = std::max(r.max, acc[j]);
  for (int j = 0; j < kLanes; ++j) r.bad |= bad[j] != 0;
  return r;
}

// How many keys are >= t.
PYLLMOPS_SIMD int64_t count_at_least_portable(const uint32_t* keys, int64_t n, uint32_t t) {
  int64_t c = 0;
  for (int64_t i = 0; i < n; ++i) c += keys[i] >= t;
  return c;
}

// The weights of a block relative to the row's max m into w: 2^((x - m) * w_scale) where x >= kth,
// else 0 (outside a large top-k). Returns their mass (kLanes float lanes, added in lane order).
PYLLMOPS_SIMD float block_weights_portable(const float* x, int64_t n, float m, float w_scale, float kth, float* w) {
  float acc[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes)
    for (int j = 0; j < kLanes; ++j) {
      w[i + j] = x[i + j] >= kth ? exp2_nonpos((x[i + j] - m) * w_scale) : 0.0f;
      acc[j] += w[i + j];
    }
  for (; i < n; ++i) {
    w[i] = x[i] >= kth ? exp2_nonpos((x[i] - m) * w_scale) : 0.0f;
    acc[i % kLanes] += w[i];
  }
  return lane_sum(acc);
}

// Weights of the candidates x[0, n) (w may be x): w[i] = 2^((x[i] - m) * w_scale) where x[i] >= kth
// and that is >= eps, else 0 (a cut weight: every sum skips it and no cut-off keeps it).
PYLLMOPS_SIMD void weigh(const float* x, int64_t n, float m, float w_scale, float kth, float eps, float* w) {
  for (int64_t i = 0; i < n; ++i) {
    const float e = exp2_nonpos((x[i] - m) * w_scale);
    w[i] = x[i] >= kth && e >= eps ? e : 0.0f;
  }
}

// Sum (double, kLanes lanes added in lane order) of the weights w[0, n) >= tau.
PYLLMOPS_INLINE double kept_sum_inline(const float* w, int64_t n, float tau) {
  double acc[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes)
    for (int j = 0; j < kLanes; ++j) acc[j] += double(w[i + j] >= tau ? w[i + j] : 0.0f);
  for (; i < n; ++i) acc[i % kLanes] += double(w[i] >= tau ? w[i] : 0.0f);
  double sum = 0.0;
  for (int j = 0; j < kLanes; ++j) sum += acc[j];
  return sum;
}

PYLLMOPS_SIMD double kept_sum(const float* w, int64_t n, float tau) { return kept_sum_inline(w, n, tau); }

// kept_sum of each block of kSumBlock weights of w[0, n) into sums[0, ceil(n / kSumBlock)).
constexpr int64_t kSumBlock = 64;
PYLLMOPS_SIMD void block_sums(const float* w, int64_t n, float tau, double* sums) {
  for (int64_t b = 0; b * kSumBlock < n; ++b)
    sums[b] = kept_sum_inline(w + b * kSumBlock, std::min(kSumBlock, n - b * kSumBlock), tau);
}

// Pair sums: the mass of weights >= t, per group of kLanes its two halves added in float (a pair
// sum is no less exact than a weight), then 8 double lanes summed in lane order.
struct PairSums {
  double acc[kLanes / 2] = {};
  void add(const float* g, float t) {  // one group, padded with 0
    for (int j = 0; j < kLanes / 2; ++j)
      acc[j] += double((g[j] >= t ? g[j] : 0.0f) + (g[j + kLanes / 2] >= t ? g[j + kLanes / 2] : 0.0f));
  }
  double total() const {
    double sum = 0.0;
    for (int j = 0; j < kLanes / 2; ++j) sum += acc[j];
    return sum;
  }
};

// Group i of w[0, n) into g, padded with 0.
PYLLMOPS_INLINE void padded_group(const float* w, int64_t i, int64_t n, float* g) {
  for (int j = 0; j < kLanes; ++j) g[j] = i + j < n ? w[i + j] : 0.0f;
}

// The mass (PairSums) of the weights w[0, n) >= hi, and the weights in [lo, hi) copied to out
// (kLanes of slack); returns their count in *count.
PYLLMOPS_SIMD double band_split_portable(const float* w, int64_t n, float lo, float hi, float* out, int64_t* count) {
  PairSums above;
  for (int64_t i = 0; i < n; i += kLanes) {
    float g[kLanes];
    padded_group(w, i, n, g);
    above.add(g, hi);
  }
  int64_t c = 0;
  for (int64_t i = 0; i < n; ++i) {
    out[c] = w[i];
    c += w[i] >= lo && w[i] < hi;
  }
  *count = c;
  return above.total();
}

// The masses (PairSums each) of the weights w[0, n) >= lo and >= hi.
PYLLMOPS_SIMD void masses_above_portable(const float* w, int64_t n, float lo, float hi, double* m_lo, double* m_hi) {
  PairSums a, b;
  for (int64_t i = 0; i < n; i += kLanes) {
    float g[kLanes];
    padded_group(w, i, n, g);
    a.add(g, lo), b.add(g, hi);
  }
  *m_lo = a.total(), *m_hi = b.total();
}

// Copies the weights w[0, n) with (bits >> shift) & mask == key to out (kLanes of slack); returns
// their count.
int64_t select_bits_portable(const float* w, int64_t n, int shift, uint32_t mask, uint32_t key, float* out) {
  int64_t c = 0;
  for (int64_t i = 0; i < n; ++i) {
    out[c] = w[i];
    c += ((bits_of(w[i]) >> shift) & mask) == key;
  }
  return c;
}

// ------------------------------------------------------------------ AVX-512 block kernels
PYLLMOPS_AVX512 PYLLMOPS_INLINE __mmask16 live_mask(int64_t i, int64_t n) {
  return n - i >= kLanes ? __mmask16(0xFFFF) : __mmask16((1u << (n - i)) - 1);
}

PYLLMOPS_AVX512 PYLLMOPS_INLINE __mmask16 bad_mask(__m512 v) {
  return _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q) | _mm512_cmp_ps_mask(v, _mm512_set1_ps(kFloatMax), _CMP_GT_OQ);
}

// Appends the lanes of v in `hit` (and their indices) at out.x / out.idx + out.n.
struct Out {  // a Cands' arrays and count in registers (through a Cands& every store would reload them)
  float* x;
  int32_t* idx;
  int64_t n;
  explicit Out(Cands& c) : x(c.x.data()), idx(c.idx.data()), n(c.n) {}
};

PYLLMOPS_AVX512 PYLLMOPS_INLINE void append(Out& o, __mmask16 hit, __m512 v, __m512i idx) {
  _mm512_storeu_ps(o.x + o.n, _mm512_maskz_compress_ps(hit, v));
  _mm512_storeu_si512(o.idx + o.n, _mm512_maskz_compress_epi32(hit, idx));
  o.n += __builtin_popcount(hit);
}

// The block loops run whole groups of 16 with an all-lanes mask (a constant once inlined, so the
// per-group mask arithmetic disappears) and the tail group with its partial mask.
#define PYLLMOPS_FOR_GROUPS(n, step)                                        \
  do {                                                                      \
    int64_t i_ = 0;                                                         \
    for (; i_ + kLanes <= (n); i_ += kLanes) step(i_, __mmask16(0xFFFF));   \
    if (i_ < (n)) step(i_, live_mask(i_, (n)));                             \
  } while (0)

struct MaxState {
  __m512 mx;
  __mmask16 bad;
};

PYLLMOPS_AVX512 PYLLMOPS_INLINE __m512 max_step(MaxState& st, const float* x, __mmask16 live) {
  const __m512 v = _mm512_mask_loadu_ps(_mm512_set1_ps(kNegInf), live, x);
  st.mx = _mm512_max_ps(st.mx, v);
  st.bad |= bad_mask(v);
  return v;
}

PYLLMOPS_AVX512 BlockMax block_max_avx512(const float* x, int64_t n) {
  MaxState st{_mm512_set1_ps(kNegInf), 0};
  auto step = [&](int64_t i, __mmask16 live) __attribute__((always_inline, target("avx512f,fma"))) {
    max_step(st, x + i, live);
  };
  PYLLMOPS_FOR_GROUPS(n, step);
  return {_mm512_reduce_max_ps(st.mx), st.bad != 0};
}

// Accumulators 16 at a time in registers: sweep `first` holds accumulators [16 first, 16 first
// + 16), i.e. the kLanes-groups at 16 first .. 16 first + 15 of every s groups.
PYLLMOPS_AVX512 BlockMax chunk_max_avx512(const float* x, int64_t n, int64_t s, float* acc) {
  constexpr int64_t kSweep = 16;  // accumulators per sweep (s is a multiple)
  __mmask16 bad = 0;
  __m512 mx = _mm512_set1_ps(kNegInf);
  for (int64_t first = 0; first < s; first += kSweep) {
    __m512 a[kSweep];
    for (int j = 0; j < kSweep; ++j) a[j] = _mm512_set1_ps(kNegInf);
    int64_t i = first * kLanes;
    // Whole sweeps; one unordered compare checks two groups for NaN (+inf shows in the maximum).
    for (; i + kSweep * kLanes <= n; i += s * kLanes) {
#pragma GCC unroll 16
      for (int j = 0; j < kSweep; j += 2) {
        const __m512 v0 = _mm512_loadu_ps(x + i + j * kLanes), v1 = _mm512_loadu_ps(x + i + (j + 1) * kLanes);
        a[j] = _mm512_max_ps(a[j], v0);
        a[j + 1] = _mm512_max_ps(a[j + 1], v1);
        bad |= _mm512_cmp_ps_mask(v0, v1, _CMP_UNORD_Q);
      }
    }
    if (i < n) {
#pragma GCC unroll 16
      for (int j = 0; j < kSweep; ++j) {
        const int64_t g = i + j * kLanes;
        const __m512 v = _mm512_mask_loadu_ps(_mm512_set1_ps(kNegInf), g < n ? live_mask(g, n) : 0, x + g);
        a[j] = _mm512_max_ps(a[j], v);
        bad |= _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
      }
    }
    for (int j = 0; j < kSweep; ++j) mx = _mm512_max_ps(mx, a[j]), _mm512_storeu_ps(acc + (first + j) * kLanes, a[j]);
  }
  const float m = _mm512_reduce_max_ps(mx);
  return {m, bad != 0 || m > kFloatMax};
}

// The indices first + 0..15. (A function, not a lambda: clang does not give a lambda its
// enclosing function's target attribute.)
PYLLMOPS_AVX512 PYLLMOPS_INLINE __m512i lane_ids(int64_t first, __m512i iota) {
  return _mm512_add_epi32(_mm512_set1_epi32(int32_t(first)), iota);
}

// Appends the values x[i] >= thr (index base + i) to c; four groups share one test, as few of
// them hold a candidate.
PYLLMOPS_AVX512 void gather_at_least_avx512(const float* x, int64_t n, int32_t base, float thr, Cands& c) {
  const __m512 vthr = _mm512_set1_ps(thr);
  const __m512i iota = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  Out o(c);
  int64_t i = 0;
  for (; i + 4 * kLanes <= n; i += 4 * kLanes) {
    const __m512 v0 = _mm512_loadu_ps(x + i), v1 = _mm512_loadu_ps(x + i + kLanes),
                 v2 = _mm512_loadu_ps(x + i + 2 * kLanes), v3 = _mm512_loadu_ps(x + i + 3 * kLanes);
    const __mmask16 h0 = _mm512_cmp_ps_mask(v0, vthr, _CMP_GE_OQ), h1 = _mm512_cmp_ps_mask(v1, vthr, _CMP_GE_OQ),
                    h2 = _mm512_cmp_ps_mask(v2, vthr, _CMP_GE_OQ), h3 = _mm512_cmp_ps_mask(v3, vthr, _CMP_GE_OQ);
    if (h0 | h1 | h2 | h3) {
      append(o, h0, v0, lane_ids(base + i, iota));
      append(o, h1, v1, lane_ids(base + i + kLanes, iota));
      append(o, h2, v2, lane_ids(base + i + 2 * kLanes, iota));
      append(o, h3, v3, lane_ids(base + i + 3 * kLanes, iota));
    }
  }
  for (; i < n; i += kLanes) {
    const __mmask16 live = live_mask(i, n);
    const __m512 v = _mm512_maskz_loadu_ps(live, x + i);
    append(o, _mm512_mask_cmp_ps_mask(live, v, vthr, _CMP_GE_OQ), v, lane_ids(base + i, iota));
  }
  c.n = o.n;
}

PYLLMOPS_AVX512 int64_t count_at_least_avx512(const uint32_t* keys, int64_t n, uint32_t t) {
  const __m512i vt = _mm512_set1_epi32(int32_t(t));
  int64_t c = 0;
  for (int64_t i = 0; i < n; i += kLanes)
    c += __builtin_popcount(_mm512_mask_cmpge_epu32_mask(live_mask(i, n), _mm512_maskz_loadu_epi32(live_mask(i, n), keys + i), vt));
  return c;
}

PYLLMOPS_AVX512 int64_t select_bits_avx512(const float* w, int64_t n, int shift, uint32_t mask, uint32_t key,
                                           float* out) {
  const __m512i vmask = _mm512_set1_epi32(int32_t(mask)), vkey = _mm512_set1_epi32(int32_t(key));
  const __m128i count = _mm_cvtsi32_si128(shift);
  int64_t c = 0;
  for (int64_t i = 0; i < n; i += kLanes) {
    const __mmask16 live = live_mask(i, n);
    const __m512i v = _mm512_maskz_loadu_epi32(live, w + i);
    const __mmask16 hit = _mm512_mask_cmpeq_epi32_mask(live, _mm512_and_si512(_mm512_srl_epi32(v, count), vmask), vkey);
    _mm512_storeu_si512(out + c, _mm512_maskz_compress_epi32(hit, v));
    c += __builtin_popcount(hit);
  }
  return c;
}

PYLLMOPS_AVX512 int64_t keep_at_least_avx512(float* w, int32_t* wi, int64_t n, float c) {
  const __m512 vc = _mm512_set1_ps(c);
  int64_t count = 0;
  for (int64_t i = 0; i < n; i += kLanes) {
    const __mmask16 live = live_mask(i, n);
    const __m512 v = _mm512_maskz_loadu_ps(live, w + i);
    const __m512i id = _mm512_maskz_loadu_epi32(live, wi + i);
    const __mmask16 keep = _mm512_mask_cmp_ps_mask(live, v, vc, _CMP_GE_OQ);
    _mm512_storeu_ps(w + count, _mm512_maskz_compress_ps(keep, v));  // in place: count <= i, loaded already
    _mm512_storeu_si512(wi + count, _mm512_maskz_compress_epi32(keep, id));
    count += __builtin_popcount(keep);
  }
  return count;
}

// block_weights_portable on 16 lanes, lane for lane the same operations as exp2_nonpos (so the
// same bits as the portable and AVX2 loops): the clamp below kExp2Low and the kth test zero a
// lane through one mask, and 2^n multiplies through vscalefps by n = round(v) as a float (exact:
// y in [0.70, 1.42] times 2^n, n >= -125, is a normal float, as the exponent-field add gives).
// 15 zmm ops per 16 logits against 2 x 19 ymm ops; Zen 4 runs a zmm op on two 256-bit pipes, so
// the gain is the ops saved, not the width. Four groups in flight, as in block_weights_avx2.
PYLLMOPS_AVX512 float block_weights_avx512(const float* x, int64_t n, float m, float w_scale, float kth, float* w) {
  const __m512 vm = _mm512_set1_ps(m), vit = _mm512_set1_ps(w_scale), vk = _mm512_set1_ps(kth),
               lo = _mm512_set1_ps(kExp2Low), shifter = _mm512_set1_ps(kRoundShifter);
  constexpr int N = 4;
  __m512 acc = _mm512_setzero_ps();
  for (int64_t i = 0; i < n; i += N * kLanes) {
    __m512 v[N], r[N], f[N], y[N];
    __mmask16 live[N], keep[N];
#pragma GCC unroll 4
    for (int j = 0; j < N; ++j) {
      live[j] = i + j * kLanes < n ? live_mask(i + j * kLanes, n) : __mmask16(0);
      const __m512 xv = _mm512_mask_loadu_ps(_mm512_set1_ps(kNegInf), live[j], x + i + j * kLanes);
      v[j] = _mm512_mul_ps(_mm512_sub_ps(xv, vm), vit);
      // kept: x >= kth and not v < kExp2Low (a NaN v is kept, as the AVX2 andnot keeps it)
      keep[j] = _mm512_mask_cmp_ps_mask(_mm512_cmp_ps_mask(xv, vk, _CMP_GE_OQ), v[j], lo, _CMP_NLT_UQ);
      v[j] = _mm512_max_ps(v[j], lo);
      r[j] = _mm512_sub_ps(_mm512_add_ps(v[j], shifter), shifter);
      f[j] = _mm512_sub_ps(v[j], r[j]);
      y[j] = _mm512_fmadd_ps(_mm512_set1_ps(kExp2Poly[5]), f[j], _mm512_set1_ps(kExp2Poly[4]));
    }
    for (int k = 3; k >= 0; --k)
#pragma GCC unroll 4
      for (int j = 0; j < N; ++j) y[j] = _mm512_fmadd_ps(y[j], f[j], _mm512_set1_ps(kExp2Poly[k]));
#pragma GCC unroll 4
    for (int j = 0; j < N; ++j) {
      const __m512 e = _mm512_maskz_scalef_ps(keep[j], _mm512_fmadd_ps(y[j], f[j], _mm512_set1_ps(1.0f)), r[j]);
      _mm512_mask_storeu_ps(w + i + j * kLanes, live[j], e);
      acc = _mm512_add_ps(acc, e);  // group order per lane; a padded lane adds 0
    }
  }
  alignas(64) float lanes[kLanes];
  _mm512_store_ps(lanes, acc);
  return lane_sum(lanes);
}

// band_split_portable on 16 lanes: the above-band mass as band_split_avx2 adds it (a group's two
// 8-lane halves added in float, then 8 double lanes), the band's weights left-packed by
// vcompressps (register to register; Zen 4 microcodes the compress to memory) into kLanes slack.
template <bool Above>
PYLLMOPS_AVX512 double band_split16(const float* w, int64_t n, float lo, float hi, float* out, int64_t* count) {
  const __m512 vlo = _mm512_set1_ps(lo), vhi = _mm512_set1_ps(hi);
  __m512d above = _mm512_setzero_pd();
  int64_t c = 0;
  for (int64_t i = 0; i < n; i += kLanes) {
    const __m512 g = _mm512_mask_loadu_ps(_mm512_set1_ps(-1.0f), live_mask(i, n), w + i);  // padding: in no set
    if (Above) {
      const __m512 a = _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(g, vhi, _CMP_GE_OQ), g);
      const __m256 pair = _mm256_add_ps(_mm512_castps512_ps256(a),
                                        _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(a), 1)));
      above = _mm512_add_pd(above, _mm512_cvtps_pd(pair));
    }
    const __mmask16 in = _mm512_mask_cmp_ps_mask(_mm512_cmp_ps_mask(g, vlo, _CMP_GE_OQ), g, vhi, _CMP_LT_OQ);
    _mm512_storeu_ps(out + c, _mm512_maskz_compress_ps(in, g));
    c += __builtin_popcount(in);
  }
  *count = c;
  alignas(64) double lanes[kLanes / 2];
  _mm512_store_pd(lanes, above);
  double sum = 0.0;
  for (int j = 0; j < kLanes / 2; ++j) sum += lanes[j];
  return sum;
}

PYLLMOPS_AVX512 double band_split_avx512(const float* w, int64_t n, float lo, float hi, float* out, int64_t* count) {
  return hi == std::numeric_limits<float>::infinity() ? band_split16<false>(w, n, lo, hi, out, count)
                                                      : band_split16<true>(w, n, lo, hi, out, count);
}

int64_t keep_at_least_portable(float* w, int32_t* wi, int64_t n, float c) {
  int64_t count = 0;
  for (int64_t i = 0; i < n; ++i) {
    w[count] = w[i];
    wi[count] = wi[i];
    count += w[i] >= c;
  }
  return count;
}

// ------------------------------------------------------------------ AVX2 block kernels
// The portable loops' float operations in the portable loops' order on AVX2 + FMA (Zen 2/3,
// Haswell and later without AVX-512): the kLanes = 16 lanes of a group are two 8-lane registers
// (lo: lanes 0-7, hi: 8-15), so every lane accumulates the same elements in the same order and the
// results are the same bits. GCC leaves the portable max, NaN check and histogram loops scalar
// (measured: block_max_portable ran vmaxss / vcomiss per element), and without AVX-512's compress
// the candidates are left-packed by the permutation their 8-bit mask selects.
#define PYLLMOPS_AVX2 __attribute__((target("avx2,fma")))
struct PackTable {  // lanes[mask]: the set lanes of mask, in order, then zeros
  alignas(32) int32_t lanes[256][8];
  PackTable() {
    for (int m = 0; m < 256; ++m) {
      int c = 0;
      for (int j = 0; j < 8; ++j)
        if (m >> j & 1) lanes[m][c++] = j;
      for (; c < 8; ++c) lanes[m][c] = 0;
    }
  }
};
const PackTable kPack;

PYLLMOPS_AVX2 PYLLMOPS_INLINE __m256i pack_lanes(int mask) {
  return _mm256_load_si256(reinterpret_cast<const __m256i*>(kPack.lanes[mask]));
}

// append_at_least: four groups of 8 share one test, as top-k gathers find few candidates.
PYLLMOPS_AVX2 void append_at_least_avx2(const float* x, int64_t n, int32_t base, float thr, Cands& c) {
  const __m256 vthr = _mm256_set1_ps(thr);
  const __m256i iota = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  float* cx = c.x.data();
  int32_t* ci = c.idx.data();
  int64_t cn = c.n, i = 0;
  for (; i + 32 <= n; i += 32) {
    __m256 v[4];
    int hit[4];
    for (int g = 0; g < 4; ++g) {
      v[g] = _mm256_loadu_ps(x + i + 8 * g);
      hit[g] = _mm256_movemask_ps(_mm256_cmp_ps(v[g], vthr, _CMP_GE_OQ));
    }
    if (!(hit[0] | hit[1] | hit[2] | hit[3])) continue;
    for (int g = 0; g < 4; ++g) {
      const __m256i perm = pack_lanes(hit[g]);
      const __m256i ids = _mm256_add_epi32(_mm256_set1_epi32(base + int32_t(i + 8 * g)), iota);
      _mm256_storeu_ps(cx + cn, _mm256_permutevar8x32_ps(v[g], perm));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(ci + cn), _mm256_permutevar8x32_epi32(ids, perm));
      cn += __builtin_popcount(hit[g]);
    }
  }
  for (; i < n; ++i) {
    cx[cn] = x[i];
    ci[cn] = base + int32_t(i);
    cn += x[i] >= thr;
  }
  c.n = cn;
}

PYLLMOPS_AVX2 int64_t select_bits_avx2(const float* w, int64_t n, int shift, uint32_t mask, uint32_t key,
                                       float* out) {
  const __m256i vmask = _mm256_set1_epi32(int32_t(mask)), vkey = _mm256_set1_epi32(int32_t(key));
  const __m128i count = _mm_cvtsi32_si128(shift);
  int64_t c = 0, i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + i));
    const __m256i eq = _mm256_cmpeq_epi32(_mm256_and_si256(_mm256_srl_epi32(v, count), vmask), vkey);
    const int hit = _mm256_movemask_ps(_mm256_castsi256_ps(eq));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + c), _mm256_permutevar8x32_epi32(v, pack_lanes(hit)));
    c += __builtin_popcount(hit);
  }
  return c + select_bits_portable(w + i, n - i, shift, mask, key, out + c);
}

// A group of 16 floats as two registers; a short last group is copied into `pad` (filled with
// `fill`) so the tail runs the full-group code on lanes whose contribution is neutral.
struct Group {
  __m256 lo, hi;
};
PYLLMOPS_AVX2 PYLLMOPS_INLINE Group load_group(const float* x, int64_t i, int64_t n, float fill) {
  if (n - i >= kLanes) return {_mm256_loadu_ps(x + i), _mm256_loadu_ps(x + i + 8)};
  alignas(32) float pad[kLanes];
  for (int j = 0; j < kLanes; ++j) pad[j] = i + j < n ? x[i + j] : fill;
  return {_mm256_load_ps(pad), _mm256_load_ps(pad + 8)};
}

PYLLMOPS_AVX2 PYLLMOPS_INLINE float hmax8(__m256 v) {
  __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  m = _mm_max_ps(m, _mm_movehl_ps(m, m));
  return _mm_cvtss_f32(_mm_max_ss(m, _mm_shuffle_ps(m, m, 1)));
}

// exp2_nonpos on 8 lanes, the same operations. (NaN never reaches it: rows holding one are
// refused first. bits(shifted) << 23 is n << 23: the shifter's own bits shift out.)
PYLLMOPS_AVX2 PYLLMOPS_INLINE __m256 exp2_nonpos8(__m256 v) {
  const __m256 lo = _mm256_set1_ps(kExp2Low), shifter = _mm256_set1_ps(kRoundShifter);
  const __m256 under = _mm256_cmp_ps(v, lo, _CMP_LT_OQ);
  const __m256 vc = _mm256_max_ps(v, lo);
  const __m256 shifted = _mm256_add_ps(vc, shifter);
  const __m256 f = _mm256_sub_ps(vc, _mm256_sub_ps(shifted, shifter));
  __m256 y = _mm256_set1_ps(kExp2Poly[5]);
  for (int k = 4; k >= 0; --k) y = _mm256_fmadd_ps(y, f, _mm256_set1_ps(kExp2Poly[k]));
  y = _mm256_fmadd_ps(y, f, _mm256_set1_ps(1.0f));
  const __m256i e = _mm256_add_epi32(_mm256_castps_si256(y), _mm256_slli_epi32(_mm256_castps_si256(shifted), 23));
  return _mm256_andnot_ps(under, _mm256_castsi256_ps(e));
}

// exp2_nonpos8 on N registers in lock-step (the same operations per lane): N independent chains
// in the core's window at once.
template <int N>
PYLLMOPS_AVX2 PYLLMOPS_INLINE void exp2_nonpos8n(__m256 (&v)[N]) {
  const __m256 lo = _mm256_set1_ps(kExp2Low), shifter = _mm256_set1_ps(kRoundShifter);
  __m256 under[N], shifted[N], f[N], y[N];
#define PYLLMOPS_EACH _Pragma("GCC unroll 8") for (int j = 0; j < N; ++j)
  PYLLMOPS_EACH under[j] = _mm256_cmp_ps(v[j], lo, _CMP_LT_OQ);
  PYLLMOPS_EACH v[j] = _mm256_max_ps(v[j], lo);
  PYLLMOPS_EACH shifted[j] = _mm256_add_ps(v[j], shifter);
  PYLLMOPS_EACH f[j] = _mm256_sub_ps(v[j], _mm256_sub_ps(shifted[j], shifter));
  PYLLMOPS_EACH y[j] = _mm256_fmadd_ps(_mm256_set1_ps(kExp2Poly[5]), f[j], _mm256_set1_ps(kExp2Poly[4]));
  for (int k = 3; k >= 0; --k) PYLLMOPS_EACH y[j] = _mm256_fmadd_ps(y[j], f[j], _mm256_set1_ps(kExp2Poly[k]));
  PYLLMOPS_EACH y[j] = _mm256_fmadd_ps(y[j], f[j], _mm256_set1_ps(1.0f));
  PYLLMOPS_EACH v[j] = _mm256_andnot_ps(
      under[j], _mm256_castsi256_ps(_mm256_add_epi32(_mm256_castps_si256(y[j]),
                                                     _mm256_slli_epi32(_mm256_castps_si256(shifted[j]), 23))));
#undef PYLLMOPS_EACH
}

// Four accumulators per half (max is exact in any order); +inf shows in the maximum, NaN in an
// unordered compare.
PYLLMOPS_AVX2 BlockMax block_max_avx2(const float* x, int64_t n) {
  __m256 a0 = _mm256_set1_ps(kNegInf), a1 = a0, a2 = a0, a3 = a0, nan = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 2 * kLanes <= n; i += 2 * kLanes) {
    const __m256 v0 = _mm256_loadu_ps(x + i), v1 = _mm256_loadu_ps(x + i + 8),
                 v2 = _mm256_loadu_ps(x + i + 16), v3 = _mm256_loadu_ps(x + i + 24);
    a0 = _mm256_max_ps(a0, v0), a1 = _mm256_max_ps(a1, v1), a2 = _mm256_max_ps(a2, v2), a3 = _mm256_max_ps(a3, v3);
    nan = _mm256_or_ps(nan, _mm256_or_ps(_mm256_cmp_ps(v0, v1, _CMP_UNORD_Q), _mm256_cmp_ps(v2, v3, _CMP_UNORD_Q)));
  }
  for (; i < n; i += kLanes) {
    const Group g = load_group(x, i, n, kNegInf);
    a0 = _mm256_max_ps(a0, g.lo), a1 = _mm256_max_ps(a1, g.hi);
    nan = _mm256_or_ps(nan, _mm256_cmp_ps(g.lo, g.hi, _CMP_UNORD_Q));
  }
  const float m = hmax8(_mm256_max_ps(_mm256_max_ps(a0, a1), _mm256_max_ps(a2, a3)));
  return {m, _mm256_movemask_ps(nan) != 0 || m > kFloatMax};
}

// chunk_max_portable's layout (group g into accumulator g % s); the accumulators live in `acc`
// (L1 / L2: s * 64 bytes), too many for the 16 registers.
PYLLMOPS_AVX2 BlockMax chunk_max_avx2(const float* x, int64_t n, int64_t s, float* acc) {
  std::fill(acc, acc + s * kLanes, kNegInf);
  __m256 nan = _mm256_setzero_ps(), mx = _mm256_set1_ps(kNegInf);
  int64_t i = 0;
  for (; i + s * kLanes <= n; i += s * kLanes) {
    for (int64_t a = 0; a < s; ++a) {
      const __m256 v0 = _mm256_loadu_ps(x + i + a * kLanes), v1 = _mm256_loadu_ps(x + i + a * kLanes + 8);
      float* ac = acc + a * kLanes;
      _mm256_storeu_ps(ac, _mm256_max_ps(_mm256_loadu_ps(ac), v0));
      _mm256_storeu_ps(ac + 8, _mm256_max_ps(_mm256_loadu_ps(ac + 8), v1));
      nan = _mm256_or_ps(nan, _mm256_cmp_ps(v0, v1, _CMP_UNORD_Q));
    }
  }
  for (int64_t a = 0; i < n; i += kLanes, ++a) {
    const Group g = load_group(x, i, n, kNegInf);
    float* ac = acc + a * kLanes;
    _mm256_storeu_ps(ac, _mm256_max_ps(_mm256_loadu_ps(ac), g.lo));
    _mm256_storeu_ps(ac + 8, _mm256_max_ps(_mm256_loadu_ps(ac + 8), g.hi));
    nan = _mm256_or_ps(nan, _mm256_cmp_ps(g.lo, g.hi, _CMP_UNORD_Q));
  }
  for (int64_t j = 0; j < s * kLanes; j += 8) mx = _mm256_max_ps(mx, _mm256_loadu_ps(acc + j));
  const float m = hmax8(mx);
  return {m, _mm256_movemask_ps(nan) != 0 || m > kFloatMax};
}

// Appends the lanes of v set in `hit` (8 bits) and their indices first + lane.
PYLLMOPS_AVX2 PYLLMOPS_INLINE void append8(float* cx, int32_t* ci, int64_t& cn, int hit, __m256 v, int32_t first) {
  const __m256i perm = pack_lanes(hit);
  const __m256i ids = _mm256_add_epi32(_mm256_set1_epi32(first), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  _mm256_storeu_ps(cx + cn, _mm256_permutevar8x32_ps(v, perm));
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(ci + cn), _mm256_permutevar8x32_epi32(ids, perm));
  cn += __builtin_popcount(hit);
}

// block_weights_portable on 8-lane halves (the same sums lane by lane: a padded -inf lane adds
// 0, as the portable loop adds nothing).
PYLLMOPS_AVX2 float block_weights_avx2(const float* x, int64_t n, float m, float w_scale, float kth, float* w) {
  const __m256 vm = _mm256_set1_ps(m), vit = _mm256_set1_ps(w_scale), vk = _mm256_set1_ps(kth);
  __m256 acc_lo = _mm256_setzero_ps(), acc_hi = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 2 * kLanes <= n; i += 2 * kLanes) {  // two groups at once (exp2_nonpos8n)
    __m256 v[4], e[4];
    for (int j = 0; j < 4; ++j) v[j] = _mm256_loadu_ps(x + i + 8 * j);
    for (int j = 0; j < 4; ++j) e[j] = _mm256_mul_ps(_mm256_sub_ps(v[j], vm), vit);
    exp2_nonpos8n<4>(e);
    for (int j = 0; j < 4; ++j) {
      e[j] = _mm256_and_ps(_mm256_cmp_ps(v[j], vk, _CMP_GE_OQ), e[j]);
      _mm256_storeu_ps(w + i + 8 * j, e[j]);
    }
    acc_lo = _mm256_add_ps(acc_lo, e[0]);  // group order per lane, as below
    acc_hi = _mm256_add_ps(acc_hi, e[1]);
    acc_lo = _mm256_add_ps(acc_lo, e[2]);
    acc_hi = _mm256_add_ps(acc_hi, e[3]);
  }
  for (; i < n; i += kLanes) {
    const Group g = load_group(x, i, n, kNegInf);
    const __m256 w_lo = _mm256_and_ps(_mm256_cmp_ps(g.lo, vk, _CMP_GE_OQ),
                                      exp2_nonpos8(_mm256_mul_ps(_mm256_sub_ps(g.lo, vm), vit)));
    const __m256 w_hi = _mm256_and_ps(_mm256_cmp_ps(g.hi, vk, _CMP_GE_OQ),
                                      exp2_nonpos8(_mm256_mul_ps(_mm256_sub_ps(g.hi, vm), vit)));
    acc_lo = _mm256_add_ps(acc_lo, w_lo);
    acc_hi = _mm256_add_ps(acc_hi, w_hi);
    if (n - i >= kLanes) {
      _mm256_storeu_ps(w + i, w_lo);
      _mm256_storeu_ps(w + i + 8, w_hi);
    } else {
      alignas(32) float tail[kLanes];
      _mm256_store_ps(tail, w_lo);
      _mm256_store_ps(tail + 8, w_hi);
      std::copy(tail, tail + (n - i), w + i);
    }
  }
  alignas(32) float lanes[kLanes];
  _mm256_store_ps(lanes, acc_lo);
  _mm256_store_ps(lanes + 8, acc_hi);
  return lane_sum(lanes);
}

// keep_at_least_portable with the 8-lane compress (in place: the stores stay behind the loads).
PYLLMOPS_AVX2 int64_t keep_at_least_avx2(float* w, int32_t* wi, int64_t n, float c) {
  const __m256 vc = _mm256_set1_ps(c);
  int64_t count = 0, i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 v = _mm256_loadu_ps(w + i);
    const __m256i id = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wi + i));
    const int keep = _mm256_movemask_ps(_mm256_cmp_ps(v, vc, _CMP_GE_OQ));
    const __m256i perm = pack_lanes(keep);
    _mm256_storeu_ps(w + count, _mm256_permutevar8x32_ps(v, perm));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(wi + count), _mm256_permutevar8x32_epi32(id, perm));
    count += __builtin_popcount(keep);
  }
  for (; i < n; ++i) {
    w[count] = w[i];
    wi[count] = wi[i];
    count += w[i] >= c;
  }
  return count;
}

// weigh() on 8 lanes (no accumulation: element by element the same operations).
PYLLMOPS_AVX2 void weigh_avx2(const float* x, int64_t n, float m, float w_scale, float kth, float eps, float* w) {
  const __m256 vm = _mm256_set1_ps(m), vit = _mm256_set1_ps(w_scale), vk = _mm256_set1_ps(kth),
               veps = _mm256_set1_ps(eps);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 v = _mm256_loadu_ps(x + i);
    const __m256 e = exp2_nonpos8(_mm256_mul_ps(_mm256_sub_ps(v, vm), vit));
    const __m256 keep = _mm256_and_ps(_mm256_cmp_ps(v, vk, _CMP_GE_OQ), _mm256_cmp_ps(e, veps, _CMP_GE_OQ));
    _mm256_storeu_ps(w + i, _mm256_and_ps(keep, e));
  }
  for (; i < n; ++i) {
    const float e = exp2_nonpos((x[i] - m) * w_scale);
    w[i] = x[i] >= kth && e >= eps ? e : 0.0f;
  }
}

// kept_sum_inline's 16 double lanes as four registers of 4: a group's two halves added in, and
// the lanes summed in lane order.
struct DoubleLanes {
  __m256d a[4];
};
PYLLMOPS_AVX2 PYLLMOPS_INLINE DoubleLanes zero_lanes() {
  return {{_mm256_setzero_pd(), _mm256_setzero_pd(), _mm256_setzero_pd(), _mm256_setzero_pd()}};
}
PYLLMOPS_AVX2 PYLLMOPS_INLINE void add_lanes(DoubleLanes& d, __m256 lo, __m256 hi) {
  d.a[0] = _mm256_add_pd(d.a[0], _mm256_cvtps_pd(_mm256_castps256_ps128(lo)));
  d.a[1] = _mm256_add_pd(d.a[1], _mm256_cvtps_pd(_mm256_extractf128_ps(lo, 1)));
  d.a[2] = _mm256_add_pd(d.a[2], _mm256_cvtps_pd(_mm256_castps256_ps128(hi)));
  d.a[3] = _mm256_add_pd(d.a[3], _mm256_cvtps_pd(_mm256_extractf128_ps(hi, 1)));
}
PYLLMOPS_AVX2 PYLLMOPS_INLINE double sum_lanes(const DoubleLanes& d) {
  alignas(32) double lanes[kLanes];
  for (int j = 0; j < 4; ++j) _mm256_store_pd(lanes + 4 * j, d.a[j]);
  double sum = 0.0;
  for (int j = 0; j < kLanes; ++j) sum += lanes[j];
  return sum;
}

// PairSums on 8-lane halves: a group's lanes >= t, its halves added in float, into 2 x 4 doubles.
struct PairLanes {
  __m256d a[2];
};
PYLLMOPS_AVX2 PYLLMOPS_INLINE PairLanes zero_pairs() { return {{_mm256_setzero_pd(), _mm256_setzero_pd()}}; }
PYLLMOPS_AVX2 PYLLMOPS_INLINE void add_pairs(PairLanes& d, const Group& g, __m256 t) {
  const __m256 pair = _mm256_add_ps(_mm256_and_ps(_mm256_cmp_ps(g.lo, t, _CMP_GE_OQ), g.lo),
                                    _mm256_and_ps(_mm256_cmp_ps(g.hi, t, _CMP_GE_OQ), g.hi));
  d.a[0] = _mm256_add_pd(d.a[0], _mm256_cvtps_pd(_mm256_castps256_ps128(pair)));
  d.a[1] = _mm256_add_pd(d.a[1], _mm256_cvtps_pd(_mm256_extractf128_ps(pair, 1)));
}
PYLLMOPS_AVX2 PYLLMOPS_INLINE double sum_pairs(const PairLanes& d) {
  alignas(32) double lanes[kLanes / 2];
  _mm256_store_pd(lanes, d.a[0]);
  _mm256_store_pd(lanes + 4, d.a[1]);
  double sum = 0.0;
  for (int j = 0; j < kLanes / 2; ++j) sum += lanes[j];
  return sum;
}

PYLLMOPS_AVX2 PYLLMOPS_INLINE double kept_sum8(const float* w, int64_t n, float tau) {
  const __m256 vt = _mm256_set1_ps(tau);
  DoubleLanes d = zero_lanes();
  for (int64_t i = 0; i < n; i += kLanes) {
    const Group g = load_group(w, i, n, 0.0f);
    add_lanes(d, _mm256_and_ps(_mm256_cmp_ps(g.lo, vt, _CMP_GE_OQ), g.lo),
              _mm256_and_ps(_mm256_cmp_ps(g.hi, vt, _CMP_GE_OQ), g.hi));
  }
  return sum_lanes(d);
}

PYLLMOPS_AVX2 double kept_sum_avx2(const float* w, int64_t n, float tau) { return kept_sum8(w, n, tau); }

PYLLMOPS_AVX2 void block_sums_avx2(const float* w, int64_t n, float tau, double* sums) {
  for (int64_t b = 0; b * kSumBlock < n; ++b)
    sums[b] = kept_sum8(w + b * kSumBlock, std::min(kSumBlock, n - b * kSumBlock), tau);
}


// Above: with a finite hi, the mass above the band (PairLanes); a head
// band (hi = inf) has none, and its loop skips the sums.
template <bool Above>
PYLLMOPS_AVX2 PYLLMOPS_INLINE double band_split8(const float* w, int64_t n, float lo, float hi, float* out,
                                                int64_t* count) {
  const __m256 vlo = _mm256_set1_ps(lo), vhi = _mm256_set1_ps(hi);
  PairLanes above = zero_pairs();
  int64_t c = 0;
  for (int64_t i = 0; i < n; i += kLanes) {
    const Group g = load_group(w, i, n, -1.0f);  // a padded lane is neither above nor in the band
    if (Above) add_pairs(above, g, vhi);
    const int in_lo = _mm256_movemask_ps(_mm256_and_ps(_mm256_cmp_ps(g.lo, vlo, _CMP_GE_OQ), _mm256_cmp_ps(g.lo, vhi, _CMP_LT_OQ)));
    const int in_hi = _mm256_movemask_ps(_mm256_and_ps(_mm256_cmp_ps(g.hi, vlo, _CMP_GE_OQ), _mm256_cmp_ps(g.hi, vhi, _CMP_LT_OQ)));
    _mm256_storeu_ps(out + c, _mm256_permutevar8x32_ps(g.lo, pack_lanes(in_lo)));
    c += __builtin_popcount(in_lo);
    _mm256_storeu_ps(out + c, _mm256_permutevar8x32_ps(g.hi, pack_lanes(in_hi)));
    c += __builtin_popcount(in_hi);
  }
  *count = c;
  return sum_pairs(above);
}

// masses_above_portable on 8-lane halves.
PYLLMOPS_AVX2 void masses_above_avx2(const float* w, int64_t n, float lo, float hi, double* m_lo, double* m_hi) {
  const __m256 vlo = _mm256_set1_ps(lo), vhi = _mm256_set1_ps(hi);
  PairLanes a = zero_pairs(), b = zero_pairs();
  for (int64_t i = 0; i < n; i += kLanes) {
    const Group g = load_group(w, i, n, 0.0f);
    add_pairs(a, g, vlo), add_pairs(b, g, vhi);
  }
  *m_lo = sum_pairs(a), *m_hi = sum_pairs(b);
}

PYLLMOPS_AVX2 double band_split_avx2(const float* w, int64_t n, float lo, float hi, float* out, int64_t* count) {
  return hi == std::numeric_limits<float>::infinity() ? band_split8<false>(w, n, lo, hi, out, count)
                                                      : band_split8<true>(w, n, lo, hi, out, count);
}

// ------------------------------------------------------------------ dispatch
// The widest block kernels the CPU runs; PYLLMOPS_SAMPLING_ISA=avx2 or =portable (or the older
// PYLLMOPS_NO_AVX512=1, = portable) caps it, so tests can compare the three on one machine.
enum class Isa { kPortable, kAvx2, kAvx512 };
Isa isa() {
  static const Isa level = [] {
    Isa cpu = __builtin_cpu_supports("avx512f") ? Isa::kAvx512
              : __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") ? Isa::kAvx2
                                                                                : Isa::kPortable;
    const char* cap = std::getenv("PYLLMOPS_SAMPLING_ISA");
    if (std::getenv("PYLLMOPS_NO_AVX512") || (cap && std::strcmp(cap, "portable") == 0)) return Isa::kPortable;
    if (cap && std::strcmp(cap, "avx2") == 0 && cpu == Isa::kAvx512) return Isa::kAvx2;
    return cpu;
  }();
  return level;
}
bool use_avx512() { return isa() == Isa::kAvx512; }
bool use_avx2() { return isa() == Isa::kAvx2; }
bool has_avx2() { return isa() != Isa::kPortable; }  // kernels without an AVX-512 version
BlockMax block_max(const float* x, int64_t n) {
  return use_avx512() ? block_max_avx512(x, n) : use_avx2() ? block_max_avx2(x, n) : block_max_portable(x, n);
}
BlockMax chunk_max(const float* x, int64_t n, int64_t s, float* acc) {
  return use_avx512() ? chunk_max_avx512(x, n, s, acc)
         : use_avx2() ? chunk_max_avx2(x, n, s, acc)
                      : chunk_max_portable(x, n, s, acc);
}
void gather_at_least(const float* x, int64_t n, int32_t base, float thr, Cands& c) {
  c.room_for(n);
  use_avx512() ? gather_at_least_avx512(x, n, base, thr, c)
  : use_avx2() ? append_at_least_avx2(x, n, base, thr, c)
               : append_at_least(x, n, base, thr, c);
}
int64_t count_at_least(const uint32_t* keys, int64_t n, uint32_t t) {
  return use_avx512() ? count_at_least_avx512(keys, n, t) : count_at_least_portable(keys, n, t);
}
float block_weights(const float* x, int64_t n, float m, float w_scale, float kth, float* w) {
  return use_avx512() ? block_weights_avx512(x, n, m, w_scale, kth, w)
         : has_avx2()   ? block_weights_avx2(x, n, m, w_scale, kth, w)
                        : block_weights_portable(x, n, m, w_scale, kth, w);
}
void weigh_weights(const float* x, int64_t n, float m, float w_scale, float kth, float eps, float* w) {
  has_avx2() ? weigh_avx2(x, n, m, w_scale, kth, eps, w) : weigh(x, n, m, w_scale, kth, eps, w);
}
void masses_above(const float* w, int64_t n, float lo, float hi, double* m_lo, double* m_hi) {
  has_avx2() ? masses_above_avx2(w, n, lo, hi, m_lo, m_hi) : masses_above_portable(w, n, lo, hi, m_lo, m_hi);
}
double kept_mass(const float* w, int64_t n, float tau) {
  return has_avx2() ? kept_sum_avx2(w, n, tau) : kept_sum(w, n, tau);
}
void block_masses(const float* w, int64_t n, float tau, double* sums) {
  has_avx2() ? block_sums_avx2(w, n, tau, sums) : block_sums(w, n, tau, sums);
}
int64_t keep_at_least(float* w, int32_t* wi, int64_t n, float c) {
  return use_avx512() ? keep_at_least_avx512(w, wi, n, c)
         : use_avx2() ? keep_at_least_avx2(w, wi, n, c)
                      : keep_at_least_portable(w, wi, n, c);
}
double band_split(const float* w, int64_t n, float lo, float hi, float* out, int64_t* count) {
  return use_avx512() ? band_split_avx512(w, n, lo, hi, out, count)
         : has_avx2()   ? band_split_avx2(w, n, lo, hi, out, count)
                        : band_split_portable(w, n, lo, hi, out, count);
}
int64_t select_bits(const float* w, int64_t n, int shift, uint32_t mask, uint32_t key, float* out) {
  return use_avx512() ? select_bits_avx512(w, n, shift, mask, key, out)
         : use_avx2() ? select_bits_avx2(w, n, shift, mask, key, out)
                      : select_bits_portable(w, n, shift, mask, key, out);
}
// ------------------------------------------------------------------ branch-free selection
// On fresh logits every data-dependent branch of a selection (nth_element, a sort) mispredicts
// about half the time, which cost more than reading the row; these count instead of branching.

// Unsigned keys in the order of the floats (NaN-free input): -0 sorts below +0, which only
// chooses between two equal floats.
PYLLMOPS_INLINE uint32_t key_of(float f) {
  const uint32_t u = bits_of(f);
  return u & 0x80000000u ? ~u : u | 0x80000000u;
}
PYLLMOPS_INLINE float float_of_key(uint32_t k) { return float_of(k & 0x80000000u ? k & 0x7fffffffu : ~k); }

// The k-th largest of x[0, n) (1 <= k <= n), its key found bit by bit from the top: the largest
// key t with at least k keys >= t. With bits < 32 only the top `bits` bits are searched, which
// gives a value <= the k-th largest (a lower bound, cheaper).
float kth_largest(const float* x, int64_t n, int64_t k, int bits, std::vector<uint32_t>& keys) {
  keys.resize(n);
  for (int64_t i = 0; i < n; ++i) keys[i] = key_of(x[i]);
  uint32_t t = 0;
  for (int b = 31; b >= 32 - bits; --b) {
    const uint32_t c = t | (1u << b);
    t = count_at_least(keys.data(), n, c) >= k ? c : t;
  }
  return t < key_of(kNegInf) ? kNegInf : float_of_key(t);  // a truncated key below -inf's is a NaN
}

// w[0, n) in descending order into out, each value straight to its rank (the number of values
// before it in that order: larger ones, and equal ones at lower positions); n <= kRankSortMax.
constexpr int64_t kRankSortMax = 256;
PYLLMOPS_SIMD void rank_sort_descending(const float* w, int64_t n, float* out) {
  for (int64_t i = 0; i < n; ++i) {
    const float v = w[i];
    int32_t rank = 0;
    for (int64_t j = 0; j < i; ++j) rank += w[j] >= v;
    for (int64_t j = i + 1; j < n; ++j) rank += w[j] > v;
    out[rank] = v;
  }
}

// ------------------------------------------------------------------ per-row plan and state
enum class Mode : uint8_t { kStatus, kGreedy, kTopK, kFull };

struct RowPlan {
  Mode mode;
  int64_t status;  // kStatus rows
  float t, w_scale, p, q;  // w_scale: log2(e) / t (weights are 2^((x - m) * w_scale))
  int64_t k;        // kTopK: k; kFull: k of a large top-k (its k-th largest found first), else 0
  float kth;        // kFull: that k-th largest (-inf without top-k), set by the segment-0 job
  float m;          // kFull: the row's max (the weights are relative to it), set before the weights
  bool bad;         // kFull: the row holds NaN or +inf (found with the max)
  // kFull with top-p: the band of weights [lo, hi) expected to hold the cut-off (guess_band);
  // lo_b is lo's 12-bit bucket. banded = false: no guess, the weights are searched whole.
  bool banded;
  int lo_b;
  float lo, hi;
};

// Full mode's per-row arrays: every weight of the row (0 outside a large top-k), and per block of
// kBlock logits its mass z (float lanes), its mass above the band (double lanes) and how many of
// its weights fell in the band (those weights, in vocabulary order, are the segments' candidates).
struct FullRow {
  std::vector<float> w, bz;
  std::vector<double> ba;
  std::vector<int64_t> bc;
  void size_for(int64_t V, int64_t nblocks) {
    if (int64_t(w.size()) < V) w.resize(V);
    if (int64_t(bz.size()) < nblocks) bz.resize(nblocks), ba.resize(nblocks), bc.resize(nblocks);
  }
};

struct Segment {  // what one segment of a row leaves for the row's completion
  float max = kNegInf;
  bool bad = false;
  int64_t argmax = -1;  // greedy: first index of `max`
  Cands cand;
};

struct Scratch {
  std::vector<float> row;   // fp16/bf16 block converted to float; a row copy for a large k
  std::vector<float> tmp;   // nth_element copies
  FullRow full;  // single-segment rows
  std::vector<float> bucket;
  std::vector<double> sums;  // draw: block sums
  std::vector<uint32_t> keys;
  std::vector<float> chunks;  // top-k: chunk maxima
  std::vector<float> sample;  // full mode: the logits guess_band weighs
  Segment seg;  // single-segment rows
};

struct Workspace {  // multi-segment calls: state shared by a row's segments
  std::vector<Segment> segs;
  std::vector<FullRow> full;  // per row
  std::unique_ptr<std::atomic<int>[]> left;
  size_t left_size = 0;
};

template <class T>
class Pool {  // buffers outlive a call: fresh large buffers would page-fault on every call
 public:
  std::unique_ptr<T> get() {
    std::lock_guard<std::mutex> lock(mu_);
    if (free_.empty()) return std::make_unique<T>();
    auto s = std::move(free_.back());
    free_.pop_back();
    return s;
  }
  void put(std::unique_ptr<T> s) {
    std::lock_guard<std::mutex> lock(mu_);
    free_.push_back(std::move(s));
  }

 private:
  std::mutex mu_;
  std::vector<std::unique_ptr<T>> free_;
};

template <class T>
Pool<T>& pool() {
  static Pool<T> p;
  return p;
}

RowPlan plan_row(const SampleParams& prm, int64_t r, int64_t V) {
  RowPlan pl{};
  pl.t = prm.temperature.at(r);
  pl.p = prm.top_p.at(r);
  pl.q = prm.min_p.at(r);
  pl.kth = kNegInf;
  const int64_t k = prm.top_k.at(r);
  if (!(pl.t >= 0.0f && pl.t <= kFloatMax)) pl.status = kBadTemperature;
  else if (!(pl.p > 0.0f && pl.p <= 1.0f)) pl.status = kBadTopP;
  else if (!(pl.q >= 0.0f && pl.q <= 1.0f)) pl.status = kBadMinP;
  if (pl.status) {
    pl.mode = Mode::kStatus;
    return pl;
  }
  // w_scale = log2(e) / t, rounded once (a subnormal t: kFloatMax, only the max ties survive)
  pl.w_scale = pl.t > 0.0f ? float(std::min(1.4426950408889634 / double(pl.t), double(kFloatMax))) : 0.0f;
  const bool topk = k > 0 && k < V;
  if (pl.t == 0.0f) pl.mode = Mode::kGreedy;
  else if (topk && k <= std::min(kMaxTopK, std::max<int64_t>(64, V / 32))) pl.mode = Mode::kTopK, pl.k = k;
  else pl.mode = Mode::kFull, pl.k = topk ? k : 0;  // a large k: a threshold on the row is cheaper
  return pl;
}

// A float view of x[b, e) of row `src`: the row itself for fp32, else converted into s.row.
const float* load(const void* src, LogitsType dtype, int64_t b, int64_t e, Scratch& s) {
  if (dtype == LogitsType::F32) return static_cast<const float*>(src) + b;
  if (int64_t(s.row.size()) < e - b) s.row.resize(e - b);
  convert_row(static_cast<const uint16_t*>(src) + b, s.row.data(), e - b, dtype == LogitsType::BF16);
  return s.row.data();
}

// Accumulators of kLanes chunk maxima for a top-k of k: about 4 k maxima (a power of two number
// of accumulators), which leave ~1.1 k candidates on random logits.
int64_t chunk_accumulators(int64_t k) {
  int64_t s = 16;  // a multiple of 16 (chunk_max_avx512)
  while (s * kLanes < 4 * k && s < kMaxChunkAccumulators) s *= 2;
  return s;
}

// The max and NaN / +inf check of a row's segment [lo, hi) (full mode's first pass).
// sample (when set): also every kGuessStride-th logit, x[j] into sample[j / kGuessStride], read
// while its chunk is in L1 (guess_band's own strided gather from L3 was half of its time).
constexpr int kGuessStride = 32;
BlockMax segment_max(const void* x, LogitsType dtype, int64_t lo, int64_t hi, Scratch& s, float* sample = nullptr) {
  BlockMax r{kNegInf, false};
  for (int64_t b = lo; b < hi && !r.bad; b += 16 * kBlock) {
    const int64_t e = std::min(hi, b + 16 * kBlock);
    const float* v = load(x, dtype, b, e, s);
    const BlockMax bm = block_max(v, e - b);
    r.max = std::max(r.max, bm.max), r.bad |= bm.bad;
    if (sample)
      for (int64_t j = (b + kGuessStride - 1) / kGuessStride * kGuessStride; j < e; j += kGuessStride)
        sample[j / kGuessStride] = v[j - b];
  }
  return r;
}

// A full-mode row with min-p and no top-p (its survivors are the logits above a bound).
bool min_p_only(const RowPlan& pl) { return !(pl.p < 1.0f) && pl.q > 0.0f; }

// One segment [lo, hi) of row x (block aligned) in the row's mode. fr: the row's full-mode arrays.
void scan_segment(const void* x, LogitsType dtype, int64_t lo, int64_t hi, RowPlan& pl, Segment& sg, FullRow& fr,
                  Scratch& s) {
  sg.max = kNegInf, sg.bad = false, sg.argmax = -1, sg.cand.n = 0;
  if (pl.mode == Mode::kTopK) {
    // Pass 1: maxima of disjoint chunks (the whole segment converted at once for fp16 / bf16). k
    // chunks each hold a value >= the k-th largest of their maxima, so that is a lower bound of
    // the k-th largest; its top 16 bits are enough. Pass 2 collects the values above it.
    const float* v = load(x, dtype, lo, hi, s);
    const int64_t acc = chunk_accumulators(pl.k), nmax = acc * kLanes;
    s.chunks.resize(nmax);
    const BlockMax bm = chunk_max(v, hi - lo, acc, s.chunks.data());
    sg.max = bm.max, sg.bad = bm.bad;
    if (!bm.bad)
      gather_at_least(v, hi - lo, int32_t(lo), nmax >= pl.k ? kth_largest(s.chunks.data(), nmax, pl.k, 16, s.keys) : kNegInf,
                      sg.cand);
    return;
  }
  if (pl.mode == Mode::kFull) {
    // Second pass (the first found the row's max m): each block's weights and mass, then, while
    // they are in L1, the mass above the band and the weights in it.
    if (pl.bad || pl.m == kNegInf) return;
    if (min_p_only(pl)) {
      // Only w >= min_p survives, which needs no Z: the logits above the bound in x of that (a
      // little lower: rounding) are the candidates, weighed by finish_full.
      const double bound = double(pl.m) + double(pl.t) * (std::log(double(pl.q)) - 0.01);
      const float thr = std::max(pl.kth, bound < -double(kFloatMax) ? kNegInf : float(bound));
      for (int64_t b = lo; b < hi; b += 16 * kBlock) {
        const int64_t e = std::min(hi, b + 16 * kBlock);
        gather_at_least(load(x, dtype, b, e, s), e - b, int32_t(b), thr, sg.cand);
      }
      return;
    }
    for (int64_t b = lo; b < hi; b += kBlock) {
      const int64_t e = std::min(hi, b + kBlock), blk = b / kBlock;
      float* w = fr.w.data() + b;
      fr.bz[blk] = block_weights(load(x, dtype, b, e, s), e - b, pl.m, pl.w_scale, pl.kth, w);
      if (pl.banded) {
        sg.cand.room_for(e - b);
        fr.ba[blk] = band_split(w, e - b, pl.lo, pl.hi, sg.cand.x.data() + sg.cand.n, &fr.bc[blk]);
        sg.cand.n += fr.bc[blk];
      }
    }
    return;
  }
  for (int64_t b = lo; b < hi && !sg.bad; b += kBlock) {
    const int64_t e = std::min(hi, b + kBlock);
    const float* v = load(x, dtype, b, e, s);
    const BlockMax bm = block_max(v, e - b);
    sg.bad |= bm.bad;
    if (bm.max > sg.max) {  // greedy
      sg.max = bm.max;
      sg.argmax = b + (std::find(v, v + (e - b), bm.max) - v);
    }
  }
}

// Smallest w kept by top-p: the mass of the weights strictly above it is < target. `desc` holds
// weights in descending order; returns the last kept one.
float top_p_walk(const float* desc, size_t n, double above, double target) {
  float tau = desc[0];
  for (size_t i = 0; i < n && above < target;) {
    tau = desc[i];
    for (; i < n && desc[i] == tau; ++i) above += desc[i];  // ties share one verdict
  }
  return tau;
}

// Mass histogram of w[0, n) by (bits >> shift) & mask, added into hist. Four copies take
// alternate weights, so runs of weights in one bucket do not wait on each other's adds; a bucket's
// weights share their float exponent, so its double sum is exact and the copies add up to the same
// bits as one sequential histogram.
void mass_histogram(const float* w, int64_t n, int shift, uint32_t mask, double* hist, int nb) {
  constexpr int kCopies = 4;
  if (n < 4 * nb) {  // too few weights to pay for clearing the copies
    for (int64_t i = 0; i < n; ++i) hist[(bits_of(w[i]) >> shift) & mask] += w[i];
    return;
  }
  thread_local std::vector<double> part;
  part.assign(size_t(kCopies - 1) * nb, 0.0);
  double* h[kCopies] = {hist};
  for (int j = 1; j < kCopies; ++j) h[j] = part.data() + (j - 1) * nb;
  int64_t i = 0;
  for (; i + kCopies <= n; i += kCopies)
    for (int j = 0; j < kCopies; ++j) h[j][(bits_of(w[i + j]) >> shift) & mask] += w[i + j];
  for (; i < n; ++i) h[0][(bits_of(w[i]) >> shift) & mask] += w[i];
  for (int j = 1; j < kCopies; ++j)
    for (int b = 0; b < nb; ++b) hist[b] += h[j][b];
}

// The bucket (from the top) where the descending mass, starting at `above`, reaches the target;
// `above` then holds the mass of the buckets before it. -1 if rounding keeps the target out of reach.
int reach(const double* hist, int nb, double& above, double target) {
  for (int b = nb - 1; b >= 0; --b) {
    if (above + hist[b] >= target) return b;
    above += hist[b];
  }
  return -1;
}

// vals = the weights of w[0, n) with (bits >> shift) & mask == key (in order). w may be vals'
// own data (the selection runs front to back) when its capacity already holds n + kLanes.
void select_bucket(const float* w, int64_t n, int shift, uint32_t mask, uint32_t key, std::vector<float>& vals) {
  if (int64_t(vals.size()) < n + kLanes) vals.resize(n + kLanes);
  vals.resize(select_bits(w, n, shift, mask, key, vals.data()));
}

// The cut-off inside one 12-bit bucket: vals holds the bucket's weights, `above` the mass of the
// weights above the bucket. Histograms by the next 6 bits, level by level, narrow a crowded bucket
// to at most 64 weights (or to its last 2 bits); the rest is sorted and walked.
float narrow_and_walk(std::vector<float>& vals, double above, double target) {
  constexpr int kSubBits = 6;  // 64 sub-buckets a level: 10 bits at once zeroed and walked 1024
  constexpr uint32_t kSubMask = (1u << kSubBits) - 1;
  for (int shift = kBucketShift - kSubBits; vals.size() > 64 && shift >= 0; shift -= kSubBits) {
    double sub[1 << kSubBits] = {}, sub_above = above;
    mass_histogram(vals.data(), int64_t(vals.size()), shift, kSubMask, sub, 1 << kSubBits);
    const int j = reach(sub, 1 << kSubBits, sub_above, target);
    if (j < 0) break;
    above = sub_above;
    select_bucket(vals.data(), int64_t(vals.size()), shift, kSubMask, uint32_t(j), vals);
  }
  std::sort(vals.begin(), vals.end(), [](float x, float y) { return x > y; });
  return top_p_walk(vals.data(), vals.size(), above, target);
}

// The band [lo, hi) of weights expected to hold the top-p cut-off, from every 32nd logit of the
// row (weighed exactly; their mass histogram's bucket g where the target share is reached). Flat
// rows: whole buckets either side of g until each side holds 4 standard errors of the sampled
// share (at least one bucket). Peaky rows (few sampled weights above g, or a top token holding over
// 1% of the estimated Z, where the heavy tokens the sample may or may not hold decide the cut-off):
// a head band from 2 octaves below the lower of the guesses with and without the sample's heaviest
// weight, up. The guess only decides how much work the exact search does: finish_full checks that
// the cut-off is inside the band and searches the whole row if not (1% of randn x 3 rows at T 0.7,
// none of the flat benchmark rows).
constexpr int kBandWide = 16;
constexpr int64_t kBandMinAbove = 64;

// buf: the sampled logits when `gathered` (segment_max collected them), else gathered here.
void guess_band(const void* x, LogitsType dtype, int64_t V, RowPlan& pl, std::vector<float>& buf, bool gathered) {
  pl.banded = false;
  if (!(pl.p < 1.0f) || pl.bad || pl.m == kNegInf) return;
  const int64_t ns = (V + kGuessStride - 1) / kGuessStride;
  buf.resize(ns + kLanes);
  for (int64_t i = 0; i < ns && !gathered; ++i) {
    const int64_t j = i * kGuessStride;
    if (dtype == LogitsType::F32) buf[i] = static_cast<const float*>(x)[j];
    else {
      const uint16_t h = static_cast<const uint16_t*>(x)[j];
      buf[i] = dtype == LogitsType::BF16 ? float_of(uint32_t(h) << 16) : half_to_float(h);
    }
  }
  weigh_weights(buf.data(), ns, pl.m, pl.w_scale, pl.kth, 0.0f, buf.data());
  double hist[kBuckets] = {};
  int32_t count[kBuckets] = {};
  float top = 0.0f;
  for (int64_t i = 0; i < ns; ++i) {
    const uint32_t b = bits_of(buf[i]) >> kBucketShift;
    hist[b] += buf[i];
    count[b] += 1;
    top = std::max(top, buf[i]);
  }
  double total = 0.0, above = 0.0;
  for (int b = 0; b < kBuckets; ++b) total += hist[b];
  const int g = reach(hist, kBuckets, above, double(pl.p) * total);
  if (g < 0) return;
  int64_t n_above = 0;
  for (int b = g; b < kBuckets; ++b) n_above += count[b];
  pl.banded = true;
  // The row's top token weighs 1: above a hundredth of the estimated Z, the few heavy tokens the
  // sample rarely holds decide the cut-off (peaky rows), and the band is a head band.
  if (n_above < kBandMinAbove || 1.0 > 1e-2 * total * kGuessStride) {
    // A head band. When the sample caught one of the few heavy tokens, that token alone can make
    // the guess (measured: ~1 peaky row in 5 missed the band so); the guess without it is lower.
    const int top_b = int(bits_of(top) >> kBucketShift);
    hist[top_b] -= top;
    double above_rest = 0.0;
    const int g_rest = reach(hist, kBuckets, above_rest, double(pl.p) * (total - top));
    pl.lo_b = std::max(0, (g_rest >= 0 ? std::min(g, g_rest) : g) - kBandWide);
    pl.lo = float_of(uint32_t(pl.lo_b) << kBucketShift);
    pl.hi = std::numeric_limits<float>::infinity();
    return;
  }
  // The sampled share of the mass above bucket g has a standard error of sqrt(sum w^2 (a - f)^2) / total
  // (a: 1 above g, f: that share; w^2 taken as a bucket's mean square, its weights being within
  // 2^(1/8) of each other); the band reaches 4 of it in sampled mass either side of g.
  const double f = above / total;
  double sq = 0.0;
  for (int b = 0; b < kBuckets; ++b)
    if (count[b] > 0) sq += hist[b] * hist[b] / count[b] * (b > g ? (1.0 - f) * (1.0 - f) : f * f);
  const double margin = 4.0 * std::sqrt(sq);
  int hi_b = g + 1, lo_b = g;
  for (double m = 0.0; hi_b < kBuckets && (m < margin || hi_b <= g + 1); ++hi_b) m += hist[hi_b];
  for (double m = 0.0; lo_b > 0 && (m < margin || lo_b >= g); --lo_b) m += hist[lo_b - 1];
  pl.lo_b = lo_b;
  pl.lo = float_of(uint32_t(lo_b) << kBucketShift);
  pl.hi = hi_b < kBuckets ? float_of(uint32_t(hi_b) << kBucketShift) : std::numeric_limits<float>::infinity();
}

// The 12-bit bucket b holding the top-p cut-off among the weights mid[0, n), `above` the mass
// above them: above + M(start(b + 1)) < target <= above + M(start(b)), M(t) the mass of the weights
// >= t; *above_b = above + M(start(b + 1)); -1 when rounding keeps the target out of reach. A
// crowded set (a wide band on a flat row) guesses b from every 8th weight's histogram and checks
// the guess with masked sums: the scalar histogram of every weight (~1.5 cycles a weight) was a
// sixth of top-p's time on flat rows. The exact histogram decides when the guess is off by more
// than a few buckets.
int cutoff_bucket(const float* mid, int64_t n, double above, double target, double* above_b) {
  constexpr int64_t kGuessEvery = 8;
  auto start = [](int b) { return float_of(uint32_t(b) << kBucketShift); };
  if (n >= 1024 * kGuessEvery) {
    double hist[kBuckets] = {};
    for (int64_t i = 0; i < n; i += kGuessEvery) hist[bits_of(mid[i]) >> kBucketShift] += double(kGuessEvery) * mid[i];
    double a = above;
    int b = std::max(0, reach(hist, kBuckets, a, target));
    for (int step = 0; step < 4; ++step) {
      double m_lo, m_hi;
      masses_above(mid, n, start(b), start(b + 1), &m_lo, &m_hi);  // start(kBuckets) > 1: none
      if (above + m_hi >= target) {
        if (b + 1 >= kBuckets) break;
        ++b;
        continue;
      }
      if (above + m_lo < target) {
        if (b == 0) return -1;
        --b;
        continue;
      }
      *above_b = above + m_hi;
      return b;
    }
  }
  double hist[kBuckets] = {};
  mass_histogram(mid, n, kBucketShift, ~0u, hist, kBuckets);
  *above_b = above;
  return reach(hist, kBuckets, *above_b, target);
}

// The top-p cut-off from the band's weights mid[0, n) and the mass above the band: the bucket by
// the weights' top 12 bits where the descending mass reaches the target (cutoff_bucket), then
// narrow_and_walk the weight inside it; false when the target is not reached inside the band.
bool band_threshold(const float* mid, int64_t n, int lo_b, double above, double target, std::vector<float>& vals,
                    float* tau) {
  const int b = cutoff_bucket(mid, n, above, target, &above);
  if (b < lo_b) return false;  // also b = -1
  vals.resize(n + kLanes);
  vals.resize(select_bits(mid, n, kBucketShift, ~0u, uint32_t(b), vals.data()));
  *tau = narrow_and_walk(vals, above, target);
  return true;
}

// The top-p cut-off (smallest kept weight) among w[0, n): band_threshold with every weight in the
// band (0 when rounding keeps the target out of reach: everything is kept).
float top_p_threshold(const float* w, int64_t n, double target, std::vector<float>& vals) {
  float tau = 0.0f;
  band_threshold(w, n, 0, 0.0, target, vals, &tau);
  return tau;
}

// The inverse CDF over the weights w[0, n) >= tau (and > 0) at vocabulary ids wi (ascending; null:
// the ids are 0..n-1, a row's dense weights), given their sums per block of `block` weights: the
// first kept weight whose running sum (double, in order) passes u * W, W the blocks' total. Whole
// blocks are skipped by their sums; the block holding the point is walked weight by weight (the
// last kept one when rounding leaves the point out of reach). Also the renormalised distribution
// into probs (when set).
int64_t inverse_cdf(const float* w, const int32_t* wi, int64_t n, int64_t block, const std::vector<double>& sums,
                    float tau, double u, float* probs, int64_t V) {
  const int64_t nb = (n + block - 1) / block;
  double total = 0.0;
  for (int64_t b = 0; b < nb; ++b) total += sums[b];
  if (probs) {
    std::fill(probs, probs + V, 0.0f);
    for (int64_t i = 0; i < n; ++i)
      if (w[i] >= tau) probs[wi ? wi[i] : i] = float(w[i] / total);
  }
  const double target = u * total;
  double run = 0.0;
  for (int64_t b = 0; b < nb; ++b) {
    if (run + sums[b] > target) {  // the block holds a kept weight; selects instead of branches
      int64_t last = -1;
      for (int64_t i = b * block; i < std::min(n, (b + 1) * block); ++i) {
        const bool kept = w[i] >= tau && w[i] > 0.0f;
        last = kept ? i : last;
        run += kept ? double(w[i]) : 0.0;
        if (kept && run > target) return wi ? wi[i] : i;
      }
      return wi ? wi[last] : last;
    }
    run += sums[b];
  }
  for (int64_t j = n - 1; j >= 0; --j)  // rounding left u * W out of reach: the last kept token
    if (w[j] >= tau && w[j] > 0.0f) return wi ? wi[j] : j;
  return -1;
}

// The draw from weights w[0, n) at ids wi (see inverse_cdf), cut at tau (min-p / top-p), the sums
// per block of 64 weights (16 double lanes, in lane order).
int64_t draw(const float* w, const int32_t* wi, int64_t n, float tau, double u, float* probs, int64_t V,
             std::vector<double>& sums) {
  sums.resize((n + kSumBlock - 1) / kSumBlock);
  block_masses(w, n, tau, sums.data());
  return inverse_cdf(w, wi, n, kSumBlock, sums, tau, u, probs, V);
}

// draw() for a banded row: every weight >= hi is kept (tau is inside the band), so a block's kept
// mass is its mass above the band plus its band weights >= tau (in vocabulary order).
int64_t draw_banded(const float* w, int64_t V, const FullRow& fr, const float* mid, float tau, double u, float* probs,
                    std::vector<double>& sums) {
  sums.resize((V + kBlock - 1) / kBlock);
  for (int64_t b = 0, j = 0; b < int64_t(sums.size()); j += fr.bc[b], ++b)
    sums[b] = fr.ba[b] + kept_mass(mid + j, fr.bc[b], tau);
  return inverse_cdf(w, nullptr, V, kBlock, sums, tau, u, probs, V);
}

struct Row {  // a row's segments, in vocabulary order
  Segment* const* segs;
  int nseg;
};

int64_t finish_greedy(const Row& row, int64_t V, float* probs) {
  float m = kNegInf;
  for (int i = 0; i < row.nseg; ++i) m = std::max(m, row.segs[i]->max);
  if (m == kNegInf) return kAllNegInf;
  int64_t id = -1;
  for (int i = 0; i < row.nseg && id < 0; ++i)
    if (row.segs[i]->max == m) id = row.segs[i]->argmax;
  if (probs) {
    std::fill(probs, probs + V, 0.0f);
    probs[id] = 1.0f;
  }
  return id;
}

// The row's candidates in vocabulary order: its segment's, or a multi-segment row's gathered into
// the scratch segment (free then: such a row's segments live in the workspace).
Cands& row_candidates(const Row& row, Scratch& s) {
  if (row.nseg == 1) return row.segs[0]->cand;
  Cands& all = s.seg.cand;
  all.n = 0;
  for (int i = 0; i < row.nseg; ++i) {
    const Cands& c = row.segs[i]->cand;
    all.room_for(c.n);
    std::copy(c.x.begin(), c.x.begin() + c.n, all.x.begin() + all.n);
    std::copy(c.idx.begin(), c.idx.begin() + c.n, all.idx.begin() + all.n);
    all.n += c.n;
  }
  return all;
}

int64_t finish_top_k(const Row& row, const RowPlan& pl, double u, float* probs, int64_t V, Scratch& s) {
  float m = kNegInf;
  for (int i = 0; i < row.nseg; ++i) m = std::max(m, row.segs[i]->max);
  if (m == kNegInf) return kAllNegInf;
  Cands& all = row_candidates(row, s);
  // Candidates in vocabulary order (at least k: all values >= the k-th largest); keep the top k.
  const int64_t n = keep_at_least(all.x.data(), all.idx.data(), all.n, kth_largest(all.x.data(), all.n, pl.k, 32, s.keys));
  float* w = all.x.data();
  weigh_weights(w, n, m, pl.w_scale, kNegInf, 0.0f, w);
  float tau = pl.q;
  if (pl.p < 1.0f) {
    // Up to 256 survivors each goes straight to its rank; more (a large k) take the histograms.
    const double target = double(pl.p) * kept_mass(w, n, 0.0f);
    if (n > kRankSortMax) {
      tau = std::max(tau, top_p_threshold(w, n, target, s.bucket));
    } else {
      s.bucket.resize(n);
      rank_sort_descending(w, n, s.bucket.data());
      tau = std::max(tau, top_p_walk(s.bucket.data(), n, 0.0, target));
    }
  }
  return draw(w, all.idx.data(), n, tau, u, probs, V, s.sums);
}

// Z is the sum of the blocks' masses in block order (the same blocks, weights and order whatever
// the segments). Weights below eps = 0.999 (1 - p) Z / V hold less than (1 - p) Z together, so
// top-p cuts each of them (so a band below eps changes nothing). A banded row whose cut-off lies in
// its band is finished from the band's weights and the blocks' sums; any other row's weights >= eps
// are searched whole and drawn from the row of weights. Every array read is the same whatever
// the thread count (the dense row, per-block sums, the band's weights in vocabulary order).
int64_t finish_full(const Row& row, const RowPlan& pl, const FullRow& fr, double u, float* probs, int64_t V,
                    Scratch& s) {
  if (pl.m == kNegInf) return kAllNegInf;
  if (min_p_only(pl)) {  // the candidates in vocabulary order, weighed (0 below min_p)
    Cands& c = row_candidates(row, s);
    weigh_weights(c.x.data(), c.n, pl.m, pl.w_scale, pl.kth, pl.q, c.x.data());
    return draw(c.x.data(), c.idx.data(), c.n, pl.q, u, probs, V, s.sums);
  }
  const int64_t nblocks = (V + kBlock - 1) / kBlock;
  double z = 0.0;
  for (int64_t b = 0; b < nblocks; ++b) z += double(fr.bz[b]);
  const float* w = fr.w.data();
  if (!(pl.p < 1.0f)) return draw(w, nullptr, V, pl.q, u, probs, V, s.sums);
  const double target = double(pl.p) * z;
  if (pl.banded) {
    const Cands& mid = row_candidates(row, s);
    double above = 0.0;
    for (int64_t b = 0; b < nblocks; ++b) above += fr.ba[b];
    float tau_p;
    if (above < target && band_threshold(mid.x.data(), mid.n, pl.lo_b, above, target, s.bucket, &tau_p)) {
      const float tau = std::max(pl.q, tau_p);
      if (tau < pl.hi) return draw_banded(w, V, fr, mid.x.data(), tau, u, probs, s.sums);
    }
  }
  const float eps = std::max({pl.q, std::numeric_limits<float>::min(),
                              float(kEpsShare * (1.0 - double(pl.p)) * z / double(V))});
  s.tmp.resize(V + kLanes);
  int64_t n = 0;
  band_split(w, V, eps, std::numeric_limits<float>::infinity(), s.tmp.data(), &n);
  const float tau = std::max(pl.q, top_p_threshold(s.tmp.data(), n, target, s.bucket));
  return draw(w, nullptr, V, tau, u, probs, V, s.sums);
}

// The k-th largest of the row (large-k rows, before their scan).
void find_kth(const void* x, LogitsType dtype, int64_t V, RowPlan& pl, Scratch& s) {
  const float* v = load(x, dtype, 0, V, s);
  for (int64_t b = 0; b < V; b += kBlock)
    if (block_max(v + b, std::min(kBlock, V - b)).bad) return;  // NaN-free before nth_element; the scan flags it
  s.tmp.assign(v, v + V);
  std::nth_element(s.tmp.begin(), s.tmp.begin() + (pl.k - 1), s.tmp.end(), [](float a, float b) { return a > b; });
  pl.kth = s.tmp[pl.k - 1];
}

}  // namespace

int64_t sample_rows(const void* logits, LogitsType dtype, int64_t B, int64_t V, int64_t ld,
                    const SampleParams& prm, int64_t* ids, float* probs, int threads) {
  if (B <= 0) return -1;
  if (V <= 0 || V >= (int64_t(1) << 31)) throw std::invalid_argument("sample_rows: V must be in [1, 2^31)");
  const size_t elem = dtype == LogitsType::F32 ? 4 : 2;
  auto row_ptr = [&](int64_t r) { return static_cast<const char*>(logits) + r * ld * int64_t(elem); };
  const int64_t nblocks = (V + kBlock - 1) / kBlock;

  int nthreads = threads > 0 ? threads : default_threads();
  if (B * V < kMinParallel) nthreads = 1;
  int64_t nseg = 1;
  if (B < nthreads) nseg = std::max<int64_t>(1, std::min<int64_t>((nthreads + B - 1) / B, nblocks / kMinSegmentBlocks));
  const int64_t seg_blocks = (nblocks + nseg - 1) / nseg;

  std::vector<RowPlan> plans(B);
  for (int64_t r = 0; r < B; ++r) plans[r] = plan_row(prm, r, V);

  // Full mode's first pass over a whole row: the k-th largest of a large top-k, the max, the check;
  // then the band guess.
  auto row_max = [&](int64_t r, Scratch& s) {
    RowPlan& pl = plans[r];
    if (pl.k > 0) find_kth(row_ptr(r), dtype, V, pl, s);
    const bool sampled = pl.p < 1.0f;  // guess_band's sample read with the max
    if (sampled) s.sample.resize((V + kGuessStride - 1) / kGuessStride + kLanes);
    const BlockMax bm = segment_max(row_ptr(r), dtype, 0, V, s, sampled ? s.sample.data() : nullptr);
    pl.m = bm.max, pl.bad = bm.bad;
    guess_band(row_ptr(r), dtype, V, pl, s.sample, sampled);
  };

  auto finish = [&](int64_t r, const Row& row, const FullRow& fr, Scratch& s) {
    RowPlan& pl = plans[r];
    float* out = probs ? probs + r * V : nullptr;
    int64_t id = pl.status;
    bool bad = pl.mode == Mode::kFull && pl.bad;
    for (int i = 0; i < row.nseg; ++i) bad |= row.segs[i]->bad;
    if (pl.mode == Mode::kStatus) id = pl.status;
    else if (bad) id = kBadValue;
    else if (pl.mode == Mode::kGreedy) id = finish_greedy(row, V, out);
    else {
      const double u = row_uniform(prm.seed_at(r), prm.offset.at(r));
      id = pl.mode == Mode::kTopK ? finish_top_k(row, pl, u, out, V, s) : finish_full(row, pl, fr, u, out, V, s);
    }
    ids[r] = id;
  };

  // Scratch per thread: the pool's workers persist, so its buffers are reused across calls.
  thread_local Scratch scratch;
  if (nseg == 1) {
    parallel_tasks(B, nthreads, [&](int64_t r) {
      Scratch& s = scratch;
      Segment* seg = &s.seg;
      RowPlan& pl = plans[r];
      if (pl.mode == Mode::kFull) {
        s.full.size_for(V, nblocks);
        row_max(r, s);
      }
      if (pl.mode != Mode::kStatus) scan_segment(row_ptr(r), dtype, 0, V, pl, s.seg, s.full, s);
      finish(r, Row{&seg, 1}, s.full, s);
    });
  } else {
    std::unique_ptr<Workspace> ws = pool<Workspace>().get();
    const int64_t jobs = B * nseg;
    if (int64_t(ws->segs.size()) < jobs) ws->segs.resize(jobs);
    if (int64_t(ws->full.size()) < B) ws->full.resize(B);
    for (int64_t r = 0; r < B; ++r)
      if (plans[r].mode == Mode::kFull) ws->full[r].size_for(V, nblocks);
    if (ws->left_size < size_t(B)) ws->left.reset(new std::atomic<int>[B]), ws->left_size = B;
    for (int64_t r = 0; r < B; ++r) ws->left[r].store(int(nseg), std::memory_order_relaxed);
    std::vector<Segment*> seg_ptrs(jobs);
    for (int64_t j = 0; j < jobs; ++j) seg_ptrs[j] = &ws->segs[j];
    auto seg_lo = [&](int64_t g) { return std::min(V, g * seg_blocks * kBlock); };
    // Full-mode rows split into segments: the segments' maxima first (the weights need the row's).
    // A large top-k's row is scanned whole by its segment 0 (its k-th largest comes first).
    auto split_full = [&](const RowPlan& pl) { return pl.mode == Mode::kFull && pl.k == 0; };
    if (std::any_of(plans.begin(), plans.end(), split_full)) {
      parallel_tasks(jobs, nthreads, [&](int64_t j) {
        const int64_t r = j / nseg, g = j % nseg;
        if (!split_full(plans[r])) return;
        const BlockMax bm = segment_max(row_ptr(r), dtype, seg_lo(g), seg_lo(g + 1), scratch);
        ws->segs[j].max = bm.max, ws->segs[j].bad = bm.bad;
      });
      for (int64_t r = 0; r < B; ++r) {
        if (!split_full(plans[r])) continue;
        plans[r].m = kNegInf, plans[r].bad = false;
        for (int64_t g = 0; g < nseg; ++g) {
          plans[r].m = std::max(plans[r].m, ws->segs[r * nseg + g].max);
          plans[r].bad |= ws->segs[r * nseg + g].bad;
        }
        guess_band(row_ptr(r), dtype, V, plans[r], scratch.sample, false);
      }
    }
    parallel_tasks(jobs, nthreads, [&](int64_t j) {
      Scratch& s = scratch;
      const int64_t r = j / nseg, g = j % nseg;
      RowPlan& pl = plans[r];
      FullRow& fr = ws->full[r];
      Segment& sg = ws->segs[j];
      sg.max = kNegInf, sg.bad = false, sg.cand.n = 0;
      const bool large_k = pl.mode == Mode::kFull && pl.k > 0;
      if (pl.mode != Mode::kStatus && (g == 0 || !large_k)) {
        if (large_k) row_max(r, s);
        scan_segment(row_ptr(r), dtype, large_k ? 0 : seg_lo(g), large_k ? V : seg_lo(g + 1), pl, sg, fr, s);
      }
      if (ws->left[r].fetch_sub(1, std::memory_order_acq_rel) == 1)
        finish(r, Row{seg_ptrs.data() + r * nseg, int(nseg)}, fr, s);
    });
    pool<Workspace>().put(std::move(ws));
  }
  for (int64_t r = 0; r < B; ++r)
    if (ids[r] < 0) return r;
  return -1;
}

}  // namespace pyllmops::cpu
