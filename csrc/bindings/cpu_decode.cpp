// Binding for the fused decode step (csrc/cpu/decode.h). pyllmops/models/fused_decode.py checks
// every pointer's tensor (device, dtype, contiguity, shape) when it builds the layer table and
// each step's operands; here they are only converted. The GIL is released while a step runs.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <tuple>

#include "cpu/cpu_features.h"
#include "cpu/decode.h"

namespace py = pybind11;
using namespace pyllmops::cpu;

namespace {

// (kind, weight, scales, zeros, N, K, group_size, bf16_x, perm: int64 [K] or 0)
using LinearSpec = std::tuple<int, uintptr_t, uintptr_t, uintptr_t, int64_t, int64_t, int64_t, bool, uintptr_t>;

DecodeLinear to_linear(const LinearSpec& s) {
  const auto [kind, weight, scales, zeros, N, K, group_size, bf16_x, perm] = s;
  if (kind < DecodeLinear::kFloat32 || kind > DecodeLinear::kInt8) throw py::value_error("unknown linear kind");
  if (bf16_x && kind == DecodeLinear::kFloat32) throw py::value_error("bf16_x applies to int4 and int8 linears");
  if (perm && kind != DecodeLinear::kInt4) throw py::value_error("perm (act-order) applies to int4 linears");
  return {static_cast<DecodeLinear::Kind>(kind), reinterpret_cast<const void*>(weight),
          reinterpret_cast<const float*>(scales), reinterpret_cast<const uint8_t*>(zeros), N, K, group_size, bf16_x,
          reinterpret_cast<const int64_t*>(perm)};
}

// A model's layer table, built once (add_layer per layer) and run once per step.
struct LlamaDecoder {
  LlamaDims dims;
  std::vector<DecodeLayer> layers;
};

}  // namespace

void bind_decode(py::module_& m) {
  py::class_<LlamaDecoder>(m, "LlamaDecoder")
      .def(py::init([](int64_t dim, int64_t n_heads, int64_t n_kv_heads, int64_t head_dim, int64_t ffn_dim,
                       float eps) { return LlamaDecoder{{dim, n_heads, n_kv_heads, head_dim, ffn_dim, eps}, {}}; }),
           py::arg("dim"), py::arg("n_heads"), py::arg("n_kv_heads"), py::arg("head_dim"), py::arg("ffn_dim"),
           py::arg("eps"))
      .def(
          "add_layer",
          [](LlamaDecoder& d, uintptr_t input_norm, uintptr_t post_norm, const std::vector<LinearSpec>& lin) {
            if (lin.size() != 7) throw py::value_error("add_layer takes 7 linears: q, k, v, o, gate, up, down");
            d.layers.push_back({reinterpret_cast<const float*>(input_norm), reinterpret_cast<const float*>(post_norm),
                                to_linear(lin[0]), to_linear(lin[1]), to_linear(lin[2]), to_linear(lin[3]),
                                to_linear(lin[4]), to_linear(lin[5]), to_linear(lin[6])});
          },
          py::arg("input_norm"), py::arg("post_norm"), py::arg("linears"))
      .def(
          "step",
          [](const LlamaDecoder& d, uintptr_t x, int64_t batch, uintptr_t positions, uintptr_t rope_cos,
             uintptr_t rope_sin, uintptr_t k_cache, uintptr_t v_cache, int64_t capacity, int64_t slot,
             uintptr_t key_mask, int threads, bool kv_half) {
            if (kv_half && !has_f16c()) throw py::value_error("a float16 KV cache needs a CPU with F16C");
            py::gil_scoped_release release;
            const DecodeStep step{batch,
                                  reinterpret_cast<const int64_t*>(positions),
                                  reinterpret_cast<const float*>(rope_cos),
                                  reinterpret_cast<const float*>(rope_sin),
                                  reinterpret_cast<void* const*>(k_cache),
                                  reinterpret_cast<void* const*>(v_cache),
                                  capacity,
                                  slot,
                                  reinterpret_cast<const bool*>(key_mask),
                                  kv_half};
            llama_decode_layers(d.dims, d.layers, step, reinterpret_cast<float*>(x), threads);
          },
          py::arg("x"), py::arg("batch"), py::arg("positions"), py::arg("rope_cos"), py::arg("rope_sin"),
          py::arg("k_cache"), py::arg("v_cache"), py::arg("capacity"), py::arg("slot"), py::arg("key_mask"),
          py::arg("threads"), py::arg("kv_half") = false)
      .def_property_readonly("n_layers", [](const LlamaDecoder& d) { return d.layers.size(); });
  m.def(
      "f32_gemm",
      [](uintptr_t x, int64_t M, int64_t K, uintptr_t w, int64_t N, uintptr_t out, int threads) {
        py::gil_scoped_release release;
        f32_gemm(reinterpret_cast<const float*>(x), M, K, reinterpret_cast<const float*>(w), N,
                 reinterpret_cast<float*>(out), threads);
      },
      py::arg("x"), py::arg("M"), py::arg("K"), py::arg("w"), py::arg("N"), py::arg("out"), py::arg("threads") = 0);
  m.def("has_f16c", &has_f16c, "whether the CPU converts float16 in hardware (the fused step's float16 KV cache)");
}
