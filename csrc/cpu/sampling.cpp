// CPU sampling kernel. Per row (rows across threads):
//
//  greedy (t == 0)     pass 1: max and NaN check; pass 2: first index of the max.
//  small top-k         pass 1: one read of the row keeping a candidate buffer of values that can
//                      still be among the k largest (a chunk of 64 whose max is below the running
//                      k-th value is skipped after one vectorised max); then everything runs on the
//                      ~k survivors: weights, top-p walk in descending order, min-p, inverse CDF in
//                      vocabulary order.
//  top-k off / large   pass 1: max (and the k-th largest by nth_element on a copy for a large k);
//                      pass 2: w = exp((x - m) / t) (0 below the k-th) into scratch; for top-p,
//                      Z, and the weights that can matter (>= (1 - p) Z / V / 2) collected with a
//                      vectorised test per 16: a histogram of their mass by their top 12 bits
//                      (a 2^(1/8) ratio per bucket) finds the bucket where the descending mass
//                      reaches p * Z, the only one sorted. Last pass: sums of kept w per
//                      64-element chunk; the inverse CDF walks chunk sums and scans one chunk.
//
// Hot loops are written lane-wise (16 independent accumulators) so the compiler vectorises them
// without reassociating float sums, and compiled for AVX-512 / AVX2 / baseline with target_clones.
// Floating-point contraction is off so every clone (and every machine) gives the same bits;
// no-trapping-math (FP exceptions are never inspected) lets the select-heavy exp loop vectorise.
#pragma GCC optimize("fp-contract=off", "no-trapping-math")

#include "cpu/sampling.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <memory>
#include <mutex>
#include <vector>

#include "cpu/parallel.h"

#define PYLLMOPS_SIMD __attribute__((target_clones("arch=skylake-avx512", "arch=haswell", "default")))
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
constexpr int64_t kChunk = 64;  // inverse-CDF chunk
constexpr float kNegInf = -std::numeric_limits<float>::infinity();
constexpr float kFloatMax = std::numeric_limits<float>::max();
constexpr int kBucketShift = 20;  // w's top 12 bits: 8 exponent + 3 mantissa (w in [0, 1])
constexpr int kBuckets = (0x3F800000 >> kBucketShift) + 1;

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

// exp(x) for x <= 0 to ~2 ulp (Cephes expf polynomial), 0 below -87.3 (no subnormals); branch-free
// so loops over it vectorise. Every sampling path of this file uses it.
PYLLMOPS_INLINE float exp_nonpos(float x) {
  const float xc = x < -87.3f ? -87.3f : x;  // also maps -inf; NaN stays NaN (bad rows only)
  // Round to nearest with the 1.5 * 2^23 trick (exact for |v| < 2^22; floor() would not vectorise).
  const float n = (xc * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  const float r = xc - n * 0.693359375f + n * 2.12194440e-4f;
  float y = 1.9875691500e-4f;
  y = y * r + 1.3981999507e-3f;
  y = y * r + 8.3334519073e-3f;
  y = y * r + 4.1665795894e-2f;
  y = y * r + 1.6666665459e-1f;
  y = y * r + 5.0000001201e-1f;
  y = y * r * r + r + 1.0f;
  const float scaled = y * float_of(uint32_t(int32_t(n) + 127) << 23);
  return x < -87.3f ? 0.0f : scaled;
}

struct MaxScan {
  float max;
  bool bad;  // NaN or +inf seen
};

PYLLMOPS_SIMD void convert_row(const uint16_t* src, float* dst, int64_t n, bool bf16) {
  if (bf16) {
    for (int64_t i = 0; i < n; ++i) dst[i] = float_of(uint32_t(src[i]) << 16);
  } else {
    for (int64_t i = 0; i < n; ++i) dst[i] = half_to_float(src[i]);
  }
}

PYLLMOPS_SIMD MaxScan scan_max(const float* x, int64_t n) {
  float acc[kLanes];
  uint32_t bad[kLanes];
  for (int j = 0; j < kLanes; ++j) acc[j] = kNegInf, bad[j] = 0;
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (int j = 0; j < kLanes; ++j) {
      const float v = x[i + j];
      acc[j] = v > acc[j] ? v : acc[j];
      bad[j] |= !(v <= kFloatMax);
    }
  }
  for (; i < n; ++i) {
    acc[0] = x[i] > acc[0] ? x[i] : acc[0];
    bad[0] |= !(x[i] <= kFloatMax);
  }
  MaxScan r{kNegInf, false};
  for (int j = 0; j < kLanes; ++j) r.max = std::max(r.max, acc[j]), r.bad |= bad[j] != 0;
  return r;
}

// w[i] = exp((x[i] - m) / t) for the top-k survivors x[i] >= kth, else 0 (i < n).
PYLLMOPS_SIMD void weights(const float* x, float* w, int64_t n, float m, float t, float kth) {
  if (t == 1.0f) {
    for (int64_t i = 0; i < n; ++i) w[i] = x[i] >= kth ? exp_nonpos(x[i] - m) : 0.0f;
  } else {
    for (int64_t i = 0; i < n; ++i) w[i] = x[i] >= kth ? exp_nonpos((x[i] - m) / t) : 0.0f;
  }
}

// Sum of the w >= tau in each 64-element chunk (last one partial), float lanes in a fixed order.
PYLLMOPS_SIMD void chunk_sums(const float* w, int64_t n, float tau, double* sums) {
  for (int64_t c = 0; c * kChunk < n; ++c) {
    const int64_t b = c * kChunk, e = std::min(n, b + kChunk);
    float acc[kLanes] = {};
    int64_t i = b;
    for (; i + kLanes <= e; i += kLanes)
      for (int j = 0; j < kLanes; ++j) acc[j] += w[i + j] >= tau ? w[i + j] : 0.0f;
    for (; i < e; ++i) acc[0] += w[i] >= tau ? w[i] : 0.0f;
    float s = 0.0f;
    for (int j = 0; j < kLanes; ++j) s += acc[j];
    sums[c] = s;
  }
}

PYLLMOPS_SIMD void write_probs(const float* w, int64_t n, float tau, double total, float* probs) {
  const double inv = 1.0 / total;
  for (int64_t i = 0; i < n; ++i) probs[i] = w[i] >= tau ? float(w[i] * inv) : 0.0f;
}

struct Cand {
  float x;
  float w;
  int64_t idx;
};

struct Scratch {
  std::vector<float> row;  // fp16/bf16 row converted to float
  std::vector<float> w;    // weights (top-k off)
  std::vector<Cand> cand;  // top-k survivors
  std::vector<float> bucket;
  std::vector<double> sums;
};

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

void keep_top_k(std::vector<Cand>& cand, int64_t k, float& thr) {
  auto by_x = [](const Cand& a, const Cand& b) { return a.x > b.x; };
  std::nth_element(cand.begin(), cand.begin() + (k - 1), cand.end(), by_x);
  thr = cand[k - 1].x;
  cand.erase(std::partition(cand.begin(), cand.end(), [thr](const Cand& c) { return c.x >= thr; }), cand.end());
}

// One read of the row: every value that can be among the k largest lands in `cand`, which ends
// holding exactly the x >= (k-th largest x) survivors.
MaxScan collect_top_k(const float* x, int64_t n, int64_t k, std::vector<Cand>& cand) {
  cand.clear();
  size_t cap = size_t(std::max<int64_t>(2 * k, 256));
  float thr = kNegInf;
  MaxScan all{kNegInf, false};
  for (int64_t b = 0; b < n; b += kChunk) {
    const int64_t e = std::min(n, b + kChunk);
    const MaxScan s = scan_max(x + b, e - b);
    all.bad |= s.bad;
    all.max = std::max(all.max, s.max);
    if (!(s.max >= thr)) continue;
    for (int64_t i = b; i < e; ++i) {
      if (x[i] >= thr) cand.push_back({x[i], 0.0f, i});
    }
    if (cand.size() >= cap) {
      keep_top_k(cand, k, thr);
      if (cand.size() > cap / 2) cap *= 2;  // many ties at the k-th value
    }
  }
  if (!all.bad) keep_top_k(cand, k, thr);
  return all;
}

int64_t draw_top_k(const float* x, int64_t n, float t, int64_t k, float p, float q, double u, float* probs,
                   Scratch& s) {
  const MaxScan ms = collect_top_k(x, n, k, s.cand);
  if (ms.bad) return kBadValue;
  if (ms.max == kNegInf) return kAllNegInf;
  auto& cand = s.cand;
  for (auto& c : cand) c.w = exp_nonpos((c.x - ms.max) / t);
  std::sort(cand.begin(), cand.end(), [](const Cand& a, const Cand& b) { return a.w > b.w || (a.w == b.w && a.idx < b.idx); });
  float tau = 0.0f;
  if (p < 1.0f) {
    double z = 0.0;
    for (const auto& c : cand) z += c.w;
    s.bucket.resize(cand.size());
    for (size_t i = 0; i < cand.size(); ++i) s.bucket[i] = cand[i].w;
    tau = top_p_walk(s.bucket.data(), cand.size(), 0.0, double(p) * z);
  }
  tau = std::max(tau, q);
  cand.erase(std::find_if(cand.begin(), cand.end(), [tau](const Cand& c) { return c.w < tau; }), cand.end());
  std::sort(cand.begin(), cand.end(), [](const Cand& a, const Cand& b) { return a.idx < b.idx; });
  double total = 0.0;
  for (const auto& c : cand) total += c.w;
  if (probs) {
    std::fill(probs, probs + n, 0.0f);
    for (const auto& c : cand) probs[c.idx] = float(c.w / total);
  }
  const double target = u * total;
  double run = 0.0;
  int64_t last = cand[0].idx;
  for (const auto& c : cand) {
    if (c.w > 0.0f) last = c.idx;
    run += c.w;
    if (run > target) return c.idx;
  }
  return last;
}

// Sum of w[0, n) in float lanes, accumulated in double.
PYLLMOPS_SIMD double lane_sum(const float* w, int64_t n) {
  double total = 0.0;
  for (int64_t b = 0; b < n; b += kChunk) {
    const int64_t e = std::min(n, b + kChunk);
    float acc[kLanes] = {};
    int64_t i = b;
    for (; i + kLanes <= e; i += kLanes)
      for (int j = 0; j < kLanes; ++j) acc[j] += w[i + j];
    for (; i < e; ++i) acc[0] += w[i];
    for (int j = 0; j < kLanes; ++j) total += acc[j];
  }
  return total;
}

// Appends every w[i] >= eps to `out`; a 16-wide chunk whose max is below eps costs one compare.
PYLLMOPS_SIMD void collect_at_least(const float* w, int64_t n, float eps, std::vector<float>& out) {
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    int hits = 0;
    for (int j = 0; j < kLanes; ++j) hits += w[i + j] >= eps;
    if (hits == 0) continue;
    for (int j = 0; j < kLanes; ++j)
      if (w[i + j] >= eps) out.push_back(w[i + j]);
  }
  for (; i < n; ++i)
    if (w[i] >= eps) out.push_back(w[i]);
}

// The top-p cut-off (smallest kept w) for weights with total z. Weights below
// eps = (1 - p) * z / n can never be kept (all of them together hold less than (1 - p) * z), so
// only the others are looked at: a mass histogram by their top 12 bits finds the bucket where
// the descending mass reaches p * z, and only that bucket is sorted.
float top_p_threshold(const float* w, int64_t n, float p, double z, Scratch& s) {
  const double target = double(p) * z;
  auto& big = s.bucket;
  big.clear();
  collect_at_least(w, n, float((1.0 - double(p)) * z / double(n) * 0.5), big);  // half: rounding margin
  double hist[kBuckets] = {};
  for (const float v : big) hist[bits_of(v) >> kBucketShift] += v;
  double above = 0.0;
  int b = kBuckets - 1;
  for (; b >= 0; --b) {
    if (above + hist[b] >= target) break;
    above += hist[b];
  }
  if (b < 0) return 0.0f;  // rounding kept p * z out of reach: keep everything
  // Move the crossing bucket's values to the front, sort them, walk.
  const auto mid = std::partition(big.begin(), big.end(), [b](float v) { return (bits_of(v) >> kBucketShift) == uint32_t(b); });
  std::sort(big.begin(), mid, [](float x, float y) { return x > y; });
  return top_p_walk(big.data(), size_t(mid - big.begin()), above, target);
}

// The k-th largest of x[0, n) (k in [1, n]); -inf for k = 0 (no top-k).
float kth_largest(const float* x, int64_t n, int64_t k, std::vector<float>& tmp) {
  if (k <= 0) return kNegInf;
  tmp.assign(x, x + n);
  std::nth_element(tmp.begin(), tmp.begin() + (k - 1), tmp.end(), [](float a, float b) { return a > b; });
  return tmp[k - 1];
}

int64_t draw_full(const float* x, int64_t n, float t, int64_t k, float p, float q, double u, float* probs,
                  Scratch& s) {
  const MaxScan ms = scan_max(x, n);
  if (ms.bad) return kBadValue;
  if (ms.max == kNegInf) return kAllNegInf;
  const float kth = kth_largest(x, n, k, s.bucket);
  s.w.resize(n);
  float* w = s.w.data();
  weights(x, w, n, ms.max, t, kth);
  const float tau_p = p < 1.0f ? top_p_threshold(w, n, p, lane_sum(w, n), s) : 0.0f;
  const float tau = std::max(tau_p, q);
  const int64_t chunks = (n + kChunk - 1) / kChunk;
  s.sums.resize(chunks);
  chunk_sums(w, n, tau, s.sums.data());
  double total = 0.0;
  for (int64_t c = 0; c < chunks; ++c) total += s.sums[c];
  if (probs) write_probs(w, n, tau, total, probs);
  const double target = u * total;
  double run = 0.0;
  for (int64_t c = 0; c < chunks; ++c) {
    if (run + s.sums[c] > target) {
      double inner = run;
      for (int64_t i = c * kChunk, e = std::min(n, i + kChunk); i < e; ++i) {
        if (w[i] >= tau) inner += w[i];
        if (inner > target) return i;
      }
    }
    run += s.sums[c];
  }
  for (int64_t i = n - 1; i > 0; --i)  // rounding: the last kept token with weight
    if (w[i] >= tau && w[i] > 0.0f) return i;
  return 0;
}

int64_t draw_greedy(const float* x, int64_t n, float* probs) {
  const MaxScan ms = scan_max(x, n);
  if (ms.bad) return kBadValue;
  if (ms.max == kNegInf) return kAllNegInf;
  int64_t i = 0;
  while (x[i] != ms.max) ++i;
  if (probs) {
    std::fill(probs, probs + n, 0.0f);
    probs[i] = 1.0f;
  }
  return i;
}

// Scratch outlives a call: a fresh 0.5 MB buffer per row block would page-fault on every call.
class ScratchPool {
 public:
  std::unique_ptr<Scratch> get() {
    std::lock_guard<std::mutex> lock(mu_);
    if (free_.empty()) return std::make_unique<Scratch>();
    auto s = std::move(free_.back());
    free_.pop_back();
    return s;
  }
  void put(std::unique_ptr<Scratch> s) {
    std::lock_guard<std::mutex> lock(mu_);
    free_.push_back(std::move(s));
  }

 private:
  std::mutex mu_;
  std::vector<std::unique_ptr<Scratch>> free_;
};

ScratchPool& scratch_pool() {
  static ScratchPool pool;
  return pool;
}

// Parameter ranges (the Python front door checks Python scalars; tensors are checked here).
int64_t check_params(float t, float p, float q) {
  if (!(t >= 0.0f && t <= kFloatMax)) return kBadTemperature;
  if (!(p > 0.0f && p <= 1.0f)) return kBadTopP;
  if (!(q >= 0.0f && q <= 1.0f)) return kBadMinP;
  return 0;
}

}  // namespace

void sample_rows(const void* logits, LogitsType dtype, int64_t B, int64_t V, int64_t ld,
                 const SampleParams& prm, int64_t* ids, float* probs, int threads) {
  parallel_for(B, threads, 1, [&](int64_t begin, int64_t end) {
    std::unique_ptr<Scratch> scratch = scratch_pool().get();
    Scratch& s = *scratch;
    for (int64_t r = begin; r < end; ++r) {
      const float* x;
      if (dtype == LogitsType::F32) {
        x = static_cast<const float*>(logits) + r * ld;
      } else {
        s.row.resize(V);
        convert_row(static_cast<const uint16_t*>(logits) + r * ld, s.row.data(), V, dtype == LogitsType::BF16);
        x = s.row.data();
      }
      float* out = probs ? probs + r * V : nullptr;
      const float t = prm.temperature[r];
      const int64_t k = prm.top_k[r];
      const double u = row_uniform(prm.seed[r], prm.offset[r]);
      if (const int64_t bad = check_params(t, prm.top_p[r], prm.min_p[r]))
        ids[r] = bad;
      else if (t == 0.0f)
        ids[r] = draw_greedy(x, V, out);
      else if (k > 0 && k <= std::max<int64_t>(64, V / 32) && k < V)  // small k: work on the candidates
        ids[r] = draw_top_k(x, V, t, k, prm.top_p[r], prm.min_p[r], u, out, s);
      else  // no top-k, or a k so large that a threshold on the whole row is cheaper
        ids[r] = draw_full(x, V, t, k > 0 && k < V ? k : 0, prm.top_p[r], prm.min_p[r], u, out, s);
    }
    scratch_pool().put(std::move(scratch));
  });
}

}  // namespace pyllmops::cpu
