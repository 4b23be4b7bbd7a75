// Binding for the W8A8 CPU helpers: the fused activation quantizer and the GEMM's dequantizing
// epilogue. Arguments were validated in pyllmops/ops/quant_int8.py and pyllmops/ops/w8a8.py;
// pyllmops/ops/quant_int8_cpp.py and pyllmops/ops/w8a8_cpp.py only convert them.
#include <pybind11/pybind11.h>

#include "cpu/quant_int8_rows.h"
#include "cpu/w8a8_epilogue.h"

namespace py = pybind11;
using namespace pyllmops::cpu;

void bind_w8a8(py::module_& m) {
  m.def(
      "quantize_int8_rows",
      [](uintptr_t x, int dtype, int64_t M, int64_t N, int64_t ld, uintptr_t static_scale, bool per_tensor,
         uintptr_t q, uintptr_t scale, int threads) {
        py::gil_scoped_release release;
        return quantize_int8_rows(reinterpret_cast<const void*>(x), static_cast<FloatType>(dtype), M, N, ld,
                           reinterpret_cast<const float*>(static_scale), per_tensor, reinterpret_cast<int8_t*>(q),
                           reinterpret_cast<float*>(scale), threads);
      },
      py::arg("x"), py::arg("dtype"), py::arg("M"), py::arg("N"), py::arg("ld"), py::arg("static_scale"),
      py::arg("per_tensor"), py::arg("q"), py::arg("scale"), py::arg("threads") = 0,
      "Symmetric int8 quantization of each row of x [M, N] (see csrc/cpu/quant_int8_rows.h); returns the "
      "number of rows holding a NaN or inf.");
  m.def(
      "w8a8_epilogue",
      [](uintptr_t acc, bool acc_int32, int64_t M, int64_t N, uintptr_t scale_a, bool a_per_row, uintptr_t scale_b,
         bool b_per_col, uintptr_t bias, uintptr_t out, int out_dtype, int threads) {
        py::gil_scoped_release release;
        w8a8_epilogue(reinterpret_cast<const void*>(acc), acc_int32, M, N, reinterpret_cast<const float*>(scale_a),
                      a_per_row, reinterpret_cast<const float*>(scale_b), b_per_col,
                      reinterpret_cast<const float*>(bias), reinterpret_cast<void*>(out),
                      static_cast<FloatType>(out_dtype), threads);
      },
      py::arg("acc"), py::arg("acc_int32"), py::arg("M"), py::arg("N"), py::arg("scale_a"), py::arg("a_per_row"),
      py::arg("scale_b"), py::arg("b_per_col"), py::arg("bias"), py::arg("out"), py::arg("out_dtype"),
      py::arg("threads") = 0,
      "out = out_dtype(float(acc) * scale_a * scale_b + bias) for acc [M, N] (see csrc/cpu/w8a8_epilogue.h); "
      "null pointers mean scale 1 / no bias.");
}
