// Binding for the CPU sampling kernel. Arguments were validated in pyllmops/ops/sampling.py
// (dtypes, shapes, [B] contiguous parameter tensors on the CPU); here they are only converted.
#include <pybind11/pybind11.h>

#include <cstdint>

#include "cpu/sampling.h"

namespace py = pybind11;
using namespace pyllmops::cpu;

void bind_sampling(py::module_& m) {
  m.def(
      "sample_rows",
      [](uintptr_t logits, int dtype, int64_t B, int64_t V, int64_t ld, uintptr_t temperature, uintptr_t top_k,
         uintptr_t top_p, uintptr_t min_p, uintptr_t seed, uintptr_t offset, uintptr_t ids, uintptr_t probs,
         int threads) {
        const SampleParams params{reinterpret_cast<const float*>(temperature), reinterpret_cast<const int64_t*>(top_k),
                                  reinterpret_cast<const float*>(top_p), reinterpret_cast<const float*>(min_p),
                                  reinterpret_cast<const int64_t*>(seed), reinterpret_cast<const int64_t*>(offset)};
        py::gil_scoped_release release;
        sample_rows(reinterpret_cast<const void*>(logits), static_cast<LogitsType>(dtype), B, V, ld, params,
                    reinterpret_cast<int64_t*>(ids), reinterpret_cast<float*>(probs), threads);
      },
      py::arg("logits"), py::arg("dtype"), py::arg("B"), py::arg("V"), py::arg("ld"), py::arg("temperature"),
      py::arg("top_k"), py::arg("top_p"), py::arg("min_p"), py::arg("seed"), py::arg("offset"), py::arg("ids"),
      py::arg("probs"), py::arg("threads"),
      "Sample one token per row of logits [B, V]; ids[row] < 0 flags a bad row (see cpu/sampling.h).");
  m.def(
      "philox4x32",
      [](uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3, uint32_t k0, uint32_t k1) {
        uint32_t c[4] = {c0, c1, c2, c3};
        philox4x32(c, k0, k1);
        return py::make_tuple(c[0], c[1], c[2], c[3]);
      },
      "Philox4x32-10 of one counter (for cross-checking the Python and Triton definitions).");
  m.def("row_uniform", &row_uniform, py::arg("seed"), py::arg("offset"));
}
