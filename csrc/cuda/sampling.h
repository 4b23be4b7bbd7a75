#pragma once
#include "cuda/check.h"

namespace pyllmops::cuda {

// Temperature / top-k / top-p / min-p sampling, one thread block per row, sorting-free (radix
// threshold search with CUB block reductions). The definition is pyllmops/ops/sampling.py's:
// same kept set, same Philox4x32-10 uniform (key = seed[row], counter = (offset[row], 0)), inverse
// CDF over the kept set in vocabulary order. logits [B, V] (row stride `ld` elements) in `dtype`;
// all parameter arrays are [B] device arrays. ids[row] receives the token or a negative status
// (-1 NaN/+inf in the row, -2 all -inf, -3 bad temperature, -4 bad top_p, -5 bad min_p). When
// `probs` is non-null it receives the filtered renormalised distribution [B, V] fp32.
cudaError_t sample_rows(const void* logits, DType dtype, int64_t B, int64_t V, int64_t ld, const float* temperature,
                        const int64_t* top_k, const float* top_p, const float* min_p, const int64_t* seed,
                        const int64_t* offset, int64_t* ids, float* probs, cudaStream_t stream);

}  // namespace pyllmops::cuda
