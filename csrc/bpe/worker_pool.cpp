#include "bpe/worker_pool.h"

#include <pthread.h>
#include <sched.h>
#include <signal.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <deque>
#include <memory>
#include <mutex>
#include <system_error>
#include <thread>
#include <vector>

namespace pyllmops::bpe {

// One ParallelItems run. Queue entries hold it by shared_ptr, so an entry a pool thread pops after
// the run has finished still points at live memory: it finds no index left and never calls fn
// (whose captures may have gone with the caller's stack frame).
struct ParallelItems::Job {
  static constexpr size_t kNotYet = ~size_t{0};

  Job(size_t n_, std::function<void(size_t)> fn_) : fn(std::move(fn_)), n(n_), order(new std::atomic<size_t>[n_]) {
    for (size_t k = 0; k < n; ++k) order[k].store(kNotYet, std::memory_order_relaxed);
  }

  const std::function<void(size_t)> fn;
  const size_t n;
  std::atomic<size_t> next{0};      // next unclaimed index
  std::atomic<size_t> finished{0};  // slots of `order` handed out
  std::unique_ptr<std::atomic<size_t>[]> order;  // indices in order of finishing
  std::atomic<int> inside{0};       // pool threads inside help()
  std::mutex m;
  std::condition_variable left;

  // Runs items while more than `leave` are unclaimed. The release store publishes what fn(i) wrote
  // to whoever reads i from `order`.
  void work(size_t leave) {
    while (n - std::min(n, next.load()) > leave) {
      const size_t i = next.fetch_add(1);
      if (i >= n) break;
      fn(i);
      order[finished.fetch_add(1)].store(i, std::memory_order_release);
    }
  }
  // A pool thread counts itself in before claiming an index, so once the caller has seen every
  // index claimed and then inside == 0, no call of fn is still running (all atomics seq_cst).
  void help() {
    inside.fetch_add(1);
    work(0);
    if (inside.fetch_sub(1) == 1) {
      std::lock_guard<std::mutex> lk(m);
      left.notify_all();
    }
  }
  void wait_helpers() {
    std::unique_lock<std::mutex> lk(m);
    left.wait(lk, [this] { return inside.load() == 0; });
  }
};

using Job = ParallelItems::Job;

class Pool {
 public:
  // Queues `helpers` entries for job, first growing the pool to `helpers` threads.
  void submit(const std::shared_ptr<Job>& job, int helpers) {
    {
      std::lock_guard<std::mutex> lk(m_);
      if (stop_) return;
      grow(helpers);
      for (int i = 0; i < helpers; ++i) queue_.push_back(job);
    }
    if (helpers == 1) ready_.notify_one(); else ready_.notify_all();
  }
  // Drops job's entries that no thread has popped yet (they would find nothing to do).
  void withdraw(const Job* job) {
    std::lock_guard<std::mutex> lk(m_);
    queue_.erase(std::remove_if(queue_.begin(), queue_.end(), [job](const auto& j) { return j.get() == job; }),
                 queue_.end());
  }
  // Stops and joins the threads; queued entries are left to their callers, which finish their
  // jobs on their own threads.
  void stop() {
    {
      std::lock_guard<std::mutex> lk(m_);
      stop_ = true;
    }
    ready_.notify_all();
    for (auto& t : threads_) t.join();
    threads_.clear();
  }

 private:
  void grow(int helpers) {
    // Pool threads take no signals: they go to the interpreter's threads, as Python expects.
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old);
    try {
      while (static_cast<int>(threads_.size()) < helpers) threads_.emplace_back([this] { loop(); });
    } catch (const std::system_error&) {
      // No more threads to be had: the callers do the work themselves.
    }
    pthread_sigmask(SIG_SETMASK, &old, nullptr);
  }
  void loop() {
    for (;;) {
      std::shared_ptr<Job> job;
      {
        std::unique_lock<std::mutex> lk(m_);
        ready_.wait(lk, [this] { return stop_ || !queue_.empty(); });
        if (stop_) return;
        job = std::move(queue_.front());
        queue_.pop_front();
      }
      job->help();
    }
  }

  std::mutex m_;
  std::condition_variable ready_;
  std::deque<std::shared_ptr<Job>> queue_;
  std::vector<std::thread> threads_;
  bool stop_ = false;
};

namespace {

// g_pool is made with new and never deleted: a forked child drops its copy (the threads it names
// do not exist there; joining or destroying them would be undefined), and a call racing with exit
// must not find freed memory. The threads of the live pool are joined at exit by g_reaper.
std::mutex g_mutex;  // guards g_pool and g_exiting; held across fork() by the handlers below
Pool* g_pool = nullptr;
bool g_exiting = false;

void lock_for_fork() { g_mutex.lock(); }
void unlock_in_parent() { g_mutex.unlock(); }
void reset_in_child() {
  g_pool = nullptr;
  g_mutex.unlock();
}

Pool* pool() {
  std::lock_guard<std::mutex> lk(g_mutex);
  if (!g_pool && !g_exiting) {
    static std::once_flag registered;
    std::call_once(registered, [] { pthread_atfork(lock_for_fork, unlock_in_parent, reset_in_child); });
    g_pool = new Pool();
  }
  return g_pool;
}

struct Reaper {
  ~Reaper() {
    Pool* p;
    {
      std::lock_guard<std::mutex> lk(g_mutex);
      g_exiting = true;
      p = g_pool;
    }
    if (p) p->stop();
  }
} g_reaper;

}  // namespace

int usable_cpus() {
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof(set), &set) == 0) return std::max(1, CPU_COUNT(&set));
  return std::max(1u, std::thread::hardware_concurrency());
}

ParallelItems::ParallelItems(size_t n, int helpers, std::function<void(size_t)> fn)
    : job_(std::make_shared<Job>(n, std::move(fn))) {
  helpers = static_cast<int>(std::min<size_t>(std::max(helpers, 0), n > 0 ? n - 1 : 0));
  if (helpers > 0 && (pool_ = pool())) pool_->submit(job_, helpers);
}

ParallelItems::~ParallelItems() { finish(); }

void ParallelItems::work(size_t leave) { job_->work(leave); }

bool ParallelItems::next_finished(size_t* i) {
  if (taken_ == job_->n) return false;
  const size_t v = job_->order[taken_].load(std::memory_order_acquire);
  if (v == Job::kNotYet) return false;
  *i = v;
  ++taken_;
  return true;
}

void ParallelItems::finish() {
  if (finished_) return;
  finished_ = true;
  job_->work(0);
  if (pool_) pool_->withdraw(job_.get());  // unpopped entries would find nothing to do
  job_->wait_helpers();
}

void parallel_items(size_t n, int helpers, const std::function<void(size_t)>& fn) {
  ParallelItems(n, helpers, fn).finish();
}

}  // namespace pyllmops::bpe
