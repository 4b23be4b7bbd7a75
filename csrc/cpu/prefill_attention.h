// Causal self-attention of a prompt on the CPU (prefill with no cached prefix and no padding):
// every query position p attends to the key positions 0..p of the same sequence. Torch-free; the
// Python side (pyllmops/models/llama.py: attention) checks the tensors and falls back to torch's
// scaled_dot_product_attention for every other case.
#pragma once
#include <cstdint>

namespace pyllmops::cpu {

// Whether causal_attention serves head_dim D on this CPU (AVX-512 F/BW/VL or AVX2 + FMA; D 64 or 128).
bool causal_attention_supported(int64_t D);

// q: [B, H, T, D] float32 with rows of D contiguous values, batch / head strides q_b, q_h
// (elements); k, v: [B, KV, T, D] likewise (strides k_b, k_h, v_b, v_h); H a multiple of KV (query
// head h reads KV head h / (H / KV)). out: [B, T, H * D] contiguous, softmax(q k^T / sqrt(D) +
// causal mask) v, float32 sums (flash-style: key blocks with a running max per row).
void causal_attention(const float* q, int64_t q_b, int64_t q_h, const float* k, int64_t k_b, int64_t k_h,
                      const float* v, int64_t v_b, int64_t v_h, int64_t B, int64_t H, int64_t KV, int64_t T,
                      int64_t D, float* out, int threads);

}  // namespace pyllmops::cpu
