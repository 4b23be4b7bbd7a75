// Binding for the CUDA sampling kernel. Arguments were validated in pyllmops/ops/sampling.py
// (dtypes, shapes, [B] contiguous parameter tensors on the logits' device); here they are only
// converted.
#include <pybind11/pybind11.h>

#include <stdexcept>
#include <string>

#include "cuda/sampling.h"

namespace py = pybind11;
using namespace pyllmops::cuda;

void bind_cuda_sampling(py::module_& m) {
  m.def(
      "sample_rows",
      [](uintptr_t logits, int dtype, int64_t B, int64_t V, int64_t ld, uintptr_t temperature, uintptr_t top_k,
         uintptr_t top_p, uintptr_t min_p, uintptr_t seed, uintptr_t offset, uintptr_t ids, uintptr_t probs,
         uintptr_t stream) {
        cudaError_t err = sample_rows(
            reinterpret_cast<const void*>(logits), static_cast<DType>(dtype), B, V, ld,
            reinterpret_cast<const float*>(temperature), reinterpret_cast<const int64_t*>(top_k),
            reinterpret_cast<const float*>(top_p), reinterpret_cast<const float*>(min_p),
            reinterpret_cast<const int64_t*>(seed), reinterpret_cast<const int64_t*>(offset),
            reinterpret_cast<int64_t*>(ids), reinterpret_cast<float*>(probs), reinterpret_cast<cudaStream_t>(stream));
        if (err != cudaSuccess) throw std::runtime_error(std::string("sample_rows: ") + cudaGetErrorString(err));
      },
      py::arg("logits"), py::arg("dtype"), py::arg("B"), py::arg("V"), py::arg("ld"), py::arg("temperature"),
      py::arg("top_k"), py::arg("top_p"), py::arg("min_p"), py::arg("seed"), py::arg("offset"), py::arg("ids"),
      py::arg("probs"), py::arg("stream"));
}
