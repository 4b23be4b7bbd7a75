// W8A8 GEMM on int8 tensor cores with the dequantization fused into the epilogue.
//
// A block computes a BM x BN tile of out. Both operands are K-major in global memory, so each
// 16-byte chunk along K goes straight into shared memory with cp.async (two stages: the next K
// tile loads while the current one is multiplied), and every mma fragment is one 32-bit shared
// load: for mma.m16n8k32.s8, thread (group g = lane / 4, t = lane % 4) holds A rows g and g + 8 at
// k = 4t..4t+3 and 16+4t..16+4t+3, and B column g at the same k — four consecutive bytes of a
// K-major row. Shared rows are padded from 64 to 80 bytes, which puts the 32 words a warp reads
// in 32 different banks.
#include "cuda/w8a8.h"

namespace pyllmops::cuda {
namespace {

constexpr int kBK = 64;       // K per pipeline stage (two k32 mma steps)
constexpr int kRow = kBK + 16;  // padded shared row, bytes

__device__ __forceinline__ void cp_async16(void* smem, const void* gmem, bool valid) {
  const unsigned dst = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  const int bytes = valid ? 16 : 0;  // 0: nothing is read, the 16 bytes are zero-filled
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(gmem), "r"(bytes));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N)); }

__device__ __forceinline__ void mma_s8(int (&c)[4], const unsigned (&a)[4], const unsigned (&b)[2]) {
  asm volatile(
      "mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
      : "+r"(c[0]), "+r"(c[1]), "+r"(c[2]), "+r"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

__device__ __forceinline__ unsigned lds32(const int8_t* p) { return *reinterpret_cast<const unsigned*>(p); }

template <typename T> __device__ __forceinline__ T from_float(float v);
template <> __device__ __forceinline__ float from_float<float>(float v) { return v; }
template <> __device__ __forceinline__ __half from_float<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

// Copy rows [row0, row0 + ROWS) x k [k0, k0 + kBK) of a K-major operand into shared memory;
// rows past `rows` and k past K are zero-filled (zeros add nothing to the int32 sums).
template <int ROWS, int THREADS>
__device__ __forceinline__ void load_tile(int8_t* smem, const int8_t* g, int64_t ld, int64_t row0, int64_t rows,
                                          int64_t k0, int64_t K) {
  for (int c = threadIdx.x; c < ROWS * (kBK / 16); c += THREADS) {
    const int r = c / (kBK / 16), kc = (c % (kBK / 16)) * 16;
    const bool valid = row0 + r < rows && k0 + kc < K;
    const int8_t* src = valid ? g + (row0 + r) * ld + k0 + kc : g;
    cp_async16(smem + r * kRow + kc, src, valid);
  }
}

// WM x WN warps; each warp owns a (BM / WM) x (BN / WN) sub-tile = MT x NT mma tiles.
template <int BM, int BN, int WM, int WN, typename OutT>
__global__ void __launch_bounds__(WM * WN * 32)
w8a8_kernel(const int8_t* __restrict__ a, int64_t lda, const int8_t* __restrict__ b, int64_t ldb, int64_t M,
            int64_t N, int64_t K, const float* __restrict__ scale_a, bool a_per_row,
            const float* __restrict__ scale_b, bool b_per_col, const float* __restrict__ bias,
            OutT* __restrict__ out) {
  constexpr int THREADS = WM * WN * 32;
  constexpr int MT = BM / WM / 16, NT = BN / WN / 8;
  __shared__ __align__(16) int8_t As[2][BM * kRow];
  __shared__ __align__(16) int8_t Bs[2][BN * kRow];

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int g = lane / 4, t = lane % 4;
  const int wm = (warp / WN) * (BM / WM), wn = (warp % WN) * (BN / WN);
  const int64_t m0 = static_cast<int64_t>(blockIdx.y) * BM, n0 = static_cast<int64_t>(blockIdx.x) * BN;

  int acc[MT][NT][4] = {};
  const int64_t k_tiles = (K + kBK - 1) / kBK;

  load_tile<BM, THREADS>(As[0], a, lda, m0, M, 0, K);
  load_tile<BN, THREADS>(Bs[0], b, ldb, n0, N, 0, K);
  cp_async_commit();
  for (int64_t kt = 0; kt < k_tiles; ++kt) {
    const int s = kt & 1;
    if (kt + 1 < k_tiles) {
      load_tile<BM, THREADS>(As[s ^ 1], a, lda, m0, M, (kt + 1) * kBK, K);
      load_tile<BN, THREADS>(Bs[s ^ 1], b, ldb, n0, N, (kt + 1) * kBK, K);
      cp_async_commit();
      cp_async_wait<1>();  // tile kt has landed; tile kt + 1 may still be in flight
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();
#pragma unroll
    for (int ks = 0; ks < kBK; ks += 32) {
      unsigned af[MT][4], bf[NT][2];
#pragma unroll
      for (int i = 0; i < MT; ++i) {
        const int8_t* p = As[s] + (wm + i * 16 + g) * kRow + ks + 4 * t;
        af[i][0] = lds32(p);
        af[i][1] = lds32(p + 8 * kRow);
        af[i][2] = lds32(p + 16);
        af[i][3] = lds32(p + 8 * kRow + 16);
      }
#pragma unroll
      for (int j = 0; j < NT; ++j) {
        const int8_t* p = Bs[s] + (wn + j * 8 + g) * kRow + ks + 4 * t;
        bf[j][0] = lds32(p);
        bf[j][1] = lds32(p + 16);
      }
#pragma unroll
      for (int i = 0; i < MT; ++i)
#pragma unroll
        for (int j = 0; j < NT; ++j) mma_s8(acc[i][j], af[i], bf[j]);
    }
    __syncthreads();  // everyone is done reading stage s before it is refilled
  }

  // Epilogue: c0, c1 at row g, columns 2t, 2t + 1; c2, c3 at row g + 8.
#pragma unroll
  for (int i = 0; i < MT; ++i) {
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int64_t row = m0 + wm + i * 16 + g + half * 8;
      if (row >= M) continue;
      const float sa = scale_a[a_per_row ? row : 0];
#pragma unroll
      for (int j = 0; j < NT; ++j) {
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const int64_t col = n0 + wn + j * 8 + 2 * t + e;
          if (col >= N) continue;
          float v = __fmul_rn(__fmul_rn(static_cast<float>(acc[i][j][half * 2 + e]), sa), scale_b[b_per_col ? col : 0]);
          if (bias != nullptr) v = __fadd_rn(v, bias[col]);
          out[row * N + col] = from_float<OutT>(v);
        }
      }
    }
  }
}

template <int BM, int BN, int WM, int WN, typename OutT>
cudaError_t launch(const int8_t* a, int64_t lda, const int8_t* b, int64_t ldb, int64_t M, int64_t N, int64_t K,
                   const float* sa, bool a_row, const float* sb, bool b_col, const float* bias, void* out,
                   cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned>((N + BN - 1) / BN), static_cast<unsigned>((M + BM - 1) / BM));
  w8a8_kernel<BM, BN, WM, WN, OutT><<<grid, WM * WN * 32, 0, stream>>>(a, lda, b, ldb, M, N, K, sa, a_row, sb, b_col,
                                                                        bias, static_cast<OutT*>(out));
  return cudaGetLastError();
}

template <typename OutT>
cudaError_t dispatch_tile(const int8_t* a, int64_t lda, const int8_t* b, int64_t ldb, int64_t M, int64_t N, int64_t K,
                          const float* sa, bool a_row, const float* sb, bool b_col, const float* bias, void* out,
                          cudaStream_t stream) {
  // Decode-sized M: 16-row tiles and narrow column tiles, so enough blocks stream the weight.
  if (M <= 16) return launch<16, 32, 1, 4, OutT>(a, lda, b, ldb, M, N, K, sa, a_row, sb, b_col, bias, out, stream);
  return launch<128, 128, 2, 4, OutT>(a, lda, b, ldb, M, N, K, sa, a_row, sb, b_col, bias, out, stream);
}

}  // namespace

cudaError_t w8a8_matmul(const int8_t* a, int64_t lda, const int8_t* b, int64_t ldb, int64_t M, int64_t N,
                        int64_t K, const float* scale_a, bool a_per_row, const float* scale_b, bool b_per_col,
                        const float* bias, void* out, DType out_dtype, cudaStream_t stream) {
  if (M == 0 || N == 0) return cudaSuccess;
  switch (out_dtype) {
    case DType::F32:
      return dispatch_tile<float>(a, lda, b, ldb, M, N, K, scale_a, a_per_row, scale_b, b_per_col, bias, out, stream);
    case DType::F16:
      return dispatch_tile<__half>(a, lda, b, ldb, M, N, K, scale_a, a_per_row, scale_b, b_per_col, bias, out, stream);
    case DType::BF16:
      return dispatch_tile<__nv_bfloat16>(a, lda, b, ldb, M, N, K, scale_a, a_per_row, scale_b, b_per_col, bias, out,
                                          stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace pyllmops::cuda
