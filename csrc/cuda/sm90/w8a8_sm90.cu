// W8A8 GEMM on Hopper: CUTLASS 3.x's TMA + wgmma warp-specialized kernel (int8 x int8 -> int32),
// with the dequantization fused into an epilogue visitor tree: ((float)acc * scale_a) * scale_b
// + bias, computed in float32 and rounded to the output dtype once.
//
// Both operands are K-major (a row-major [M, K], b an nn.Linear weight [N, K]), the layout int8
// wgmma requires. scale_a broadcasts along columns and scale_b along rows; each is a vector or a
// scalar chosen at run time (a `bool` stride), so per-tensor and per-token / per-channel scales
// share one kernel. A null bias reads as zeros. This file is compiled with -fmad=false, so the
// epilogue's multiply and add are not contracted into an FMA: the same roundings as the mma.sync
// kernel (cuda/w8a8.cu) and the torch fallback.
#include "cuda/sm90/w8a8_sm90.h"

#include "cute/tensor.hpp"
#include "cutlass/cutlass.h"
#include "cutlass/epilogue/collective/collective_builder.hpp"
#include "cutlass/epilogue/fusion/sm90_visitor_tma_warpspecialized.hpp"
#include "cutlass/gemm/collective/collective_builder.hpp"
#include "cutlass/gemm/device/gemm_universal_adapter.h"
#include "cutlass/gemm/dispatch_policy.hpp"
#include "cutlass/gemm/kernel/gemm_universal.hpp"

namespace pyllmops::cuda {
namespace {

using namespace cute;
namespace fusion = cutlass::epilogue::fusion;

// 128 x 128 output tiles, 128 bytes of K per stage (one 128-byte swizzle row), 2 x 1 clusters
// (the B tile is multicast to both CTAs of a cluster), ping-pong warp groups: one runs its
// epilogue while the other's wgmma runs.
template <typename OutT>
struct W8A8Sm90 {
  using TileShape = Shape<_128, _128, _128>;
  using ClusterShape = Shape<_2, _1, _1>;
  using KernelSchedule = cutlass::gemm::KernelTmaWarpSpecializedPingpong;
  using EpilogueSchedule = cutlass::epilogue::TmaWarpSpecialized;
  static constexpr auto kRound = cutlass::FloatRoundStyle::round_to_nearest;

  using ScaleA = fusion::Sm90ColBroadcast<0, TileShape, float, float, Stride<bool, _0, _0>>;
  using ScaleB = fusion::Sm90RowBroadcast<0, TileShape, float, float, Stride<_0, bool, _0>>;
  using Bias = fusion::Sm90RowBroadcast<0, TileShape, float, float, Stride<_0, _1, _0>>;
  using Mul = fusion::Sm90Compute<cutlass::multiplies, float, float, kRound>;
  using TimesA = fusion::Sm90EVT<Mul, fusion::Sm90AccFetch, ScaleA>;
  using TimesB = fusion::Sm90EVT<Mul, TimesA, ScaleB>;
  using Epilogue = fusion::Sm90EVT<fusion::Sm90Compute<cutlass::plus, OutT, float, kRound>, TimesB, Bias>;

  static constexpr int kAlignD = 16 / sizeof(OutT);
  using CollectiveEpilogue = typename cutlass::epilogue::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, TileShape, ClusterShape,
      cutlass::epilogue::collective::EpilogueTileAuto, int32_t, float, void, cutlass::layout::RowMajor, kAlignD,
      OutT, cutlass::layout::RowMajor, kAlignD, EpilogueSchedule, Epilogue>::CollectiveOp;

  using CollectiveMainloop = typename cutlass::gemm::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, int8_t, cutlass::layout::RowMajor, 16, int8_t,
      cutlass::layout::ColumnMajor, 16, int32_t, TileShape, ClusterShape,
      cutlass::gemm::collective::StageCountAutoCarveout<static_cast<int>(
          sizeof(typename CollectiveEpilogue::SharedStorage))>,
      KernelSchedule>::CollectiveOp;

  using Kernel = cutlass::gemm::kernel::GemmUniversal<Shape<int, int, int, int>, CollectiveMainloop,
                                                      CollectiveEpilogue, cutlass::gemm::PersistentScheduler>;
  using Gemm = cutlass::gemm::device::GemmUniversalAdapter<Kernel>;
};

template <typename OutT>
cudaError_t run(const int8_t* a, int64_t lda, const int8_t* b, int64_t ldb, int64_t M, int64_t N, int64_t K,
                const float* sa, bool a_row, const float* sb, bool b_col, const float* bias, void* out,
                cudaStream_t stream) {
  using Gemm = typename W8A8Sm90<OutT>::Gemm;
  using Kernel = typename W8A8Sm90<OutT>::Kernel;
  typename Kernel::StrideA stride_a{lda, Int<1>{}, int64_t(0)};
  typename Kernel::StrideB stride_b{ldb, Int<1>{}, int64_t(0)};
  typename Kernel::StrideD stride_d{N, Int<1>{}, int64_t(0)};
  typename Kernel::StrideC stride_c{};

  // The visitor tree's arguments mirror its shape: {children..., the node's own}.
  typename Gemm::Arguments args{
      cutlass::gemm::GemmUniversalMode::kGemm,
      {static_cast<int>(M), static_cast<int>(N), static_cast<int>(K), 1},
      {a, stride_a, b, stride_b},
      {{{{{}, {sa, 0.0f, {a_row, {}, {}}}, {}}, {sb, 0.0f, {{}, b_col, {}}}, {}}, {bias, 0.0f, {}}, {}},
       nullptr, stride_c, static_cast<OutT*>(out), stride_d}};

  Gemm gemm;
  if (gemm.can_implement(args) != cutlass::Status::kSuccess) return cudaErrorInvalidValue;
  if (Gemm::get_workspace_size(args) != 0) return cudaErrorNotSupported;  // the persistent scheduler needs none
  if (gemm.initialize(args, nullptr, stream) != cutlass::Status::kSuccess) return cudaErrorInvalidValue;
  if (gemm.run(stream) != cutlass::Status::kSuccess) return cudaGetLastError();
  return cudaGetLastError();
}

}  // namespace

cudaError_t w8a8_matmul_sm90(const int8_t* a, int64_t lda, const int8_t* b, int64_t ldb, int64_t M, int64_t N,
                             int64_t K, const float* scale_a, bool a_per_row, const float* scale_b, bool b_per_col,
                             const float* bias, void* out, DType out_dtype, cudaStream_t stream) {
  if (M == 0 || N == 0) return cudaSuccess;
  const bool aligned = K % 16 == 0 && N % 16 == 0 && lda % 16 == 0 && ldb % 16 == 0 &&
                       reinterpret_cast<uintptr_t>(a) % 16 == 0 && reinterpret_cast<uintptr_t>(b) % 16 == 0 &&
                       reinterpret_cast<uintptr_t>(out) % 16 == 0;
  if (!aligned || M > INT32_MAX || N > INT32_MAX || K > INT32_MAX) return cudaErrorInvalidValue;
  switch (out_dtype) {
    case DType::F32:
      return run<float>(a, lda, b, ldb, M, N, K, scale_a, a_per_row, scale_b, b_per_col, bias, out, stream);
    case DType::F16:
      return run<cutlass::half_t>(a, lda, b, ldb, M, N, K, scale_a, a_per_row, scale_b, b_per_col, bias, out, stream);
    case DType::BF16:
      return run<cutlass::bfloat16_t>(a, lda, b, ldb, M, N, K, scale_a, a_per_row, scale_b, b_per_col, bias, out,
                                      stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace pyllmops::cuda
