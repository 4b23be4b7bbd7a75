// Binding for the causal prefill attention (csrc/cpu/prefill_attention.h). pyllmops/models/llama.py
// (attention) checks the tensors (CPU, float32, rows of D contiguous values, shapes) before it
// calls; here the pointers are only converted. The GIL is released while it runs.
#include <pybind11/pybind11.h>

#include "cpu/prefill_attention.h"

namespace py = pybind11;
using namespace pyllmops::cpu;

void bind_attention(py::module_& m) {
  m.def("causal_attention_supported", &causal_attention_supported, py::arg("head_dim"),
        "whether causal_attention serves this head_dim on this CPU (64 or 128; AVX2 + FMA or AVX-512)");
  m.def(
      "causal_attention",
      [](uintptr_t q, int64_t q_b, int64_t q_h, uintptr_t k, int64_t k_b, int64_t k_h, uintptr_t v, int64_t v_b,
         int64_t v_h, int64_t B, int64_t H, int64_t KV, int64_t T, int64_t D, uintptr_t out, int threads) {
        if (!causal_attention_supported(D)) throw py::value_error("causal_attention: needs head_dim 64 or 128 and an AVX2 / AVX-512 CPU");
        if (B <= 0 || T <= 0 || KV <= 0 || H % KV != 0)
          throw py::value_error("causal_attention: B, T, KV must be positive and H a multiple of KV");
        py::gil_scoped_release release;
        causal_attention(reinterpret_cast<const float*>(q), q_b, q_h, reinterpret_cast<const float*>(k), k_b, k_h,
                         reinterpret_cast<const float*>(v), v_b, v_h, B, H, KV, T, D, reinterpret_cast<float*>(out),
                         threads);
      },
      py::arg("q"), py::arg("q_b"), py::arg("q_h"), py::arg("k"), py::arg("k_b"), py::arg("k_h"), py::arg("v"),
      py::arg("v_b"), py::arg("v_h"), py::arg("B"), py::arg("H"), py::arg("KV"), py::arg("T"), py::arg("D"),
      py::arg("out"), py::arg("threads") = 0);
}
