// Binding for the weight-only decode kernels (csrc/cuda/w4a16.h). Arguments were validated in
// pyllmops/ops/weight_only.py (dtypes, contiguity, 16-byte alignment, shapes); here they are only
// converted.
#include <pybind11/pybind11.h>

#include <stdexcept>
#include <string>

#include "cuda/w4a16.h"

namespace py = pybind11;
using namespace pyllmops::cuda;

namespace {
void check(cudaError_t err, const char* what) {
  if (err != cudaSuccess) throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(err));
}
}  // namespace

void bind_cuda_weight_only(py::module_& m) {
  m.def(
      "w4a16_gemm",
      [](uintptr_t x, int dtype, int64_t M, int64_t K, uintptr_t qweight, uintptr_t scales, uintptr_t zeros,
         int64_t N, int64_t group_size, uintptr_t out, uintptr_t stream) {
        check(w4a16_gemm(reinterpret_cast<const void*>(x), static_cast<DType>(dtype), M, K,
                         reinterpret_cast<const uint8_t*>(qweight), reinterpret_cast<const void*>(scales),
                         reinterpret_cast<const uint8_t*>(zeros), N, group_size, reinterpret_cast<void*>(out),
                         reinterpret_cast<cudaStream_t>(stream)),
              "w4a16_gemm");
      },
      py::arg("x"), py::arg("dtype"), py::arg("M"), py::arg("K"), py::arg("qweight"), py::arg("scales"),
      py::arg("zeros"), py::arg("N"), py::arg("group_size"), py::arg("out"), py::arg("stream"));
  m.def(
      "w8a16_gemm",
      [](uintptr_t x, int dtype, int64_t M, int64_t K, uintptr_t qweight, uintptr_t scales, int64_t N,
         uintptr_t out, uintptr_t stream) {
        check(w8a16_gemm(reinterpret_cast<const void*>(x), static_cast<DType>(dtype), M, K,
                         reinterpret_cast<const int8_t*>(qweight), reinterpret_cast<const void*>(scales), N,
                         reinterpret_cast<void*>(out), reinterpret_cast<cudaStream_t>(stream)),
              "w8a16_gemm");
      },
      py::arg("x"), py::arg("dtype"), py::arg("M"), py::arg("K"), py::arg("qweight"), py::arg("scales"),
      py::arg("N"), py::arg("out"), py::arg("stream"));
}
