// Weight-only GEMM for batched decode with x rounded to bfloat16 (AVX512_BF16): the arithmetic of
// GPU W4A16 kernels (Marlin, vLLM), for WeightOnlyLinear.compute_dtype = torch.bfloat16.
//
// Why: the exact int4 kernel (vnni_digits) spends 6 vpdpbusd per 128 weights and row of x on
// x's three digits; at batch 1 that is hidden behind reading the weight, at batch 8 it is the
// step (13.5 cycles per 128 weights and row on Zen 4). vdpbf16ps multiplies 32 bf16 pairs per
// instruction at the FMA's rate, so with x in bf16 a block of 128 weights costs 4 of them per row
// plus one FMA for the group scale.
//
// int4: the weight stays exact. Per 128-channel block of a row, the 64 packed bytes read as 32
// 16-bit lanes hold channels 4t..4t+3 in their four nibbles; 3 shifts and 4 vpermw through a
// 32-entry table of bf16(q - z) (the 16 values twice, so that the bits above the nibble do not
// matter) give 4 vectors of exact weights, vector c lane t = channel 4t + c. x is rounded to bf16
// once per call and laid out the same way. Per row of x: 4 vdpbf16ps into a fresh accumulator,
// one FMA with the group's scale. Each product bf16(x) (q - z) is exact in float32; the sums are
// float32 (vdpbf16ps rounds to nearest even and treats denormals as zero).
//
// int8 (the LM head): per 32 weights, sign-extend, convert to float and pack to bf16 (exact for
// -128..127), one vdpbf16ps per row of x, the channel's scale applied once at the end.
#include <immintrin.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "cpu/int4_blocks.h"
#include "cpu/parallel.h"
#include "cpu/row_tiles.h"
#include "cpu/weight_only.h"

namespace pyllmops::cpu {
namespace {

constexpr int64_t kBlock = int4_blocks::kChannels;  // channels per block of a row (64 packed bytes)
constexpr int kMaxTile = 8;         // rows of x per decode of a weight block
constexpr int64_t kGrainN = 64;     // output rows per parallel chunk (at least)

#define PYLLMOPS_BF16_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16")))

// x [M, K] -> xp [B, M, 4, 32] bf16: block b, row m, vector c, lane t = x[m, 128 b + 4 t + c]
// rounded to nearest even (0 beyond K); block-major so that a tile's rows of x sit at constant
// offsets. Natural-order bf16 in 4 registers, then two word permutes per vector.
PYLLMOPS_BF16_TARGET void round_x_int4(const float* x, int64_t M, int64_t K, uint16_t* xp) {
  const int64_t B = int4_blocks::count(K);
  __m512i idx[4];
  alignas(64) uint16_t lanes[32];
  for (int c = 0; c < 4; ++c) {
    for (int t = 0; t < 32; ++t) lanes[t] = static_cast<uint16_t>(4 * (t % 16) + c);
    idx[c] = _mm512_load_si512(lanes);
  }
  for (int64_t m = 0; m < M; ++m) {
    for (int64_t b = 0; b < B; ++b) {
      const float* src = x + m * K + b * kBlock;
      const int64_t n = std::min<int64_t>(kBlock, K - b * kBlock);
      __m512i nat[4];  // channels 32 i .. 32 i + 31 of the block, bf16
      for (int i = 0; i < 4; ++i) {
        const int64_t lo = std::clamp<int64_t>(n - 32 * i, 0, 16), hi = std::clamp<int64_t>(n - 32 * i - 16, 0, 16);
        const __m512 a = _mm512_maskz_loadu_ps(static_cast<__mmask16>((1u << lo) - 1), src + 32 * i);
        const __m512 h = _mm512_maskz_loadu_ps(static_cast<__mmask16>((1u << hi) - 1), src + 32 * i + 16);
        nat[i] = reinterpret_cast<__m512i>(_mm512_cvtne2ps_pbh(h, a));
      }
      uint16_t* dst = xp + (b * M + m) * kBlock;
      for (int c = 0; c < 4; ++c) {
        const __m512i first = _mm512_permutex2var_epi16(nat[0], idx[c], nat[1]);
        const __m512i second = _mm512_permutex2var_epi16(nat[2], idx[c], nat[3]);
        _mm512_storeu_si512(dst + 32 * c, _mm512_mask_blend_epi16(0xFFFF0000u, first, second));
      }
    }
  }
}

// out[m] = the 16-lane sums of v[0..MT).
template <int MT>
PYLLMOPS_BF16_TARGET inline void reduce_rows(const __m512* v, float* sums) {
  if constexpr (MT == 8) {
    // pairs of 256-bit halves, then 128-bit quarters, then within each quarter: 8 sums in 21 ops
    __m512 h[4], q[2];
    for (int i = 0; i < 4; ++i)
      h[i] = _mm512_add_ps(_mm512_shuffle_f32x4(v[2 * i], v[2 * i + 1], 0x44),
                           _mm512_shuffle_f32x4(v[2 * i], v[2 * i + 1], 0xEE));
    for (int i = 0; i < 2; ++i)
      q[i] = _mm512_add_ps(_mm512_shuffle_f32x4(h[2 * i], h[2 * i + 1], 0x88),
                           _mm512_shuffle_f32x4(h[2 * i], h[2 * i + 1], 0xDD));
    // q[0] quarter k: 4 partial sums of v[k] (k < 4); q[1]: of v[4 + k]
    const __m512 t = _mm512_add_ps(_mm512_shuffle_ps(q[0], q[1], 0x88), _mm512_shuffle_ps(q[0], q[1], 0xDD));
    const __m512 u = _mm512_add_ps(_mm512_shuffle_ps(t, t, 0x88), _mm512_shuffle_ps(t, t, 0xDD));
    alignas(64) float lanes[16];
    _mm512_store_ps(lanes, u);  // quarter k: [v[k], v[4 + k], v[k], v[4 + k]]
    for (int k = 0; k < 4; ++k) {
      sums[k] = lanes[4 * k];
      sums[4 + k] = lanes[4 * k + 1];
    }
  } else {
    for (int m = 0; m < MT; ++m) sums[m] = _mm512_reduce_add_ps(v[m]);
  }
}

// bf16(i % 16 - z) for i = 0..31: exact for any uint8 z, so the same bits whatever rounding the
// conversion uses.
PYLLMOPS_BF16_TARGET inline __m512i zero_point_table(uint8_t z) {
  const __m512 iota = _mm512_setr_ps(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  const __m256i t = reinterpret_cast<__m256i>(_mm512_cvtneps_pbh(_mm512_sub_ps(iota, _mm512_set1_ps(z))));
  return _mm512_broadcast_i64x4(t);
}

// The tables of the zero points of 4-bit weights, built once per call; z > 15 (GPTQ's legacy
// stored zero + 1 reaches 16) builds its table in place.
struct ZeroPointTables {
  alignas(64) uint16_t t[16][32];
  PYLLMOPS_BF16_TARGET ZeroPointTables() {
    for (int z = 0; z < 16; ++z) _mm512_store_si512(t[z], zero_point_table(static_cast<uint8_t>(z)));
  }
  PYLLMOPS_BF16_TARGET __m512i operator()(uint8_t z) const {
    return z < 16 ? _mm512_load_si512(t[z]) : zero_point_table(z);
  }
};

struct Int4Args {
  const uint8_t* qw;
  const float* scales;
  const uint8_t* zeros;
  int64_t row_bytes, B, G;
  const int32_t* block_group;  // [B]
  const ZeroPointTables* tables;
  __mmask64 last_block;        // the bytes of a row's last block that exist
  bool half_tail;              // the last block holds at most 64 channels: 256-bit vectors for it
};

// 32 exact weights per vector: the 4 x 32 int4 of one block of a weight row (64 packed bytes at p,
// or the `tail` bytes of a short last block) as bf16(q - z), through the table of its zero point.
PYLLMOPS_BF16_TARGET inline void decode_block(const uint8_t* p, bool full, __mmask64 tail, const __m512i table,
                                              __m512bh (&w)[4]) {
  const __m512i v = full ? _mm512_loadu_si512(p) : _mm512_maskz_loadu_epi8(tail, p);
  w[0] = reinterpret_cast<__m512bh>(_mm512_permutexvar_epi16(v, table));
  w[1] = reinterpret_cast<__m512bh>(_mm512_permutexvar_epi16(_mm512_srli_epi16(v, 4), table));
  w[2] = reinterpret_cast<__m512bh>(_mm512_permutexvar_epi16(_mm512_srli_epi16(v, 8), table));
  w[3] = reinterpret_cast<__m512bh>(_mm512_permutexvar_epi16(_mm512_srli_epi16(v, 12), table));
}

// Output rows n..n+NT-1 for rows m0..m0+MT-1 of x: each load of x serves NT weight rows.
template <int MT, int NT>
PYLLMOPS_BF16_TARGET void int4_tile(const uint16_t* xp, int64_t M, int64_t m0, const Int4Args& w, int64_t n,
                                    float* out, int64_t N) {
  const int64_t B = w.B;
  __m512 total[NT][MT];
  for (int j = 0; j < NT; ++j)
    for (int m = 0; m < MT; ++m) total[j][m] = _mm512_setzero_ps();
  const int64_t full_blocks = w.half_tail ? B - 1 : B;
  for (int64_t b = 0; b < full_blocks; ++b) {
    const int64_t g = w.block_group[b];
    __m512bh wv[NT][4];
    __m512 s[NT];
    for (int j = 0; j < NT; ++j) {
      const uint8_t* p = w.qw + (n + j) * w.row_bytes + b * 64;
      _mm_prefetch(reinterpret_cast<const char*>(p + 2 * NT * w.row_bytes), _MM_HINT_T0);
      decode_block(p, b + 1 < B, w.last_block, (*w.tables)(w.zeros[(n + j) * w.G + g]), wv[j]);
      s[j] = _mm512_set1_ps(w.scales[(n + j) * w.G + g]);
    }
    for (int m = 0; m < MT; ++m) {
      const uint16_t* xb = xp + (b * M + m0 + m) * kBlock;
      __m512 a[NT];
      for (int j = 0; j < NT; ++j) a[j] = _mm512_setzero_ps();
      for (int c = 0; c < 4; ++c) {
        const __m512bh xv = reinterpret_cast<__m512bh>(_mm512_loadu_si512(xb + 32 * c));
        for (int j = 0; j < NT; ++j) a[j] = _mm512_dpbf16_ps(a[j], wv[j][c], xv);
      }
      for (int j = 0; j < NT; ++j) total[j][m] = _mm512_fmadd_ps(a[j], s[j], total[j][m]);
    }
  }
  if (w.half_tail) {  // lanes t < 16 only (channels < 64): half the work of a full block on Zen 4
    const int64_t b = B - 1, g = w.block_group[b];
    __m256bh wv[NT][4];
    __m512 s[NT];
    for (int j = 0; j < NT; ++j) {
      const uint8_t* p = w.qw + (n + j) * w.row_bytes + b * 64;
      const __m256i v = _mm256_maskz_loadu_epi8(static_cast<__mmask32>(w.last_block), p);
      const __m256i table = _mm512_castsi512_si256((*w.tables)(w.zeros[(n + j) * w.G + g]));
      wv[j][0] = reinterpret_cast<__m256bh>(_mm256_permutexvar_epi16(v, table));
      wv[j][1] = reinterpret_cast<__m256bh>(_mm256_permutexvar_epi16(_mm256_srli_epi16(v, 4), table));
      wv[j][2] = reinterpret_cast<__m256bh>(_mm256_permutexvar_epi16(_mm256_srli_epi16(v, 8), table));
      wv[j][3] = reinterpret_cast<__m256bh>(_mm256_permutexvar_epi16(_mm256_srli_epi16(v, 12), table));
      s[j] = _mm512_set1_ps(w.scales[(n + j) * w.G + g]);
    }
    for (int m = 0; m < MT; ++m) {
      const uint16_t* xb = xp + (b * M + m0 + m) * kBlock;
      __m256 a[NT];
      for (int j = 0; j < NT; ++j) a[j] = _mm256_setzero_ps();
      for (int c = 0; c < 4; ++c) {
        const __m256i xi = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xb + 32 * c));
        const __m256bh xv = reinterpret_cast<__m256bh>(xi);
        for (int j = 0; j < NT; ++j) a[j] = _mm256_dpbf16_ps(a[j], wv[j][c], xv);
      }
      for (int j = 0; j < NT; ++j) total[j][m] = _mm512_fmadd_ps(_mm512_zextps256_ps512(a[j]), s[j], total[j][m]);
    }
  }
  for (int j = 0; j < NT; ++j) {
    __m512 t[MT];  // a copy: handing total itself to reduce_rows kept it in memory inside the loop
    for (int m = 0; m < MT; ++m) t[m] = total[j][m];
    float sums[MT];
    reduce_rows<MT>(t, sums);
    for (int m = 0; m < MT; ++m) out[(m0 + m) * N + n + j] = sums[m];
  }
}

// ---------------------------------------------------------------- int8
// x [M, K] -> bf16 [M, K] in natural order (K % 32 == 0).
PYLLMOPS_BF16_TARGET void round_x_int8(const float* x, int64_t M, int64_t K, uint16_t* xb) {
  for (int64_t i = 0; i < M * K; i += 32)
    _mm512_storeu_si512(xb + i, reinterpret_cast<__m512i>(_mm512_cvtne2ps_pbh(_mm512_loadu_ps(x + i + 16),
                                                                               _mm512_loadu_ps(x + i))));
}

// Output rows n..n+NT-1 for rows m0..m0+MT-1 of x: each load of x serves NT weight rows.
template <int MT, int NT>
PYLLMOPS_BF16_TARGET void int8_tile(const uint16_t* xb, int64_t m0, int64_t K, const int8_t* qw, const float* scales,
                                    int64_t n, float* out, int64_t N) {
  __m512 total[NT][MT];
  for (int j = 0; j < NT; ++j)
    for (int m = 0; m < MT; ++m) total[j][m] = _mm512_setzero_ps();
  for (int64_t k = 0; k < K; k += 32) {
    __m512bh wv[NT];
    for (int j = 0; j < NT; ++j) {
      const int8_t* p = qw + (n + j) * K + k;
      _mm_prefetch(reinterpret_cast<const char*>(p + 2 * NT * K), _MM_HINT_T0);
      _mm_prefetch(reinterpret_cast<const char*>(p + 16 * NT * K), _MM_HINT_T1);
      const __m512 lo = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
      const __m512 hi =
          _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 16))));
      wv[j] = _mm512_cvtne2ps_pbh(hi, lo);
    }
    for (int m = 0; m < MT; ++m) {
      const __m512bh xv = reinterpret_cast<__m512bh>(_mm512_loadu_si512(xb + (m0 + m) * K + k));
      for (int j = 0; j < NT; ++j) total[j][m] = _mm512_dpbf16_ps(total[j][m], wv[j], xv);
    }
  }
  for (int j = 0; j < NT; ++j) {
    __m512 t[MT];
    for (int m = 0; m < MT; ++m) t[m] = total[j][m];
    float sums[MT];
    reduce_rows<MT>(t, sums);
    for (int m = 0; m < MT; ++m) out[(m0 + m) * N + n + j] = sums[m] * scales[n + j];
  }
}

// x rounded to bfloat16 and back to float32 as vcvtne2ps2bf16 rounds it: to nearest even, NaN
// kept (quieted), denormals to a zero of their sign.
void round_bf16(const float* x, int64_t n, float* out) {
  for (int64_t i = 0; i < n; ++i) {  // branch-free, so that the compiler vectorizes it
    uint32_t u;
    std::memcpy(&u, x + i, 4);
    const uint32_t nearest = (u + 0x7FFFu + ((u >> 16) & 1u)) & 0xFFFF0000u;
    const uint32_t nan = (u | 0x00400000u) & 0xFFFF0000u;
    uint32_t r = (u & 0x7FFFFFFFu) > 0x7F800000u ? nan : nearest;
    r = (u & 0x7F800000u) == 0 ? (u & 0x80000000u) : r;
    std::memcpy(out + i, &r, 4);
  }
}

// The exact kernel on x rounded to bfloat16: the same products and float32 sums where the bf16
// kernels do not run (no AVX512_BF16, group sizes below 128, one row of x, where the exact int4
// kernel is the faster one: 4.7 against 5.5 ns per 128 weights on Zen 4).
std::vector<float> rounded(const float* x, int64_t n) {
  std::vector<float> r(static_cast<size_t>(n));
  round_bf16(x, n, r.data());
  return r;
}

}  // namespace

bool weight_only_bf16() {
#if defined(__x86_64__)
  static const bool ok = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512bf16");
  return ok;
#else
  return false;
#endif
}

void w4a16_gemm_bf16_multi(const float* x, int64_t M, int64_t K, int64_t group_size, const Int4Gemm* gemms,
                           int count, int threads) {
  if (M == 1 || !weight_only_bf16() || (group_size % kBlock != 0 && group_size != K)) {
    const std::vector<float> xr = rounded(x, M * K);
    w4a16_gemm_multi(xr.data(), M, K, group_size, gemms, count, threads);
    return;
  }
  const int64_t B = int4_blocks::count(K), G = (K + group_size - 1) / group_size;
  std::vector<uint16_t> xp(static_cast<size_t>(M * B * kBlock));
  round_x_int4(x, M, K, xp.data());
  const std::vector<int32_t> groups = int4_blocks::groups(B, group_size);
  const ZeroPointTables tables;
  const __mmask64 last = int4_blocks::tail_mask(K);
  const bool half_tail = int4_blocks::tail_bytes(K) <= 32;
  int64_t rows = 0;
  for (int i = 0; i < count; ++i) rows += gemms[i].N;
  parallel_for(rows, threads, kGrainN, [&](int64_t n0, int64_t n1) {
    int64_t first = 0;
    for (int i = 0; i < count && first < n1; first += gemms[i].N, ++i) {
      const int64_t r0 = std::max<int64_t>(n0 - first, 0), r1 = std::min<int64_t>(n1 - first, gemms[i].N);
      if (r0 >= r1) continue;
      const Int4Gemm& gm = gemms[i];
      const Int4Args w{gm.qweight, gm.scales, gm.zeros, K / 2, B, G, groups.data(), &tables, last, half_tail};
      int64_t n = r0;
      for (; n + 2 <= r1; n += 2)
        for_row_tiles<kMaxTile>(M, [&](auto mt, int64_t m0) {
          int4_tile<decltype(mt)::value, 2>(xp.data(), M, m0, w, n, gm.out, gm.N);
        });
      for (; n < r1; ++n)
        for_row_tiles<kMaxTile>(M, [&](auto mt, int64_t m0) {
          int4_tile<decltype(mt)::value, 1>(xp.data(), M, m0, w, n, gm.out, gm.N);
        });
    }
  });
}

void w4a16_gemm_bf16(const float* x, int64_t M, int64_t K, const uint8_t* qweight, const float* scales,
                     const uint8_t* zeros, int64_t N, int64_t group_size, float* out, int threads) {
  const Int4Gemm gemm{qweight, scales, zeros, N, out};
  w4a16_gemm_bf16_multi(x, M, K, group_size, &gemm, 1, threads);
}

void w8a16_gemm_bf16(const float* x, int64_t M, int64_t K, const int8_t* qweight, const float* scales, int64_t N,
                     float* out, int threads) {
  if (M == 1 || !weight_only_bf16() || K % 32 != 0) {
    const std::vector<float> xr = rounded(x, M * K);
    w8a16_gemm(xr.data(), M, K, qweight, scales, N, out, threads);
    return;
  }
  std::vector<uint16_t> xb(static_cast<size_t>(M * K));
  round_x_int8(x, M, K, xb.data());
  parallel_for(N, threads, kGrainN, [&](int64_t n0, int64_t n1) {
    int64_t n = n0;
    for (; n + 2 <= n1; n += 2)
      for_row_tiles<kMaxTile>(M, [&](auto mt, int64_t m0) {
        int8_tile<decltype(mt)::value, 2>(xb.data(), m0, K, qweight, scales, n, out, N);
      });
    for (; n < n1; ++n)
      for_row_tiles<kMaxTile>(M, [&](auto mt, int64_t m0) {
        int8_tile<decltype(mt)::value, 1>(xb.data(), m0, K, qweight, scales, n, out, N);
      });
  });
}

}  // namespace pyllmops::cpu
