// Shared by the CUDA kernels: the dtype tag that crosses the torch-free boundary, and the
// conversions to float every kernel needs.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <cstdint>

namespace pyllmops::cuda {

// Values match pyllmops/ops/_cuda_ext.py DTYPE_CODES.
enum class DType : int { F32 = 0, F16 = 1, BF16 = 2 };

__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }

}  // namespace pyllmops::cuda
