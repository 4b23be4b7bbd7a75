// The decode step of csrc/cpu/decode.h. Per layer and step, the Python modules run ~30 torch ops
// and 7 projection calls, each with its dispatcher and interpreter cost; here the step is one call
// and the small ops are loops over a few thousand floats. The arithmetic follows the modules
// (pyllmops/models/llama.py): RMSNorm x * rsqrt(mean(x^2) + eps) * w, RoPE x * cos + rotate_half(x)
// * sin, softmax(q k^T / sqrt(D)) v over the row's unmasked slots, silu(gate) * up, all float32.
// The AVX2 paths (8 lanes, FMA; an AVX-512 CPU runs them too) and the scalar ones compute the same
// values up to float rounding and the exp approximation (a Cephes polynomial, ~2 ulp).
#include "cpu/decode.h"

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <initializer_list>
#include <limits>
#include <utility>

#include "cpu/cpu_features.h"
#include "cpu/parallel.h"
#include "cpu/weight_only.h"

namespace pyllmops::cpu {
namespace {

// ---------------------------------------------------------------- AVX2 helpers
__attribute__((target("avx2,fma"))) inline float hsum8(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
}

// exp(x) for x in float range (Cephes expf: 2^n * e^r with |r| <= ln2 / 2, degree-6 polynomial);
// below -87.3 it returns ~1e-38 rather than 0, which no caller here can tell apart.
__attribute__((target("avx2,fma"))) inline __m256 exp8(__m256 x) {
  x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.3f)), _mm256_set1_ps(88.3f));
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(1.9875691500e-4f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
  p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.f)));
  const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}

// ---------------------------------------------------------------- cache element loads
// The KV cache holds float32 or IEEE float16 (uint16_t here; F16C converts 8 at a time).
__attribute__((target("avx2,fma,f16c"))) inline __m256 load8(const float* p) { return _mm256_loadu_ps(p); }
__attribute__((target("avx2,fma,f16c"))) inline __m256 load8(const uint16_t* p) {
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}
inline float to_f32(float x) { return x; }
__attribute__((target("f16c"))) inline float to_f32(uint16_t h) { return _cvtsh_ss(h); }

// n floats into the cache: as they are, or rounded to nearest even to float16.
void store_row(const float* x, int64_t n, float* out) { std::copy_n(x, n, out); }
__attribute__((target("avx2,fma,f16c"))) void store_row(const float* x, int64_t n, uint16_t* out) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out + i),
                     _mm256_cvtps_ph(_mm256_loadu_ps(x + i), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  for (; i < n; ++i) out[i] = _cvtss_sh(x[i], _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
}

// q . k for a cache row k; n % 8 == 0.
template <typename T>
__attribute__((target("avx2,fma,f16c"))) float dot_row_avx2(const float* q, const T* k, int64_t n) {
  __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(q + i), load8(k + i), acc0);
    acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(q + i + 8), load8(k + i + 8), acc1);
  }
  if (i < n) acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(q + i), load8(k + i), acc0);
  return hsum8(_mm256_add_ps(acc0, acc1));
}

template <typename T>
float dot_row_scalar(const float* q, const T* k, int64_t n) {
  float acc = 0.f;
  for (int64_t i = 0; i < n; ++i) acc += q[i] * to_f32(k[i]);
  return acc;
}

// Cache rows prefetched ahead (past the end: a prefetch, no fault): kAhead rows on into L1, and
// kFarAhead rows on into L2. The cache streams from DRAM at long context; the far prefetch keeps
// more lines in flight than the L1 one and the hardware prefetcher (Zen 4, 2,000 cached tokens:
// 1.25x / 1.17x a step at 1 / 2 threads, 32-128 rows alike; B = 8 at 512 tokens 1.12x; 64
// tokens unchanged).
constexpr int64_t kAhead = 8;
constexpr int64_t kFarAhead = 64;

// out[g] [D] = sum_i p[g][i] v[i] for the G heads (p: [G, S], v: [S, D], D % 8 == 0): per 3 heads
// and 32 channels, 12 accumulators in registers over all S rows, so each value of v is loaded
// once per 3 heads (one pass over v for G <= 3) and nothing is stored per row.
template <int GT, int DV, typename T>
__attribute__((target("avx2,fma,f16c"))) inline void pv_tile_avx2(const float* p, int64_t S, int64_t D, const T* v,
                                                                   float* out, int64_t ostride) {
  __m256 acc[GT][DV];
  for (int g = 0; g < GT; ++g)
    for (int d = 0; d < DV; ++d) acc[g][d] = _mm256_setzero_ps();
  for (int64_t i = 0; i < S; ++i) {
    for (int64_t b = 0; b < static_cast<int64_t>(DV * 8 * sizeof(T)); b += 64) {
      _mm_prefetch(reinterpret_cast<const char*>(v + (i + kAhead) * D) + b, _MM_HINT_T0);
      _mm_prefetch(reinterpret_cast<const char*>(v + (i + kFarAhead) * D) + b, _MM_HINT_T1);
    }
    __m256 vv[DV];
    for (int d = 0; d < DV; ++d) vv[d] = load8(v + i * D + 8 * d);
    for (int g = 0; g < GT; ++g) {
      const __m256 pg = _mm256_broadcast_ss(p + g * S + i);
      for (int d = 0; d < DV; ++d) acc[g][d] = _mm256_fmadd_ps(pg, vv[d], acc[g][d]);
    }
  }
  for (int g = 0; g < GT; ++g)
    for (int d = 0; d < DV; ++d) _mm256_storeu_ps(out + g * ostride + 8 * d, acc[g][d]);
}

template <int GT, typename T>
__attribute__((target("avx2,fma,f16c"))) void pv_heads_avx2(const float* p, int64_t S, int64_t D, const T* v,
                                                             float* out, int64_t ostride) {
  int64_t d = 0;
  for (; d + 32 <= D; d += 32) pv_tile_avx2<GT, 4>(p, S, D, v + d, out + d, ostride);
  for (; d < D; d += 8) pv_tile_avx2<GT, 1>(p, S, D, v + d, out + d, ostride);
}

// out + g * ostride: head g's [D].
template <typename T>
__attribute__((target("avx2,fma,f16c"))) void pv_avx2(const float* p, int64_t S, int64_t G, int64_t D, const T* v,
                                                       float* out, int64_t ostride) {
  int64_t g = 0;
  for (; g + 3 <= G; g += 3) pv_heads_avx2<3>(p + g * S, S, D, v, out + g * ostride, ostride);
  if (G - g == 2) pv_heads_avx2<2>(p + g * S, S, D, v, out + g * ostride, ostride);
  if (G - g == 1) pv_heads_avx2<1>(p + g * S, S, D, v, out + g * ostride, ostride);
}

// x[i] = exp(x[i] - shift), returns the sum; any n.
__attribute__((target("avx2,fma"))) float exp_sum_avx2(float* x, int64_t n, float shift) {
  const __m256 sv = _mm256_set1_ps(shift);
  __m256 acc = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 e = exp8(_mm256_sub_ps(_mm256_loadu_ps(x + i), sv));
    _mm256_storeu_ps(x + i, e);
    acc = _mm256_add_ps(acc, e);
  }
  float total = hsum8(acc);
  for (; i < n; ++i) total += (x[i] = std::exp(x[i] - shift));
  return total;
}

// gate[i] = silu(gate[i]) * up[i] = gate / (1 + exp(-gate)) * up; any n.
__attribute__((target("avx2,fma"))) void silu_mul_avx2(float* gate, const float* up, int64_t n) {
  const __m256 one = _mm256_set1_ps(1.f);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 g = _mm256_loadu_ps(gate + i);
    const __m256 s = _mm256_div_ps(g, _mm256_add_ps(one, exp8(_mm256_sub_ps(_mm256_setzero_ps(), g))));
    _mm256_storeu_ps(gate + i, _mm256_mul_ps(s, _mm256_loadu_ps(up + i)));
  }
  for (; i < n; ++i) gate[i] = gate[i] / (1.f + std::exp(-gate[i])) * up[i];
}

// ---------------------------------------------------------------- float32 projection
// NT rows of W at a time against MT rows of x, two accumulators each (k in steps of 16).
template <int MT, int NT>
__attribute__((target("avx2,fma"))) inline void f32_tile_avx2(const float* x, int64_t K, const float* w, float* out,
                                                               int64_t N, int64_t n) {
  __m256 even[MT][NT], odd[MT][NT];
  for (int m = 0; m < MT; ++m)
    for (int j = 0; j < NT; ++j) even[m][j] = odd[m][j] = _mm256_setzero_ps();
  for (int64_t k = 0; k < K; k += 16) {  // K % 16 == 0
    for (int j = 0; j < NT; ++j) {
      const __m256 w0 = _mm256_loadu_ps(w + (n + j) * K + k), w1 = _mm256_loadu_ps(w + (n + j) * K + k + 8);
      for (int m = 0; m < MT; ++m) {
        even[m][j] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(x + m * K + k), even[m][j]);
        odd[m][j] = _mm256_fmadd_ps(w1, _mm256_loadu_ps(x + m * K + k + 8), odd[m][j]);
      }
    }
  }
  for (int m = 0; m < MT; ++m)
    for (int j = 0; j < NT; ++j) out[m * N + n + j] = hsum8(_mm256_add_ps(even[m][j], odd[m][j]));
}

template <int MT>
__attribute__((target("avx2,fma"))) void f32_rows_avx2(const float* x, int64_t K, const float* w, float* out,
                                                        int64_t N, int64_t n0, int64_t n1) {
  constexpr int NT = MT == 1 ? 4 : MT == 2 ? 2 : 1;
  int64_t n = n0;
  for (; n + NT <= n1; n += NT) f32_tile_avx2<MT, NT>(x, K, w, out, N, n);
  for (; n < n1; ++n) f32_tile_avx2<MT, 1>(x, K, w, out, N, n);
}

// x [M, K] as l reads it: with an act-order l (its weight stored with the input channels in the
// order l.perm, as WeightOnlyLinear's x[:, perm]) x's columns so permuted into xp, else x itself.
const float* in_order(const DecodeLinear& l, const float* x, int64_t M, std::vector<float>& xp) {
  if (!l.perm) return x;
  xp.resize(static_cast<size_t>(M * l.K));
  for (int64_t m = 0; m < M; ++m)
    for (int64_t k = 0; k < l.K; ++k) xp[m * l.K + k] = x[m * l.K + l.perm[k]];
  return xp.data();
}

bool same_perm(const DecodeLinear& a, const DecodeLinear& b) {
  if (a.perm == b.perm) return true;
  return a.perm && b.perm && a.K == b.K && std::equal(a.perm, a.perm + a.K, b.perm);
}

void linear(const DecodeLinear& l, const float* x, int64_t M, float* out, int threads) {
  std::vector<float> xp;
  x = in_order(l, x, M, xp);
  switch (l.kind) {
    case DecodeLinear::kInt4:
      (l.bf16_x ? w4a16_gemm_bf16 : w4a16_gemm)(x, M, l.K, static_cast<const uint8_t*>(l.weight), l.scales, l.zeros,
                                                l.N, l.group_size, out, threads);
      return;
    case DecodeLinear::kInt8:
      (l.bf16_x ? w8a16_gemm_bf16 : w8a16_gemm)(x, M, l.K, static_cast<const int8_t*>(l.weight), l.scales, l.N, out,
                                                threads);
      return;
    case DecodeLinear::kFloat32:
      f32_gemm(x, M, l.K, static_cast<const float*>(l.weight), l.N, out, threads);
      return;
  }
}

// Several projections of the same x: int4 ones of one group size (and one act-order permutation:
// q, k and v share their input, so GPTQ orders their channels alike) in one w4a16_gemm_multi call
// (x split into digits once, one parallel loop for q/k/v or gate/up), the others one by one.
void linears(std::initializer_list<std::pair<const DecodeLinear*, float*>> ls, const float* x, int64_t M,
             int threads) {
  const DecodeLinear& first = *ls.begin()->first;
  bool merge = first.kind == DecodeLinear::kInt4;
  for (const auto& [l, out] : ls)
    merge = merge && l->kind == DecodeLinear::kInt4 && l->group_size == first.group_size &&
            l->bf16_x == first.bf16_x && same_perm(*l, first);
  if (!merge) {
    for (const auto& [l, out] : ls) linear(*l, x, M, out, threads);
    return;
  }
  std::vector<float> xp;
  x = in_order(first, x, M, xp);
  std::vector<Int4Gemm> gemms;
  for (const auto& [l, out] : ls)
    gemms.push_back({static_cast<const uint8_t*>(l->weight), l->scales, l->zeros, l->N, out});
  (first.bf16_x ? w4a16_gemm_bf16_multi : w4a16_gemm_multi)(x, M, first.K, first.group_size, gemms.data(),
                                                             static_cast<int>(gemms.size()), threads);
}

// ---------------------------------------------------------------- small ops
void rms_norm(const float* x, const float* w, int64_t dim, float eps, float* out) {
  double ss = 0.0;
  for (int64_t i = 0; i < dim; ++i) ss += static_cast<double>(x[i]) * x[i];
  const float r = static_cast<float>(1.0 / std::sqrt(ss / static_cast<double>(dim) + eps));
  for (int64_t i = 0; i < dim; ++i) out[i] = x[i] * r * w[i];
}

// heads x [heads, D] rotated in place: out[i] = x[i] cos[i] - x[i + D/2] sin[i] (i < D/2) and
// x[i] cos[i] + x[i - D/2] sin[i] (i >= D/2).
void rope(float* x, int64_t heads, int64_t D, const float* cos, const float* sin) {
  const int64_t half = D / 2;
  for (int64_t h = 0; h < heads; ++h) {
    float* v = x + h * D;
    for (int64_t i = 0; i < half; ++i) {
      const float a = v[i], b = v[i + half];
      v[i] = a * cos[i] - b * sin[i];
      v[i + half] = b * cos[i + half] + a * sin[i + half];
    }
  }
}

// ---------------------------------------------------------------- attention
// One KV head's G query heads against cache slots [s0, s1) of its k, v [capacity, D]: the cache
// rows are read once for all G heads (a task per query head read them G times; past ~2k cached
// tokens they come from memory, not L2: 3x the traffic at SmolLM2's G = 3). The result is the
// chunk's softmax state per head, for merge_chunks: top[g * stride] = max score (-inf: no unmasked
// slot), total[g * stride] = sum exp(score - top), out + g * stride * D: sum exp(score - top) v
// (unnormalized). scratch: G * (s1 - s0) + G floats (the scores, then the running max per head).
struct ChunkState {
  float* top;
  float* total;
  float* out;
  int64_t stride;
};

template <typename T>
void attend_chunk(const float* q, int64_t G, int64_t D, const T* k, const T* v, int64_t s0, int64_t s1,
                  const bool* mask, float* scratch, ChunkState st) {
  const bool simd = has_avx2_fma() && D % 8 == 0;
  const float scale = 1.0f / std::sqrt(static_cast<float>(D));
  const float neg_inf = -std::numeric_limits<float>::infinity();
  const int64_t S = s1 - s0;
  float* scores = scratch;
  float* tops = scratch + G * S;  // the running max per head
  std::fill_n(tops, G, neg_inf);
  for (int64_t s = s0; s < s1; ++s) {  // q k^T, each cache row once for the G heads
    const bool skip = mask && !mask[s];
    const T* ks = k + s * D;
    for (int64_t b = 0; b < static_cast<int64_t>(D * sizeof(T)); b += 64) {
      _mm_prefetch(reinterpret_cast<const char*>(ks + kAhead * D) + b, _MM_HINT_T0);
      _mm_prefetch(reinterpret_cast<const char*>(ks + kFarAhead * D) + b, _MM_HINT_T1);
    }
    for (int64_t g = 0; g < G; ++g) {
      const float x =
          skip ? neg_inf : (simd ? dot_row_avx2(q + g * D, ks, D) : dot_row_scalar(q + g * D, ks, D)) * scale;
      scores[g * S + s - s0] = x;
      tops[g] = std::max(tops[g], x);
    }
  }
  for (int64_t g = 0; g < G; ++g) {
    float* sg = scores + g * S;
    const float top = tops[g];
    st.top[g * st.stride] = top;
    if (top == neg_inf) {  // every slot masked (left padding): no mass, no output
      st.total[g * st.stride] = 0.f;
      std::fill_n(st.out + g * st.stride * D, D, 0.f);
      continue;
    }
    float total = 0.f;
    if (simd) {
      total = exp_sum_avx2(sg, S, top);
    } else {
      for (int64_t i = 0; i < S; ++i) total += (sg[i] = std::exp(sg[i] - top));
    }
    if (mask) {  // masked slots: exp(-inf) is 0 exactly, the polynomial's only tiny
      total = 0.f;
      for (int64_t i = 0; i < S; ++i) total += (sg[i] = mask[s0 + i] ? sg[i] : 0.f);
    }
    st.total[g * st.stride] = total;
  }
  if (simd) {
    pv_avx2(scores, S, G, D, v + s0 * D, st.out, st.stride * D);
    return;
  }
  for (int64_t g = 0; g < G; ++g) {
    float* og = st.out + g * st.stride * D;
    std::fill(og, og + D, 0.f);
    for (int64_t i = 0; i < S; ++i)
      for (int64_t d = 0; d < D; ++d) og[d] += scores[g * S + i] * to_f32(v[(s0 + i) * D + d]);
  }
}

// The chunks' states of one query head (top, total [chunks], outs [chunks, D]) merged: out [D] =
// sum_c e^(top_c - top) outs_c / sum_c e^(top_c - top) total_c, top the largest top_c (a chunk
// with no unmasked slot adds nothing; the chunk holding the new token always has one).
void merge_chunks(const float* top, const float* total, const float* outs, int64_t chunks, int64_t D, float* out) {
  float best = -std::numeric_limits<float>::infinity();
  for (int64_t c = 0; c < chunks; ++c) best = std::max(best, top[c]);
  float sum = 0.f;
  std::fill_n(out, D, 0.f);
  for (int64_t c = 0; c < chunks; ++c) {
    if (top[c] == -std::numeric_limits<float>::infinity()) continue;
    const float w = std::exp(top[c] - best);
    sum += w * total[c];
    for (int64_t d = 0; d < D; ++d) out[d] += w * outs[c * D + d];
  }
  const float inv = 1.f / sum;
  for (int64_t d = 0; d < D; ++d) out[d] *= inv;
}

void add_into(float* x, const float* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) x[i] += y[i];
}

}  // namespace

void f32_gemm(const float* x, int64_t M, int64_t K, const float* w, int64_t N, float* out, int threads) {
  const bool simd = has_avx2_fma() && K % 16 == 0;
  parallel_for(N, threads, 64, [&](int64_t n0, int64_t n1) {
    if (!simd) {
      for (int64_t n = n0; n < n1; ++n)
        for (int64_t m = 0; m < M; ++m) out[m * N + n] = dot_row_scalar(x + m * K, w + n * K, K);
      return;
    }
    for (int64_t m0 = 0; m0 < M; m0 += 4) {
      switch (std::min<int64_t>(4, M - m0)) {
        case 1: f32_rows_avx2<1>(x + m0 * K, K, w, out + m0 * N, N, n0, n1); break;
        case 2: f32_rows_avx2<2>(x + m0 * K, K, w, out + m0 * N, N, n0, n1); break;
        case 3: f32_rows_avx2<3>(x + m0 * K, K, w, out + m0 * N, N, n0, n1); break;
        default: f32_rows_avx2<4>(x + m0 * K, K, w, out + m0 * N, N, n0, n1); break;
      }
    }
  });
}

void llama_decode_layers(const LlamaDims& d, const std::vector<DecodeLayer>& layers, const DecodeStep& step,
                         float* x, int threads) {
  const int64_t B = step.batch, D = d.head_dim, H = d.n_heads, KV = d.n_kv_heads, G = H / KV, S = step.slot + 1;
  std::vector<float> h(B * d.dim), q(B * H * D), k(B * KV * D), v(B * KV * D), attn(B * H * D), o(B * d.dim),
      gate(B * d.ffn_dim), up(B * d.ffn_dim);
  // attention: a task per (row, KV head, chunk of the cache), its G query heads together (one read
  // of the cache rows for all of them). A row's cache splits into chunks (merged afterwards, as
  // flash-decoding does) only when the rows times KV heads leave threads idle: SmolLM2's 3 KV heads
  // at B = 1 on 2 threads ran as 2 + 1. Chunks of >= 256 slots; tasks of >= ~32k multiply-adds
  // per parallel piece (thread wake-ups cost more than shorter ones).
  const int64_t want = (2 * static_cast<int64_t>(std::max(threads, 1)) + B * KV - 1) / (B * KV);
  const int64_t chunks = std::max<int64_t>(1, std::min<int64_t>(want, S / 256));
  const int64_t chunk = (S + chunks - 1) / chunks;
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(1, 2 * G * chunk * D));
  std::vector<float> top(B * H * chunks), total(B * H * chunks), outs(B * H * chunks * D);
  // fn(k, v) on layer l's cache, typed as its elements (float, or float16 bits)
  const auto with_cache = [&](size_t l, auto&& fn) {
    if (step.kv_half)
      fn(static_cast<uint16_t*>(step.k_cache[l]), static_cast<uint16_t*>(step.v_cache[l]));
    else
      fn(static_cast<float*>(step.k_cache[l]), static_cast<float*>(step.v_cache[l]));
  };
  for (size_t l = 0; l < layers.size(); ++l) {
    const DecodeLayer& L = layers[l];
    for (int64_t b = 0; b < B; ++b) rms_norm(x + b * d.dim, L.input_norm, d.dim, d.eps, h.data() + b * d.dim);
    linears({{&L.q, q.data()}, {&L.k, k.data()}, {&L.v, v.data()}}, h.data(), B, threads);
    for (int64_t b = 0; b < B; ++b) {
      const float* cos = step.rope_cos + step.positions[b] * D;
      const float* sin = step.rope_sin + step.positions[b] * D;
      rope(q.data() + b * H * D, H, D, cos, sin);
      rope(k.data() + b * KV * D, KV, D, cos, sin);
      for (int64_t kh = 0; kh < KV; ++kh) {
        const int64_t at = ((b * KV + kh) * step.capacity + step.slot) * D;
        with_cache(l, [&](auto* kc, auto* vc) {
          store_row(k.data() + (b * KV + kh) * D, D, kc + at);
          store_row(v.data() + (b * KV + kh) * D, D, vc + at);
        });
      }
    }
    // state of (row b, query head h, chunk c) at index (b * H + h) * chunks + c
    parallel_for(B * KV * chunks, threads, grain, [&](int64_t t0, int64_t t1) {
      std::vector<float> scratch(G * chunk + G);
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t c = t % chunks, bk = t / chunks, b = bk / KV, base = bk * step.capacity * D;
        const int64_t at = (b * H + bk % KV * G) * chunks + c;  // (row b, head kh * G, chunk c); head + g: + g * chunks
        const float* qh = q.data() + (b * H + bk % KV * G) * D;
        const bool* mask = step.key_mask ? step.key_mask + b * step.capacity : nullptr;
        const int64_t s0 = c * chunk, s1 = std::min(S, (c + 1) * chunk);
        const ChunkState state{top.data() + at, total.data() + at, outs.data() + at * D, chunks};
        with_cache(l, [&](auto* kc, auto* vc) {
          attend_chunk(qh, G, D, kc + base, vc + base, s0, s1, mask, scratch.data(), state);
        });
      }
    });
    for (int64_t bh = 0; bh < B * H; ++bh)
      merge_chunks(top.data() + bh * chunks, total.data() + bh * chunks, outs.data() + bh * chunks * D, chunks, D,
                   attn.data() + bh * D);
    linear(L.o, attn.data(), B, o.data(), threads);
    add_into(x, o.data(), B * d.dim);
    for (int64_t b = 0; b < B; ++b) rms_norm(x + b * d.dim, L.post_norm, d.dim, d.eps, h.data() + b * d.dim);
    linears({{&L.gate, gate.data()}, {&L.up, up.data()}}, h.data(), B, threads);
    if (has_avx2_fma()) {
      silu_mul_avx2(gate.data(), up.data(), B * d.ffn_dim);
    } else {
      for (int64_t i = 0; i < B * d.ffn_dim; ++i) gate[i] = gate[i] / (1.f + std::exp(-gate[i])) * up[i];
    }
    linear(L.down, gate.data(), B, o.data(), threads);
    add_into(x, o.data(), B * d.dim);
  }
}

}  // namespace pyllmops::cpu
