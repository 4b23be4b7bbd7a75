#pragma once
// The W8A8 GEMM on Hopper's wgmma (sm_90a), built from CUTLASS 3.x when its headers are present
// (CMake: PYLLMOPS_CUTLASS_INCLUDE). Same contract as w8a8_matmul in cuda/w8a8.h:
//   out [M, N] (row-major, out_dtype) = ((float)(a @ b) * scale_a) * scale_b + bias
// a: [M, K] int8 row-major (row stride lda); b: K-major, element (k, n) at b[n * ldb + k].
// scale_a: M floats (a_per_row) or 1; scale_b: N floats (b_per_col) or 1; bias: N floats or null.
// Requirements (TMA: 16-byte aligned rows and pointers), checked by the caller in Python and again
// here: K, N, lda, ldb multiples of 16; a, b, out 16-byte aligned. A call that breaks one returns
// cudaErrorInvalidValue (nothing is launched). scale_b and bias are read in 16-byte vectors, so
// they must be 16-byte aligned too (the caller realigns them).
#include "cuda/check.h"

namespace pyllmops::cuda {

cudaError_t w8a8_matmul_sm90(const int8_t* a, int64_t lda, const int8_t* b, int64_t ldb, int64_t M, int64_t N,
                             int64_t K, const float* scale_a, bool a_per_row, const float* scale_b, bool b_per_col,
                             const float* bias, void* out, DType out_dtype, cudaStream_t stream);

}  // namespace pyllmops::cuda
