// A process-wide pool of persistent helper threads for encode_batch.
//
// Why persistent: the piece cache is per thread (Encoder::thread_cache), so a thread made per call
// starts it cold and pays thread start-up besides; pool threads keep theirs warm across calls.
// The pool is made on first use, grows to the largest helper count asked for (never past the CPUs
// this process may run on, minus the caller), is abandoned in a forked child (whose copy has no
// threads; the child makes its own on first use) and is stopped and joined at exit. Callers on
// several threads at once share it: each call queues its own job and works on it too, so a call
// never waits for a helper to become free.
#pragma once
#include <cstddef>
#include <functional>

namespace pyllmops::bpe {

// CPUs this process may run on (its affinity mask), at least 1.
int usable_cpus();

// Calls fn(i) exactly once for each i in [0, n): on the calling thread and on up to `helpers` pool
// threads, which take the next unclaimed index (dynamic scheduling, so uneven items balance).
// Returns once every call has returned. fn must not throw (catch inside it).
void parallel_items(size_t n, int helpers, const std::function<void(size_t)>& fn);

}  // namespace pyllmops::bpe
