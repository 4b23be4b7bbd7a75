#pragma once
#include "cuda/check.h"

namespace pyllmops::cuda {

// out [M, N] (row-major, `out_dtype`) = float(a @ b) * scale_a * scale_b + bias, int32 accumulation
// on the int8 tensor cores (mma.sync m16n8k32, sm_80+), dequantization fused in the epilogue.
//   a: [M, K] int8 row-major, row stride lda;  b: [K, N] int8 stored K-major: element (k, n) at
//   b[n * ldb + k] (an nn.Linear weight [N, K] as is). K, lda, ldb multiples of 16, pointers
//   16-byte aligned (checked in Python).
//   scale_a: M floats (a_per_row) or 1; scale_b: N floats (b_per_col) or 1; bias: N floats or null.
// Epilogue arithmetic matches the torch fallback: ((float)acc * sa) * sb + bias, each step
// rounded (no FMA contraction).
cudaError_t w8a8_matmul(const int8_t* a, int64_t lda, const int8_t* b, int64_t ldb, int64_t M, int64_t N,
                        int64_t K, const float* scale_a, bool a_per_row, const float* scale_b, bool b_per_col,
                        const float* bias, void* out, DType out_dtype, cudaStream_t stream);

}  // namespace pyllmops::cuda
