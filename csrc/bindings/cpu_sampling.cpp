// Binding for the CPU sampling kernel. Arguments were validated in pyllmops/ops/sampling.py
// (dtypes, shapes, [B] contiguous parameter tensors on the CPU); here they are only converted.
// Each per-row parameter arrives as (address, scalar): address 0 means the scalar applies to
// every row (a scalar seed s means seed[row] = s + row), so the eager path allocates nothing.
#include <pybind11/pybind11.h>

#include <cstdint>

#include "cpu/sampling.h"

namespace py = pybind11;
using namespace pyllmops::cpu;

namespace {
template <class T>
RowArg<T> row_arg(uintptr_t ptr, T value) {
  return RowArg<T>{reinterpret_cast<const T*>(ptr), value};
}
}  // namespace

void bind_sampling(py::module_& m) {
  m.def(
      "sample_rows",
      [](uintptr_t logits, int dtype, int64_t B, int64_t V, int64_t ld, uintptr_t t_ptr, float t, uintptr_t k_ptr,
         int64_t k, uintptr_t p_ptr, float p, uintptr_t q_ptr, float q, uintptr_t seed_ptr, int64_t seed,
         uintptr_t offset_ptr, int64_t offset, uintptr_t ids, uintptr_t probs, int threads) {
        const SampleParams params{row_arg(t_ptr, t),       row_arg(k_ptr, k),       row_arg(p_ptr, p),
                                  row_arg(q_ptr, q),       row_arg(seed_ptr, seed), row_arg(offset_ptr, offset)};
        py::gil_scoped_release release;
        return sample_rows(reinterpret_cast<const void*>(logits), static_cast<LogitsType>(dtype), B, V, ld, params,
                           reinterpret_cast<int64_t*>(ids), reinterpret_cast<float*>(probs), threads);
      },
      "Sample one token per row of logits [B, V] into ids; ids[row] < 0 flags a bad row (see cpu/sampling.h). "
      "Per-row parameters: (address of a [B] array, or 0 and the scalar for every row). Returns the first "
      "flagged row or -1.");
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
