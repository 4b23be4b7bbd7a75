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

// n % 8 == 0 for the AVX2 versions below (the caller checks).
__attribute__((target("avx2,fma"))) float dot_avx2(const float* a, const float* b, int64_t n) {
  __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc0);
    acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), acc1);
  }
  if (i < n) acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc0);
  return hsum8(_mm256_add_ps(acc0, acc1));
}

float dot_scalar(const float* a, const float* b, int64_t n) {
  float acc = 0.f;
  for (int64_t i = 0; i < n; ++i) acc += a[i] * b[i];
  return acc;
}

// out[i] += p * v[i]
__attribute__((target("avx2,fma"))) void axpy_avx2(float p, const float* v, float* out, int64_t n) {
  const __m256 pv = _mm256_set1_ps(p);
  for (int64_t i = 0; i < n; i += 8)
    _mm256_storeu_ps(out + i, _mm256_fmadd_ps(pv, _mm256_loadu_ps(v + i), _mm256_loadu_ps(out + i)));
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

void linear(const DecodeLinear& l, const float* x, int64_t M, float* out, int threads) {
  switch (l.kind) {
    case DecodeLinear::kInt4:
      w4a16_gemm(x, M, l.K, static_cast<const uint8_t*>(l.weight), l.scales, l.zeros, l.N, l.group_size, out, threads);
      return;
    case DecodeLinear::kInt8:
      w8a16_gemm(x, M, l.K, static_cast<const int8_t*>(l.weight), l.scales, l.N, out, threads);
      return;
    case DecodeLinear::kFloat32:
      f32_gemm(x, M, l.K, static_cast<const float*>(l.weight), l.N, out, threads);
      return;
  }
}

// Several projections of the same x: int4 ones of one group size in one w4a16_gemm_multi call (x
// split into digits once, one parallel loop for q/k/v or gate/up), the others one by one.
void linears(std::initializer_list<std::pair<const DecodeLinear*, float*>> ls, const float* x, int64_t M,
             int threads) {
  const DecodeLinear& first = *ls.begin()->first;
  bool merge = first.kind == DecodeLinear::kInt4;
  for (const auto& [l, out] : ls) merge = merge && l->kind == DecodeLinear::kInt4 && l->group_size == first.group_size;
  if (!merge) {
    for (const auto& [l, out] : ls) linear(*l, x, M, out, threads);
    return;
  }
  std::vector<Int4Gemm> gemms;
  for (const auto& [l, out] : ls)
    gemms.push_back({static_cast<const uint8_t*>(l->weight), l->scales, l->zeros, l->N, out});
  w4a16_gemm_multi(x, M, first.K, first.group_size, gemms.data(), static_cast<int>(gemms.size()), threads);
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

// The G query heads [G, D] sharing one KV head against its cache k, v [capacity, D], slots
// [0, S) where mask (nullptr: all) is true; out [G, D]. scores: S floats of scratch.
void attend(const float* q, int64_t G, int64_t D, const float* k, const float* v, int64_t S, const bool* mask,
            float* scores, float* out) {
  const bool simd = has_avx2_fma() && D % 8 == 0;
  const float scale = 1.0f / std::sqrt(static_cast<float>(D));
  const float neg_inf = -std::numeric_limits<float>::infinity();
  for (int64_t g = 0; g < G; ++g) {
    const float* qg = q + g * D;
    float top = neg_inf;
    for (int64_t s = 0; s < S; ++s) {
      scores[s] = mask && !mask[s] ? neg_inf : (simd ? dot_avx2(qg, k + s * D, D) : dot_scalar(qg, k + s * D, D)) * scale;
      top = std::max(top, scores[s]);
    }
    float total;
    if (simd) {
      total = exp_sum_avx2(scores, S, top);
    } else {
      total = 0.f;
      for (int64_t s = 0; s < S; ++s) total += (scores[s] = std::exp(scores[s] - top));
    }
    float* og = out + g * D;
    std::fill(og, og + D, 0.f);
    const float inv = 1.f / total;
    for (int64_t s = 0; s < S; ++s) {
      if (mask && !mask[s]) continue;  // exp(-inf) is 0 exactly; the polynomial's is only tiny
      const float p = scores[s] * inv;
      if (simd) {
        axpy_avx2(p, v + s * D, og, D);
      } else {
        for (int64_t i = 0; i < D; ++i) og[i] += p * v[s * D + i];
      }
    }
  }
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
        for (int64_t m = 0; m < M; ++m) out[m * N + n] = dot_scalar(x + m * K, w + n * K, K);
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
  // attention: a task per query head (the heads of a KV head share its cache rows, in L1 or L2),
  // at least ~16k multiply-adds each; per KV head and ~64k each, SmolLM2's 3 KV heads stayed on
  // one thread up to ~170 cached tokens while the other waited
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(1, S * D));
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
        std::copy_n(k.data() + (b * KV + kh) * D, D, step.k_cache[l] + at);
        std::copy_n(v.data() + (b * KV + kh) * D, D, step.v_cache[l] + at);
      }
    }
    parallel_for(B * H, threads, grain, [&](int64_t t0, int64_t t1) {
      std::vector<float> scores(S);
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t b = t / H, h = t % H, base = (b * KV + h / G) * step.capacity * D;
        attend(q.data() + (b * H + h) * D, 1, D, step.k_cache[l] + base, step.v_cache[l] + base, S,
               step.key_mask ? step.key_mask + b * step.capacity : nullptr, scores.data(),
               attn.data() + (b * H + h) * D);
      }
    });
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
