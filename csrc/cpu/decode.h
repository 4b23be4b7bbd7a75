// One decode step of a Llama decoder stack in one call: for every layer, RMSNorm, the q/k/v
// projections, rotate-half RoPE, the KV-cache append, attention of each new token against its
// row's cache, the output projection and residual, RMSNorm, SwiGLU and the down projection and
// residual. The projections run the weight-only kernels of weight_only.h (int4, int8) or a float32
// one; everything else is small loops on [B, dim] rows. Torch-free; the Python side
// (pyllmops/models/fused_decode.py) builds the layer table from the modules and validates it.
#pragma once
#include <cstdint>
#include <vector>

namespace pyllmops::cpu {

// y [M, N] = x [M, K] @ W^T; the layouts are those of weight_only.h.
struct DecodeLinear {
  enum Kind : int { kFloat32 = 0, kInt4 = 1, kInt8 = 2 };
  Kind kind;
  const void* weight;     // float32 [N, K] | uint8 [N, K/2] | int8 [N, K]
  const float* scales;    // int4: [N, G]; int8: [N]; float32: unused
  const uint8_t* zeros;   // int4: [N, G]
  int64_t N, K, group_size;  // int4: group_size resolved (K for per-channel)
  bool bf16_x;               // int4 / int8: x rounded to bfloat16 (w4a16_gemm_bf16, w8a16_gemm_bf16)
  const int64_t* perm;       // int4 act-order (GPTQ desc_act): x's columns taken in this order [K]; or nullptr
};

struct DecodeLayer {
  const float* input_norm;  // [dim]
  const float* post_norm;   // [dim]
  DecodeLinear q, k, v, o, gate, up, down;
};

struct LlamaDims {
  int64_t dim, n_heads, n_kv_heads, head_dim, ffn_dim;
  float eps;
};

// What one step reads besides the weights. Row b's new token goes to cache slot `slot` of every
// layer (k_cache[l], v_cache[l]: [B, n_kv_heads, capacity, head_dim], float32, or IEEE float16
// when kv_half: written rounded to nearest even, read as float32; needs F16C) at RoPE position
// positions[b] (rows of rope_cos / rope_sin [*, head_dim]); it attends to slots [0, slot] where
// key_mask [B, capacity] is true (nullptr: all of them).
struct DecodeStep {
  int64_t batch;
  const int64_t* positions;
  const float* rope_cos;
  const float* rope_sin;
  void* const* k_cache;
  void* const* v_cache;
  int64_t capacity, slot;
  const bool* key_mask;
  bool kv_half;
};

// x [B, dim] float32: the embeddings in, the last layer's output out (before the final norm).
void llama_decode_layers(const LlamaDims& dims, const std::vector<DecodeLayer>& layers, const DecodeStep& step,
                         float* x, int threads);

// The float32 projection alone (x [M, K], W [N, K], out [M, N]), for tests.
void f32_gemm(const float* x, int64_t M, int64_t K, const float* w, int64_t N, float* out, int threads);

}  // namespace pyllmops::cpu
