// Row tiles of x for the weight-only kernels, whose tile height is a template argument (it sizes
// their register arrays of accumulators).
#pragma once
#include <algorithm>
#include <cstdint>
#include <type_traits>

namespace pyllmops::cpu {

namespace detail {
template <int MT, typename F>
void row_tile(int64_t rows, int64_t m0, F& fn) {
  if constexpr (MT > 1) {
    if (rows < MT) return row_tile<MT - 1>(rows, m0, fn);
  }
  fn(std::integral_constant<int, MT>{}, m0);
}
}  // namespace detail

// Runs fn(std::integral_constant<int, MT>{}, m0) over rows [0, M) in tiles of kMax rows (the last
// one shorter: MT = its height).
template <int kMax, typename F>
void for_row_tiles(int64_t M, F&& fn) {
  for (int64_t m0 = 0; m0 < M; m0 += kMax) detail::row_tile<kMax>(std::min<int64_t>(kMax, M - m0), m0, fn);
}

}  // namespace pyllmops::cpu
