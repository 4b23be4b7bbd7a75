// Fused per-row int8 quantization: one block per row, absmax reduced with CUB, then the row is
// read a second time (it is hot in L1/L2) to scale, round and store.
#include <cub/block/block_reduce.cuh>

#include "cuda/quant_int8.h"

namespace pyllmops::cuda {
namespace {

constexpr int kThreads = 256;
// Smallest scale we emit: keeps x / scale finite for an all-zero row (see ops/quant_int8.py).
constexpr float kTinyAmax = 1.1754943508222875e-38f * 127.0f;

// max that propagates NaN (fmaxf would drop it and hide bad input).
__device__ __forceinline__ float nan_max(float a, float b) { return (a != a || a > b) ? a : b; }
struct NanMax {
  __device__ __forceinline__ float operator()(float a, float b) const { return (b != b) ? b : nan_max(a, b); }
};

template <typename T>
__global__ void __launch_bounds__(kThreads)
    quantize_rows_kernel(const T* __restrict__ x, int64_t N, int64_t ld, const float* __restrict__ static_scale,
                         bool per_tensor, int8_t* __restrict__ q, float* __restrict__ scale) {
  const int64_t row = blockIdx.x;
  const T* xr = x + row * ld;
  int8_t* qr = q + row * N;

  __shared__ float s_scale;
  if (static_scale == nullptr) {
    float amax = 0.f;
    for (int64_t i = threadIdx.x; i < N; i += kThreads) amax = nan_max(amax, fabsf(to_float(xr[i])));
    using Reduce = cub::BlockReduce<float, kThreads>;
    __shared__ typename Reduce::TempStorage tmp;
    const float block_amax = Reduce(tmp).Reduce(amax, NanMax{});
    // A NaN row yields a NaN scale, which the Python front door reports as bad input.
    if (threadIdx.x == 0)
      s_scale = isnan(block_amax) ? block_amax : __fdiv_rn(fmaxf(block_amax, kTinyAmax), 127.0f);
  } else if (threadIdx.x == 0) {
    s_scale = per_tensor ? static_scale[0] : static_scale[row];
  }
  __syncthreads();
  const float s = s_scale;
  if (threadIdx.x == 0) scale[row] = s;
  for (int64_t i = threadIdx.x; i < N; i += kThreads) {
    float v = rintf(__fdiv_rn(to_float(xr[i]), s));
    v = fminf(fmaxf(v, -127.f), 127.f);
    qr[i] = static_cast<int8_t>(v);
  }
}

template <typename T>
cudaError_t launch(const void* x, int64_t M, int64_t N, int64_t ld, const float* static_scale,
                   bool per_tensor, int8_t* q, float* scale, cudaStream_t stream) {
  if (M == 0) return cudaSuccess;
  quantize_rows_kernel<T><<<static_cast<unsigned>(M), kThreads, 0, stream>>>(
      static_cast<const T*>(x), N, ld, static_scale, per_tensor, q, scale);
  return cudaGetLastError();
}

}  // namespace

cudaError_t quantize_int8_rows(const void* x, DType dtype, int64_t M, int64_t N, int64_t ld,
                               const float* static_scale, bool per_tensor, int8_t* q,
                               float* scale, cudaStream_t stream) {
  switch (dtype) {
    case DType::F32: return launch<float>(x, M, N, ld, static_scale, per_tensor, q, scale, stream);
    case DType::F16: return launch<__half>(x, M, N, ld, static_scale, per_tensor, q, scale, stream);
    case DType::BF16: return launch<__nv_bfloat16>(x, M, N, ld, static_scale, per_tensor, q, scale, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace pyllmops::cuda
