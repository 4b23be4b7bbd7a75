// A process-wide pool of persistent helper threads for encode_batch.
//
// Why persistent: the piece cache is per thread (Encoder::thread_cache), so a thread made per call
// starts it cold (measured: 10-17% more time for half of bench_bpe's batch) and pays thread
// start-up besides; pool threads keep theirs warm across calls.
// The pool is made on first use, grows to the largest helper count asked for, is abandoned in a
// forked child (whose copy has no threads; the child makes its own on first use) and is stopped and
// joined at exit. Callers on several threads at once share it: each call queues its own job and
// works on it too, so a call never waits for a pool thread to become free.
#pragma once
#include <cstddef>
#include <functional>
#include <memory>

namespace pyllmops::bpe {

class Pool;

// CPUs this process may run on (its affinity mask), at least 1.
int usable_cpus();

// Calls fn(i) exactly once for each i in [0, n): on the calling thread and on up to `helpers` pool
// threads, each taking the next unclaimed index (dynamic scheduling, so uneven items balance).
// The caller can collect finished indices while the pool threads still run (to overlap its own
// serial post-processing with their work). fn must not throw (catch inside it).
//
//   ParallelItems run(n, helpers, fn);
//   run.work(k);                        // caller runs items until at most k are unclaimed
//   for (size_t i; run.next_finished(&i);) use(i);   // never blocks
//   run.finish();                       // runs the rest, waits; now every index is finished
//
// fn, and whatever it refers to, must outlive finish() (the destructor calls it).
class ParallelItems {
 public:
  ParallelItems(size_t n, int helpers, std::function<void(size_t)> fn);
  ~ParallelItems();
  ParallelItems(const ParallelItems&) = delete;
  ParallelItems& operator=(const ParallelItems&) = delete;

  // Runs unclaimed items on the calling thread while more than `leave` are unclaimed.
  void work(size_t leave = 0);
  // The next finished index not handed out before (in order of finishing): true and *i; false if
  // none is finished right now.
  bool next_finished(size_t* i);
  // work(0), then waits until every pool thread has left the job.
  void finish();

  struct Job;

 private:
  std::shared_ptr<Job> job_;
  Pool* pool_ = nullptr;  // the pool holding job_'s entries, if any
  size_t taken_ = 0;
  bool finished_ = false;
};

// ParallelItems(n, helpers, fn).finish().
void parallel_items(size_t n, int helpers, const std::function<void(size_t)>& fn);

}  // namespace pyllmops::bpe
