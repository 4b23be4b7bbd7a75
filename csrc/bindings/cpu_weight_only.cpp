// Binding for the weight-only GEMMs (csrc/cpu/weight_only.h). Arguments were validated in
// pyllmops/ops/weight_only.py (dtypes, contiguity, shapes); here they are only converted. The GIL
// is released while the kernel runs.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <tuple>
#include <vector>

#include "cpu/weight_only.h"

namespace py = pybind11;
using namespace pyllmops::cpu;

namespace {

using Int4Gemm = void (*)(const float*, int64_t, int64_t, const uint8_t*, const float*, const uint8_t*, int64_t,
                          int64_t, float*, int);

// w4a16_gemm and w4a8_gemm take the same operands (the int4 layout, fp32 x and out).
void bind_int4_gemm(py::module_& m, const char* name, Int4Gemm gemm) {
  m.def(
      name,
      [gemm](uintptr_t x, int64_t M, int64_t K, uintptr_t qweight, uintptr_t scales, uintptr_t zeros, int64_t N,
             int64_t group_size, uintptr_t out, int threads) {
        py::gil_scoped_release release;
        gemm(reinterpret_cast<const float*>(x), M, K, reinterpret_cast<const uint8_t*>(qweight),
             reinterpret_cast<const float*>(scales), reinterpret_cast<const uint8_t*>(zeros), N, group_size,
             reinterpret_cast<float*>(out), threads);
      },
      py::arg("x"), py::arg("M"), py::arg("K"), py::arg("qweight"), py::arg("scales"), py::arg("zeros"),
      py::arg("N"), py::arg("group_size"), py::arg("out"), py::arg("threads") = 0);
}

using Int4Multi = void (*)(const float*, int64_t, int64_t, int64_t, const pyllmops::cpu::Int4Gemm*, int, int);

// w4a16_gemm_multi and its bf16 form: gemms as (qweight, scales, zeros, N, out) pointers.
void bind_int4_multi(py::module_& m, const char* name, Int4Multi multi) {
  m.def(
      name,
      [multi](uintptr_t x, int64_t M, int64_t K, int64_t group_size,
              const std::vector<std::tuple<uintptr_t, uintptr_t, uintptr_t, int64_t, uintptr_t>>& gemms, int threads) {
        std::vector<pyllmops::cpu::Int4Gemm> gs;
        for (const auto& [qw, sc, z, N, out] : gemms)
          gs.push_back({reinterpret_cast<const uint8_t*>(qw), reinterpret_cast<const float*>(sc),
                        reinterpret_cast<const uint8_t*>(z), N, reinterpret_cast<float*>(out)});
        py::gil_scoped_release release;
        multi(reinterpret_cast<const float*>(x), M, K, group_size, gs.data(), static_cast<int>(gs.size()), threads);
      },
      py::arg("x"), py::arg("M"), py::arg("K"), py::arg("group_size"), py::arg("gemms"), py::arg("threads") = 0);
}

// w8a16_gemm and its bf16 form.
void bind_int8_gemm(py::module_& m, const char* name,
                    void (*gemm)(const float*, int64_t, int64_t, const int8_t*, const float*, int64_t, float*, int)) {
  m.def(
      name,
      [gemm](uintptr_t x, int64_t M, int64_t K, uintptr_t qweight, uintptr_t scales, int64_t N, uintptr_t out,
             int threads) {
        py::gil_scoped_release release;
        gemm(reinterpret_cast<const float*>(x), M, K, reinterpret_cast<const int8_t*>(qweight),
             reinterpret_cast<const float*>(scales), N, reinterpret_cast<float*>(out), threads);
      },
      py::arg("x"), py::arg("M"), py::arg("K"), py::arg("qweight"), py::arg("scales"), py::arg("N"),
      py::arg("out"), py::arg("threads") = 0);
}

}  // namespace

void bind_weight_only(py::module_& m) {
  m.def("weight_only_simd", &weight_only_simd);
  m.def("weight_only_vnni", &weight_only_vnni);
  m.def("w4a16_kernel", &w4a16_kernel, py::arg("K"), py::arg("group_size"), py::arg("M") = 1);
  bind_int4_gemm(m, "w4a16_gemm", &w4a16_gemm);
  bind_int4_gemm(m, "w4a8_gemm", &w4a8_gemm);
  bind_int4_gemm(m, "w4a16_gemm_bf16", &w4a16_gemm_bf16);
  bind_int4_multi(m, "w4a16_gemm_multi", &w4a16_gemm_multi);
  bind_int4_multi(m, "w4a16_gemm_bf16_multi", &w4a16_gemm_bf16_multi);
  m.def("weight_only_bf16", &weight_only_bf16);
  m.def(
      "w4_dequantize",
      [](uintptr_t qweight, uintptr_t scales, uintptr_t zeros, int64_t N, int64_t K, int64_t group_size,
         uintptr_t out, int threads) {
        py::gil_scoped_release release;
        w4_dequantize(reinterpret_cast<const uint8_t*>(qweight), reinterpret_cast<const float*>(scales),
                      reinterpret_cast<const uint8_t*>(zeros), N, K, group_size, reinterpret_cast<float*>(out),
                      threads);
      },
      py::arg("qweight"), py::arg("scales"), py::arg("zeros"), py::arg("N"), py::arg("K"), py::arg("group_size"),
      py::arg("out"), py::arg("threads") = 0);
  bind_int8_gemm(m, "w8a16_gemm", &w8a16_gemm);
  bind_int8_gemm(m, "w8a16_gemm_bf16", &w8a16_gemm_bf16);
}
