// The dequantizing epilogue of the CPU W8A8 GEMM as one pass over the accumulator:
//   out[m, n] = out_type((float(acc[m, n]) * scale_a[m] * scale_b[n]) + bias[n])
// in float32, the same operation order as pyllmops/ops/w8a8.py's torch epilogue (mul, mul, add,
// then one round-to-nearest-even cast), so the two agree bit for bit. It replaces the three or
// four full-tensor torch ops (and their temporaries) that per-token scales otherwise cost after
// oneDNN's int8 GEMM, which can only fuse a per-tensor activation scale.
#pragma once
#include <cstdint>

#include "cpu/quant_int8_rows.h"  // FloatType

namespace pyllmops::cpu {

// acc: [M, N] contiguous, int32 (acc_int32) or float32. out: [M, N] contiguous of out_type; it may
// be acc itself when both are float32 (in place). scale_a: nullptr (1), one value, or M values
// (a_per_row). scale_b: nullptr (1), one value, or N values (b_per_col). bias: nullptr or N values.
void w8a8_epilogue(const void* acc, bool acc_int32, int64_t M, int64_t N, const float* scale_a, bool a_per_row,
                   const float* scale_b, bool b_per_col, const float* bias, void* out, FloatType out_type,
                   int threads);

}  // namespace pyllmops::cpu
