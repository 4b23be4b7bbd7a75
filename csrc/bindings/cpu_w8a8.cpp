// Binding for the W8A8 CPU helpers (the fused activation quantizer). Arguments were validated in
// pyllmops/ops/quant_int8.py; pyllmops/ops/quant_int8_cpp.py only converts them.
#include <pybind11/pybind11.h>

#include "cpu/quant_int8_rows.h"

namespace py = pybind11;
using namespace pyllmops::cpu;

void bind_w8a8(py::module_& m) {
  m.def(
      "quantize_int8_rows",
      [](uintptr_t x, int dtype, int64_t M, int64_t N, int64_t ld, uintptr_t static_scale, bool per_tensor,
         uintptr_t q, uintptr_t scale, int threads) {
        py::gil_scoped_release release;
        quantize_int8_rows(reinterpret_cast<const void*>(x), static_cast<FloatType>(dtype), M, N, ld,
                           reinterpret_cast<const float*>(static_scale), per_tensor, reinterpret_cast<int8_t*>(q),
                           reinterpret_cast<float*>(scale), threads);
      },
      py::arg("x"), py::arg("dtype"), py::arg("M"), py::arg("N"), py::arg("ld"), py::arg("static_scale"),
      py::arg("per_tensor"), py::arg("q"), py::arg("scale"), py::arg("threads") = 0,
      "Symmetric int8 quantization of each row of x [M, N] (see csrc/cpu/quant_int8_rows.h).");
}
