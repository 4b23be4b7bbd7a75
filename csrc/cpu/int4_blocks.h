// How the int4 weight-only kernels walk a weight row: blocks of 128 channels (64 packed bytes),
// each inside one quantization group (group sizes are multiples of 128, or the whole row). Shared
// by the exact (weight_only.cpp) and the bfloat16 (weight_only_bf16.cpp) kernels.
#pragma once
#include <cstdint>
#include <vector>

namespace pyllmops::cpu::int4_blocks {

constexpr int64_t kChannels = 128;

// Blocks in a row of K channels (the last one may be short).
inline int64_t count(int64_t K) { return (K + kChannels - 1) / kChannels; }

// Packed bytes of the row's last block that exist: 1..64.
inline int64_t tail_bytes(int64_t K) { return (K - (count(K) - 1) * kChannels) / 2; }

// The same as the mask of a 64-byte masked load.
inline uint64_t tail_mask(int64_t K) {
  const int64_t t = tail_bytes(K);
  return t == 64 ? ~0ull : (1ull << t) - 1;
}

// The quantization group of each of B blocks.
inline std::vector<int32_t> groups(int64_t B, int64_t group_size) {
  std::vector<int32_t> g(static_cast<size_t>(B));
  for (int64_t b = 0; b < B; ++b) g[b] = static_cast<int32_t>(b * kChannels / group_size);
  return g;
}

}  // namespace pyllmops::cpu::int4_blocks
