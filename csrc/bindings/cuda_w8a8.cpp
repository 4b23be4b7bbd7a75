// Binding for the W8A8 GEMM. Arguments were validated in pyllmops/ops/w8a8.py (dtypes, shapes,
// K-major b, 16-byte alignment); here they are only converted.
#include <pybind11/pybind11.h>

#include <stdexcept>
#include <string>

#include "cuda/w8a8.h"
#ifdef PYLLMOPS_HAS_W8A8_SM90
#include "cuda/sm90/w8a8_sm90.h"
#endif

namespace py = pybind11;
using namespace pyllmops::cuda;

void bind_cuda_w8a8(py::module_& m) {
#ifdef PYLLMOPS_HAS_W8A8_SM90
  m.attr("has_w8a8_sm90") = true;
  m.def(
      "w8a8_matmul_sm90",
      [](uintptr_t a, int64_t lda, uintptr_t b, int64_t ldb, int64_t M, int64_t N, int64_t K, uintptr_t scale_a,
         bool a_per_row, uintptr_t scale_b, bool b_per_col, uintptr_t bias, uintptr_t out, int out_dtype,
         uintptr_t stream) {
        cudaError_t err = w8a8_matmul_sm90(
            reinterpret_cast<const int8_t*>(a), lda, reinterpret_cast<const int8_t*>(b), ldb, M, N, K,
            reinterpret_cast<const float*>(scale_a), a_per_row, reinterpret_cast<const float*>(scale_b), b_per_col,
            reinterpret_cast<const float*>(bias), reinterpret_cast<void*>(out), static_cast<DType>(out_dtype),
            reinterpret_cast<cudaStream_t>(stream));
        if (err != cudaSuccess)
          throw std::runtime_error(std::string("w8a8_matmul_sm90 (K, N, lda, ldb multiples of 16, 16-byte aligned "
                                               "pointers): ") + cudaGetErrorString(err));
      },
      py::arg("a"), py::arg("lda"), py::arg("b"), py::arg("ldb"), py::arg("M"), py::arg("N"), py::arg("K"),
      py::arg("scale_a"), py::arg("a_per_row"), py::arg("scale_b"), py::arg("b_per_col"), py::arg("bias"),
      py::arg("out"), py::arg("out_dtype"), py::arg("stream"));
#else
  m.attr("has_w8a8_sm90") = false;
#endif
  m.def(
      "w8a8_matmul",
      [](uintptr_t a, int64_t lda, uintptr_t b, int64_t ldb, int64_t M, int64_t N, int64_t K, uintptr_t scale_a,
         bool a_per_row, uintptr_t scale_b, bool b_per_col, uintptr_t bias, uintptr_t out, int out_dtype,
         uintptr_t stream) {
        cudaError_t err = w8a8_matmul(
            reinterpret_cast<const int8_t*>(a), lda, reinterpret_cast<const int8_t*>(b), ldb, M, N, K,
            reinterpret_cast<const float*>(scale_a), a_per_row, reinterpret_cast<const float*>(scale_b), b_per_col,
            reinterpret_cast<const float*>(bias), reinterpret_cast<void*>(out), static_cast<DType>(out_dtype),
            reinterpret_cast<cudaStream_t>(stream));
        if (err != cudaSuccess) throw std::runtime_error(std::string("w8a8_matmul: ") + cudaGetErrorString(err));
      },
      py::arg("a"), py::arg("lda"), py::arg("b"), py::arg("ldb"), py::arg("M"), py::arg("N"), py::arg("K"),
      py::arg("scale_a"), py::arg("a_per_row"), py::arg("scale_b"), py::arg("b_per_col"), py::arg("bias"),
      py::arg("out"), py::arg("out_dtype"), py::arg("stream"));
}
