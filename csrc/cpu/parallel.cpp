#include "cpu/parallel.h"

#include <immintrin.h>
#include <pthread.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace pyllmops::cpu {

int default_threads() { return std::max(1u, std::thread::hardware_concurrency()); }

namespace {

// The first exception thrown by any chunk or task, rethrown on the calling thread afterwards.
class FirstError {
 public:
  template <typename F>
  void run(F&& f) {
    try {
      f();
    } catch (...) {
      std::lock_guard<std::mutex> lock(mu_);
      if (!error_) error_ = std::current_exception();
    }
  }
  void rethrow() const {
    if (error_) std::rethrow_exception(error_);
  }

 private:
  std::mutex mu_;
  std::exception_ptr error_;
};

}  // namespace

void parallel_for(int64_t n, int threads, int64_t grain, const std::function<void(int64_t, int64_t)>& fn) {
  if (n <= 0) return;
  if (threads <= 0) threads = default_threads();
  grain = std::max<int64_t>(grain, 1);
  const int64_t chunks = std::min<int64_t>(threads, (n + grain - 1) / grain);
#ifdef _OPENMP
  const bool nested = omp_in_parallel();
#else
  const bool nested = false;
#endif
  if (chunks <= 1 || nested) {
    fn(0, n);
    return;
  }
  const int64_t step = (n + chunks - 1) / chunks;
  FirstError error;
  auto chunk = [&](int64_t c) {
    const int64_t b = c * step, e = std::min(n, b + step);
    if (b < e) error.run([&] { fn(b, e); });
  };
#ifdef _OPENMP
  // On OpenMP's team: the same runtime (libgomp.so.1) and threads as torch's at::parallel_for and
  // oneDNN, which keep spinning for a while after their region. A pass right before or after a
  // torch GEMM then starts in about a microsecond instead of the ~20 us of new std::threads.
#pragma omp parallel num_threads(static_cast<int>(chunks))
  chunk(omp_get_thread_num());
#else
  std::vector<std::thread> workers;
  for (int64_t c = 1; c < chunks; ++c) workers.emplace_back(chunk, c);
  chunk(0);
  for (auto& t : workers) t.join();
#endif
  error.rethrow();
}

#ifdef _OPENMP
// Tasks handed out one at a time on OpenMP's team (see parallel_for): the team's threads are
// usually still spinning from the torch op that produced the input (the LM head's GEMM, a copy),
// where a pool of our own would have to wake a thread that then competes with a spinning one.
void parallel_tasks(int64_t n, int threads, const std::function<void(int64_t)>& task) {
  if (n <= 0) return;
  if (threads <= 0) threads = default_threads();
  threads = int(std::min<int64_t>(threads, n));
  if (threads <= 1 || omp_in_parallel()) {
    for (int64_t i = 0; i < n; ++i) task(i);
    return;
  }
  FirstError error;
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads)
  for (int64_t i = 0; i < n; ++i) error.run([&] { task(i); });
  error.rethrow();
}
#else
namespace {

// One parallel_tasks call. Lives on the caller's stack; workers join it under the pool mutex and
// the caller leaves only when none is inside.
struct TaskSet {
  TaskSet(const std::function<void(int64_t)>* t, int64_t count) : task(t), n(count) {}
  const std::function<void(int64_t)>* task;
  int64_t n;
  std::atomic<int64_t> next{0};  // the next index to take
  std::atomic<int64_t> done{0};
  int inside = 0;                // workers that joined (guarded by the pool mutex)
  FirstError error;
  void work() {
    for (int64_t i; (i = next.fetch_add(1, std::memory_order_relaxed)) < n;) {
      error.run([&] { (*task)(i); });
      done.fetch_add(1, std::memory_order_release);
    }
  }
};

class WorkerPool {
 public:
  void run(int64_t n, int threads, const std::function<void(int64_t)>& task) {
    std::unique_lock<std::mutex> busy(busy_, std::try_to_lock);
    TaskSet set(&task, n);
    if (!busy.owns_lock()) {  // another caller has the workers
      set.work();
      set.error.rethrow();
      return;
    }
    {
      std::lock_guard<std::mutex> lock(mu_);
      while (int(workers_.size()) < threads - 1) workers_.emplace_back([this] { loop(); });
      current_ = &set;
      wanted_ = threads - 1;
      generation_.fetch_add(1, std::memory_order_release);
    }
    wake_.notify_all();
    set.work();
    while (set.done.load(std::memory_order_acquire) < n) _mm_pause();
    std::unique_lock<std::mutex> lock(mu_);
    current_ = nullptr;
    left_.wait(lock, [&] { return set.inside == 0; });
    set.error.rethrow();
  }

 private:
  void loop() {
    uint64_t seen = generation_.load(std::memory_order_acquire);
    for (;;) {
      // Spin a little first: back-to-back calls (a decode loop, a batch of requests) then start
      // without a futex wake-up.
      const auto until = std::chrono::steady_clock::now() + std::chrono::microseconds(100);
      while (generation_.load(std::memory_order_acquire) == seen && std::chrono::steady_clock::now() < until)
        for (int i = 0; i < 16; ++i) _mm_pause();
      std::unique_lock<std::mutex> lock(mu_);
      wake_.wait(lock, [&] { return generation_.load(std::memory_order_relaxed) != seen; });
      seen = generation_.load(std::memory_order_relaxed);
      TaskSet* set = current_;
      if (!set || wanted_ <= 0) continue;
      --wanted_;
      ++set->inside;
      lock.unlock();
      set->work();
      lock.lock();
      if (--set->inside == 0) left_.notify_all();
    }
  }

  std::mutex busy_;  // one caller at a time
  std::mutex mu_;
  std::condition_variable wake_, left_;
  std::atomic<uint64_t> generation_{0};
  TaskSet* current_ = nullptr;
  int wanted_ = 0;  // workers still to join the current set
  std::vector<std::thread> workers_;
};

WorkerPool* g_pool = nullptr;
std::once_flag g_pool_once;

WorkerPool& worker_pool() {
  std::call_once(g_pool_once, [] {
    g_pool = new WorkerPool();  // never destroyed: the workers live until the process exits
    // A forked child has no workers and maybe a held mutex: give it a fresh pool.
    pthread_atfork(nullptr, nullptr, [] { g_pool = new WorkerPool(); });
  });
  return *g_pool;
}

}  // namespace

void parallel_tasks(int64_t n, int threads, const std::function<void(int64_t)>& task) {
  if (n <= 0) return;
  if (threads <= 0) threads = default_threads();
  threads = int(std::min<int64_t>(threads, n));
  if (threads <= 1) {
    for (int64_t i = 0; i < n; ++i) task(i);
    return;
  }
  worker_pool().run(n, threads, task);
}
#endif

}  // namespace pyllmops::cpu
