// Parallel loops for the CPU kernels, on OpenMP's team when the core is built with OpenMP (the
// Python extension: the same runtime, libgomp.so.1, and so the same threads as torch's, still
// spinning for a while after a torch op), else on std::threads (the sanitizer builds).
#pragma once
#include <cstdint>
#include <functional>

namespace pyllmops::cpu {

// Threads to use when the caller passes 0: hardware concurrency, at least 1.
int default_threads();

// Runs fn(begin, end) on disjoint chunks covering [0, n). Chunks are at least `grain` long.
// Exceptions from any chunk are rethrown on the calling thread.
void parallel_for(int64_t n, int threads, int64_t grain, const std::function<void(int64_t, int64_t)>& fn);

// Runs task(i) for every i in [0, n) on up to `threads` threads (the caller's included), each
// taking the next i as it becomes free: for tasks of uneven cost. Without OpenMP: a persistent
// pool (workers spin ~100 us after a task, then sleep; while another caller holds them, the
// tasks run on the calling thread alone). The first exception of a task is rethrown on the
// calling thread.
void parallel_tasks(int64_t n, int threads, const std::function<void(int64_t)>& task);

}  // namespace pyllmops::cpu
