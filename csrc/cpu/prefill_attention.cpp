// Causal prefill attention (prefill_attention.h). A task is (sequence b, KV head, block of kTq
// query positions): the G = H / KV query heads' rows of those positions (position-major: row r is
// position q0 + r / G, head kv * G + r % G) against blocks of 4W keys up to the diagonal, so each
// K and V row is read once for the G heads. Per key block: S = Q K^T (K transposed once per
// (b, KV head): a micro-tile of R rows x 4 vectors of keys takes one load per W keys and one
// broadcast per row and d), the causal mask, the running max and sum per row (online softmax), and
// O += P V with R rows x D in registers. torch's CPU flash kernel ran this at ~38 GFLOP/s on one
// Zen 4 core (7.9 ms a SmolLM2 layer at 512 tokens); docs/decode.md has the comparison.
//
// The kernel is a template over the vector width W (GCC / clang vector types, no intrinsics),
// force-inlined into entry points compiled for AVX-512 (W = 16) and AVX2 + FMA (W = 8, 16
// registers: 3-row tiles, P V over 4 vectors of D at a time). Helpers take vectors by reference
// only (no vector passes a function boundary); loads and stores go through may_alias unaligned
// vector types (memcpy made GCC keep the 8-lane tiles on the stack: 17 ms instead of 4.7).
// PYLLMOPS_ATTENTION_ISA=avx2 runs the AVX2 build on an AVX-512 CPU (tests compare the two).
#include "cpu/prefill_attention.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <cstdlib>
#include <limits>
#include <vector>

#include "cpu/cpu_features.h"
#include "cpu/parallel.h"

namespace pyllmops::cpu {
namespace {

#define PA_INLINE __attribute__((always_inline)) inline

constexpr int64_t kTq = 16;  // query positions per task
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

template <int W>
struct Vec;
template <>
struct Vec<8> {
  typedef float F __attribute__((vector_size(32)));
  typedef int32_t I __attribute__((vector_size(32)));
};
template <>
struct Vec<16> {
  typedef float F __attribute__((vector_size(64)));
  typedef int32_t I __attribute__((vector_size(64)));
};

template <int W>
PA_INLINE void vload(typename Vec<W>::F& v, const float* p) {
  typedef float U __attribute__((vector_size(W * 4), aligned(4), may_alias));  // unaligned
  v = *reinterpret_cast<const U*>(p);
}
template <int W>
PA_INLINE void vstore(float* p, const typename Vec<W>::F& v) {
  typedef float U __attribute__((vector_size(W * 4), aligned(4), may_alias));
  *reinterpret_cast<U*>(p) = v;
}

// e^x for x <= 0 in place (Cephes expf: n = round(x log2 e), a degree-5 polynomial on the rest,
// 2^n into the exponent); 0 for x < -80 (and -inf: masked scores), which keeps every weight a
// normal float (e^-80 ~ 2^-115: far below a float32 sum that holds a weight of 1).
template <int W>
PA_INLINE void vexp_nonpos(typename Vec<W>::F& x) {
  using F = typename Vec<W>::F;
  using I = typename Vec<W>::I;
  const F lo = F{} - 80.0f;
  const I live = x > lo;
  x = (F)(((I)x & live) | ((I)lo & ~live));
  const F n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;  // round to nearest
  F r = x - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  F p = r * 1.9875691500e-4f + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * (r * r) + r + 1.0f;
  const I e = __builtin_convertvector(n, I) << 23;
  x = (F)(((I)p + e) & live);
}

template <int W>
PA_INLINE float hmax(const typename Vec<W>::F& v) {
  float m = v[0];
  for (int i = 1; i < W; ++i) m = std::max(m, v[i]);
  return m;
}
template <int W>
PA_INLINE float hsum(const typename Vec<W>::F& v) {
  float s = v[0];
  for (int i = 1; i < W; ++i) s += v[i];
  return s;
}

struct Args {
  const float *q, *k, *v;
  int64_t q_b, q_h, k_b, k_h, v_b, v_h, B, H, KV, T, D;
  float* out;
  const float* kt;  // K transposed per (b, KV head): [B * KV][D][tpad]
  int64_t tpad;
  const int64_t* first_bad_key;  // per (b, KV head): the first position with a non-finite k, or T
};

struct Scratch {
  std::vector<float> qs, o, s, m, l;
  std::vector<char> bad;  // rows whose q is not finite
};

// S[r][0, 4W) = Qs[r] . Kt[:, 0, 4W) for R rows (Qs row stride D, Kt row stride ldk).
template <int W, int R>
PA_INLINE void qk_tile(const float* qs, int64_t D, const float* kt, int64_t ldk, float* s, int64_t lds) {
  using F = typename Vec<W>::F;
  F acc[R][4] = {};
  for (int64_t d = 0; d < D; ++d) {
    F kv[4];
    for (int c = 0; c < 4; ++c) vload<W>(kv[c], kt + d * ldk + c * W);
    for (int r = 0; r < R; ++r) {
      const float x = qs[r * D + d];
      for (int c = 0; c < 4; ++c) acc[r][c] += kv[c] * x;
    }
  }
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < 4; ++c) vstore<W>(s + r * lds + c * W, acc[r][c]);
}

// O[r][0, NC W) += sum_j P[r][j] V[j] over j < nk, for R rows, NCP vectors of the D columns at a
// time (R x NCP accumulators in registers, one V vector live).
template <int W, int NC, int R, int NCP>
PA_INLINE void pv_tile(const float* p, int64_t ldp, int64_t nk, const float* v, int64_t D, float* o) {
  using F = typename Vec<W>::F;
  for (int c0 = 0; c0 < NC; c0 += NCP) {
    F acc[R][NCP];
    for (int r = 0; r < R; ++r)
      for (int c = 0; c < NCP; ++c) vload<W>(acc[r][c], o + r * D + (c0 + c) * W);
    for (int64_t j = 0; j < nk; ++j) {
      float x[R];
      for (int r = 0; r < R; ++r) x[r] = p[r * ldp + j];
      for (int c = 0; c < NCP; ++c) {
        F vv;
        vload<W>(vv, v + j * D + (c0 + c) * W);
        for (int r = 0; r < R; ++r) acc[r][c] += vv * x[r];
      }
    }
    for (int r = 0; r < R; ++r)
      for (int c = 0; c < NCP; ++c) vstore<W>(o + r * D + (c0 + c) * W, acc[r][c]);
  }
}

template <int W, int NC>
PA_INLINE void run_task(const Args& a, int64_t t, Scratch& sc) {
  using F = typename Vec<W>::F;
  constexpr int64_t D = NC * W, KT = 4 * W;
  // Rows per S micro-tile (R x 4 accumulators + 4 K vectors), rows per P V micro-tile (divides RQ)
  // and D's vectors per P V pass (RP x NCP accumulators + 1 + RP): 32 zmm or 16 ymm registers.
  constexpr int RQ = W == 16 ? 6 : 3;
  constexpr int RP = W == 16 ? (NC <= 4 ? 6 : 3) : 3;
  constexpr int NCP = W == 16 ? NC : 4;
  const int64_t G = a.H / a.KV, nqb = (a.T + kTq - 1) / kTq, heads = a.B * a.KV;
  const int64_t qb = nqb - 1 - t / heads, b = t % heads / a.KV, kv = t % a.KV;  // costliest first
  const int64_t q0 = qb * kTq, tq = std::min(kTq, a.T - q0), rows = G * tq;
  const int64_t rpad = (rows + RQ - 1) / RQ * RQ;
  sc.qs.assign(rpad * D, 0.f);
  sc.o.assign(rpad * D, 0.f);
  sc.s.resize(rpad * KT);
  sc.m.assign(rpad, kNegInf);
  sc.l.assign(rpad, 0.f);
  const float scale = 1.0f / std::sqrt(static_cast<float>(D));
  for (int64_t r = 0; r < rows; ++r) {
    const float* src = a.q + b * a.q_b + (kv * G + r % G) * a.q_h + (q0 + r / G) * D;
    for (int64_t d = 0; d < D; ++d) sc.qs[r * D + d] = src[d] * scale;
  }
  // Non-finite q or k: the masks below would drop a NaN score as a zero weight; torch's kernel
  // gives NaN rows, and so does this (a row's own q, or any key at or before its position).
  sc.bad.assign(rpad, 0);
  for (int64_t r = 0; r < rows; ++r) {
    int finite = 1;  // branch-free, so the loop vectorizes: false for NaN and +-inf
    for (int64_t d = 0; d < D; ++d) finite &= std::fabs(sc.qs[r * D + d]) <= std::numeric_limits<float>::max();
    sc.bad[r] = !finite;
  }
  const int64_t first_bad_key = a.first_bad_key[b * a.KV + kv];
  const float* kt = a.kt + (b * a.KV + kv) * D * a.tpad;
  const float* vb = a.v + b * a.v_b + kv * a.v_h;
  const int64_t last = q0 + tq - 1;  // the last position of the task's rows
  for (int64_t k0 = 0; k0 <= last; k0 += KT) {
    const int64_t nk = std::min(KT, a.T - k0);
    for (int64_t r = 0; r < rpad; r += RQ) qk_tile<W, RQ>(sc.qs.data() + r * D, D, kt + k0, a.tpad, sc.s.data() + r * KT, KT);
    for (int64_t r = 0; r < rpad; ++r) {
      float* s = sc.s.data() + r * KT;
      const int64_t pos = r < rows ? q0 + r / G : last;
      const int64_t valid = std::min(nk, pos - k0 + 1);  // keys k0 .. pos of this block
      if (valid <= 0) {
        std::fill_n(s, KT, 0.f);
        continue;
      }
      std::fill(s + valid, s + KT, kNegInf);
      F x[4];
      for (int c = 0; c < 4; ++c) vload<W>(x[c], s + c * W);
      F mx = x[0];
      for (int c = 1; c < 4; ++c) {
        const auto gt = x[c] > mx;
        mx = (F)(((typename Vec<W>::I)x[c] & gt) | ((typename Vec<W>::I)mx & ~gt));
      }
      const float m_old = sc.m[r], m_new = std::max(m_old, hmax<W>(mx));
      F sum = {};
      for (int c = 0; c < 4; ++c) {
        x[c] -= m_new;
        vexp_nonpos<W>(x[c]);
        sum += x[c];
        vstore<W>(s + c * W, x[c]);
      }
      const float corr = m_old == kNegInf ? 0.f : std::exp(m_old - m_new);
      sc.l[r] = sc.l[r] * corr + hsum<W>(sum);
      sc.m[r] = m_new;
      if (corr != 1.f)
        for (int64_t d = 0; d < D; ++d) sc.o[r * D + d] *= corr;
    }
    for (int64_t r = 0; r < rpad; r += RP)
      pv_tile<W, NC, RP, NCP>(sc.s.data() + r * KT, KT, nk, vb + k0 * D, D, sc.o.data() + r * D);
  }
  for (int64_t r = 0; r < rows; ++r) {
    const bool nan = sc.bad[r] || q0 + r / G >= first_bad_key;
    const float inv = nan ? std::numeric_limits<float>::quiet_NaN() : 1.0f / sc.l[r];
    float* dst = a.out + ((b * a.T + q0 + r / G) * a.H + kv * G + r % G) * D;
    for (int64_t d = 0; d < D; ++d) dst[d] = sc.o[r * D + d] * inv;
  }
}

#define PA_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,fma")))
PA_AVX512 void task_avx512_64(const Args& a, int64_t t, Scratch& s) { run_task<16, 4>(a, t, s); }
PA_AVX512 void task_avx512_128(const Args& a, int64_t t, Scratch& s) { run_task<16, 8>(a, t, s); }
#define PA_AVX2 __attribute__((target("avx2,fma")))
PA_AVX2 void task_avx2_64(const Args& a, int64_t t, Scratch& s) { run_task<8, 8>(a, t, s); }
PA_AVX2 void task_avx2_128(const Args& a, int64_t t, Scratch& s) { run_task<8, 16>(a, t, s); }

// AVX-512 where the CPU has it and PYLLMOPS_ATTENTION_ISA is not "avx2"; AVX2 + FMA; else none.
enum class Isa { kNone, kAvx2, kAvx512 };
Isa attention_isa() {
  const char* cap = std::getenv("PYLLMOPS_ATTENTION_ISA");
  if (has_avx512_bw_vl() && !(cap && std::strcmp(cap, "avx2") == 0)) return Isa::kAvx512;
  return has_avx2_fma() ? Isa::kAvx2 : Isa::kNone;
}

}  // namespace

bool causal_attention_supported(int64_t D) {
  return (D == 64 || D == 128) && attention_isa() != Isa::kNone;
}

void causal_attention(const float* q, int64_t q_b, int64_t q_h, const float* k, int64_t k_b, int64_t k_h,
                      const float* v, int64_t v_b, int64_t v_h, int64_t B, int64_t H, int64_t KV, int64_t T,
                      int64_t D, float* out, int threads) {
  if (!causal_attention_supported(D) || KV <= 0 || H % KV != 0 || B <= 0 || T <= 0) return;
  const int64_t tpad = (T + 63) / 64 * 64;  // whole key blocks of 4 x 16
  std::vector<float> kt(B * KV * D * tpad, 0.f);
  std::vector<int64_t> first_bad(B * KV, T);
  parallel_tasks(B * KV, threads, [&](int64_t bk) {  // K^T per (b, KV head), zero past T
    const float* src = k + bk / KV * k_b + bk % KV * k_h;
    float* dst = kt.data() + bk * D * tpad;
    for (int64_t t = 0; t < T; ++t) {
      bool finite = true;
      for (int64_t d = 0; d < D; ++d) finite &= std::isfinite(dst[d * tpad + t] = src[t * D + d]);
      if (!finite && first_bad[bk] == T) first_bad[bk] = t;
    }
  });
  const Args a{q, k, v, q_b, q_h, k_b, k_h, v_b, v_h, B, H, KV, T, D, out, kt.data(), tpad, first_bad.data()};
  auto* task = attention_isa() == Isa::kAvx512 ? (D == 64 ? task_avx512_64 : task_avx512_128)
                                               : (D == 64 ? task_avx2_64 : task_avx2_128);
  thread_local Scratch scratch;
  parallel_tasks(B * KV * ((T + kTq - 1) / kTq), threads, [&](int64_t t) { task(a, t, scratch); });
}

}  // namespace pyllmops::cpu
