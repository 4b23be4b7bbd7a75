#pragma once
#include "cuda/check.h"

namespace pyllmops::cuda {

// Weight-only GEMM for decode (M <= 16): out[M, N] = x[M, K] @ W^T, fp16 or bf16 x / scales / out.
// int4: qweight [N, K/2] u8 (byte j = channel 2j low nibble | 2j+1 high nibble), scales [N, G],
// zeros [N, G] u8, G = ceil(K / group_size); needs K % 32 == 0 and group_size % 32 == 0.
cudaError_t w4a16_gemm(const void* x, DType dtype, int64_t M, int64_t K, const uint8_t* qweight,
                       const void* scales, const uint8_t* zeros, int64_t N, int64_t group_size,
                       void* out, cudaStream_t stream);

// int8: qweight [N, K] int8, scales [N] (per output channel); needs K % 16 == 0.
cudaError_t w8a16_gemm(const void* x, DType dtype, int64_t M, int64_t K, const int8_t* qweight,
                       const void* scales, int64_t N, void* out, cudaStream_t stream);

}  // namespace pyllmops::cuda
