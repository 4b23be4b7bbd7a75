// Weight-only quantized GEMM for small M (decode) on the CPU: y[M, N] = x[M, K] @ W^T with W
// stored as int4 (internal layout of pyllmops/quant/packing.py) or int8. Torch-free; arguments
// are validated in pyllmops/ops/weight_only.py.
#pragma once
#include <cstdint>

namespace pyllmops::cpu {

// True when vectorized kernels (AVX-512, or AVX2 + FMA) can run on this CPU; the scalar path is
// correct everywhere but slow, and the Python side only picks this backend when this is true.
bool weight_only_simd();

// True when the AVX-512 VNNI kernels (w4a16's digit kernel, w4a8_gemm) can run on this CPU.
bool weight_only_vnni();

// Which int4 kernel w4a16_gemm runs for this call (M rows of x): "vnni_digits", "avx512_fma", "avx2_digits",
// "avx2_fma" or "scalar" (for tests that must reach each one, and for benchmarks to name it).
const char* w4a16_kernel(int64_t K, int64_t group_size, int64_t M = 1);

// x [M, K] fp32 (row stride K); qweight [N, K/2] u8, byte j = k 2j (low nibble) | 2j+1 (high);
// scales [N, G] fp32; zeros [N, G] u8; G = ceil(K / group_size), last group ragged.
// Requires K % 32 == 0 and group_size % 32 == 0. out [M, N] fp32.
void w4a16_gemm(const float* x, int64_t M, int64_t K, const uint8_t* qweight, const float* scales,
                const uint8_t* zeros, int64_t N, int64_t group_size, float* out, int threads);

// One weight of w4a16_gemm_multi (layout as in w4a16_gemm) and its output out [M, N].
struct Int4Gemm {
  const uint8_t* qweight;
  const float* scales;
  const uint8_t* zeros;
  int64_t N;
  float* out;
};

// w4a16_gemm for `count` weights of the same K and group size that multiply the same x (a
// decoder's q/k/v, gate/up): x is prepared once (digits, group sums) and the rows of all weights
// share one parallel loop. Each out equals w4a16_gemm's for its weight, value for value.
void w4a16_gemm_multi(const float* x, int64_t M, int64_t K, int64_t group_size, const Int4Gemm* gemms, int count,
                      int threads);

// W4A8: the int4 weight as in w4a16_gemm, x quantized per call like llama.cpp's Q8_0: per row and
// 32 channels, d = max|x| / 127, q = round_half_even(x / d) in float32 (q = 0 where d = 0);
// out = sum_k (q_w - z) s * q_x d, products exact in int32, scaled in float32. A block of x with a
// NaN or inf makes the outputs NaN. Requires weight_only_vnni(), K % 32 == 0, group_size % 128 == 0
// or group_size == K.
void w4a8_gemm(const float* x, int64_t M, int64_t K, const uint8_t* qweight, const float* scales,
               const uint8_t* zeros, int64_t N, int64_t group_size, float* out, int threads);

// W [N, K] fp32 = (q - z) * s from the int4 layout of w4a16_gemm (any K and group_size >= 1), for
// larger M, where dequantizing once and running a float GEMM beats the decode kernel.
void w4_dequantize(const uint8_t* qweight, const float* scales, const uint8_t* zeros, int64_t N, int64_t K,
                   int64_t group_size, float* out, int threads);

// x [M, K] fp32; qweight [N, K] int8; scales [N] fp32 (per output channel). Requires K % 16 == 0.
void w8a16_gemm(const float* x, int64_t M, int64_t K, const int8_t* qweight, const float* scales,
                int64_t N, float* out, int threads);

// True when the bfloat16 kernels below can run on this CPU (AVX-512 BF16: Zen 4, Cooper Lake,
// Sapphire Rapids and later).
bool weight_only_bf16();

// w4a16_gemm with x rounded to bfloat16 (nearest even, denormals to zero), the weight exact:
// out = sum_g s_g sum_k bf16(x_k) (q_k - z_g), every product exact, the sums in float32. What
// WeightOnlyLinear.compute_dtype = torch.bfloat16 runs: from 2 rows of x, with AVX512_BF16 and
// 128-channel blocks in one group (group_size % 128 == 0 or == K), on vdpbf16ps at ~1.7x the exact
// kernel's rate (weight_only_bf16.cpp); otherwise the exact kernel on the rounded x, the same
// arithmetic. Same operands and requirements as w4a16_gemm / w4a16_gemm_multi.
void w4a16_gemm_bf16(const float* x, int64_t M, int64_t K, const uint8_t* qweight, const float* scales,
                     const uint8_t* zeros, int64_t N, int64_t group_size, float* out, int threads);
void w4a16_gemm_bf16_multi(const float* x, int64_t M, int64_t K, int64_t group_size, const Int4Gemm* gemms,
                           int count, int threads);

// w8a16_gemm with x rounded to bfloat16: out = s_n sum_k bf16(x_k) q_k, sums in float32 (vdpbf16ps
// from 2 rows of x when K % 32 == 0 and the CPU has AVX512_BF16, else w8a16_gemm on the rounded x).
void w8a16_gemm_bf16(const float* x, int64_t M, int64_t K, const int8_t* qweight, const float* scales, int64_t N,
                     float* out, int threads);

}  // namespace pyllmops::cpu
