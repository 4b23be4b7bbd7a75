#pragma once
#include "cuda/check.h"

namespace pyllmops::cuda {

// Symmetric int8 quantization of each row of x [M, N] (row stride `ld` elements, unit column
// stride). Dynamic when `static_scale` is null: scale[m] = max(absmax(row m), TINY) / 127.
// Static: scale is read from static_scale (one value when `per_tensor`, else one per row) and
// copied to `scale`. q = clamp(rint(x / scale), -127, 127) with IEEE division and
// round-half-to-even, bit-identical to the torch fallback.
cudaError_t quantize_int8_rows(const void* x, DType dtype, int64_t M, int64_t N, int64_t ld,
                               const float* static_scale, bool per_tensor, int8_t* q,
                               float* scale, cudaStream_t stream);

}  // namespace pyllmops::cuda
