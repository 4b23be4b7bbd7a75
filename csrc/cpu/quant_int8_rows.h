// Fused per-row symmetric int8 quantization on the CPU: one read of the row for its absmax, one
// to scale, round and store. Same arithmetic as pyllmops/ops/quant_int8.py's torch path, bit for
// bit: scale = max(absmax, TINY) / 127 (IEEE float32 division), q = clamp(rint(x / scale), -127,
// 127) with IEEE division and round-half-to-even.
#pragma once
#include <cstdint>

namespace pyllmops::cpu {

enum class FloatType : int { F32 = 0, F16 = 1, BF16 = 2 };  // pyllmops/ops/quant_int8_cpp.py DTYPES

// x: [M, N] of `dtype`, row stride `ld` elements, unit column stride. q: [M, N] int8 contiguous.
// Dynamic (static_scale == nullptr): scale[m] = row m's scale; a NaN in the row gives a NaN scale.
// Static: the scale is static_scale[0] (per_tensor) or static_scale[m], copied to scale[m].
// Returns the number of rows holding a NaN or inf. The check rides along the quantizing pass, so
// callers need no separate isfinite pass over x (static scales would otherwise hide bad input).
int64_t quantize_int8_rows(const void* x, FloatType dtype, int64_t M, int64_t N, int64_t ld,
                        const float* static_scale, bool per_tensor, int8_t* q, float* scale,
                        int threads);

}  // namespace pyllmops::cpu
