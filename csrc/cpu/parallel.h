// Parallel loops for the CPU kernels. parallel_for splits [0, n) into contiguous chunks over up to
// `threads` threads (the caller's thread takes the first chunk): OpenMP's team when the core is
// built with OpenMP (the Python extension: the same runtime and warm threads as torch's), else
// fresh std::threads (~20 us each to start). parallel_tasks uses a persistent pool of its own,
// for short kernels that balance their work dynamically.
#pragma once
#include <cstdint>
#include <functional>

namespace pyllmops::cpu {

// Threads to use when the caller passes 0: hardware concurrency, at least 1.
int default_threads();

// Runs fn(begin, end) on disjoint chunks covering [0, n). Chunks are at least `grain` long.
// Exceptions from any chunk are rethrown on the calling thread.
void parallel_for(int64_t n, int threads, int64_t grain, const std::function<void(int64_t, int64_t)>& fn);

// Runs task(i) for every i in [0, n) on the calling thread and up to threads - 1 persistent
// workers (started on first use; after a task they spin ~100 us, then sleep), which take the next
// i as they become free. For kernels of tens of microseconds, where starting threads would cost as
// much as the work. While another caller holds the workers, the task runs on the calling thread
// alone. The first exception of a task is rethrown on the calling thread.
void parallel_tasks(int64_t n, int threads, const std::function<void(int64_t)>& task);

}  // namespace pyllmops::cpu
