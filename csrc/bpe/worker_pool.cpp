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

namespace {

// One parallel_items call. Queue entries hold it by shared_ptr, so an entry a pool thread pops
// after the call has returned still points at live memory: it finds no index left and never calls
// fn (whose captures lived on the caller's stack).
struct Job {
  const std::function<void(size_t)>* fn = nullptr;
  size_t n = 0;
  std::atomic<size_t> next{0};
  std::atomic<int> inside{0};  // pool threads inside help()
  std::mutex m;
  std::condition_variable left;

  void work() {
    for (size_t i; (i = next.fetch_add(1)) < n;) (*fn)(i);
  }
  // A pool thread counts itself in before claiming an index, so once the caller has seen every
  // index claimed and then inside == 0, no call of fn is still running (all atomics seq_cst).
  void help() {
    inside.fetch_add(1);
    work();
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

void parallel_items(size_t n, int helpers, const std::function<void(size_t)>& fn) {
  helpers = static_cast<int>(std::min<size_t>(std::max(helpers, 0), n > 0 ? n - 1 : 0));
  Pool* p = helpers > 0 ? pool() : nullptr;
  if (!p) {
    for (size_t i = 0; i < n; ++i) fn(i);
    return;
  }
  auto job = std::make_shared<Job>();
  job->fn = &fn;
  job->n = n;
  p->submit(job, helpers);
  job->work();
  p->withdraw(job.get());
  job->wait_helpers();
}

}  // namespace pyllmops::bpe
