// Binding for the int8 quantization kernels. Arguments were validated in
// pyllmops/ops/quant_int8.py; here they are only converted.
#include <pybind11/pybind11.h>

#include <stdexcept>
#include <string>

#include "cuda/quant_int8.h"

namespace py = pybind11;
using namespace pyllmops::cuda;

void bind_cuda_quant(py::module_& m) {
  m.def(
      "quantize_int8_rows",
      [](uintptr_t x, int dtype, int64_t M, int64_t N, int64_t ld, uintptr_t static_scale,
         bool per_tensor, uintptr_t q, uintptr_t scale, uintptr_t stream) {
        cudaError_t err = quantize_int8_rows(
            reinterpret_cast<const void*>(x), static_cast<DType>(dtype), M, N, ld,
            reinterpret_cast<const float*>(static_scale), per_tensor,
            reinterpret_cast<int8_t*>(q), reinterpret_cast<float*>(scale),
            reinterpret_cast<cudaStream_t>(stream));
        if (err != cudaSuccess) throw std::runtime_error(std::string("quantize_int8_rows: ") + cudaGetErrorString(err));
      },
      py::arg("x"), py::arg("dtype"), py::arg("M"), py::arg("N"), py::arg("ld"), py::arg("static_scale"),
      py::arg("per_tensor"), py::arg("q"), py::arg("scale"), py::arg("stream"));
}
