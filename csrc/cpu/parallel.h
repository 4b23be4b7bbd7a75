// A minimal parallel-for for the CPU kernels: split [0, n) into contiguous chunks over up to
// `threads` std::threads (the caller's thread takes the first chunk). No pool: the kernels that use
// it do milliseconds of work per call, against ~20 us to start a thread.
#pragma once
#include <cstdint>
#include <functional>

namespace pyllmops::cpu {

// Threads to use when the caller passes 0: hardware concurrency, at least 1.
int default_threads();

// Runs fn(begin, end) on disjoint chunks covering [0, n). Chunks are at least `grain` long.
// Exceptions from any chunk are rethrown on the calling thread.
void parallel_for(int64_t n, int threads, int64_t grain, const std::function<void(int64_t, int64_t)>& fn);

}  // namespace pyllmops::cpu
