// A small persistent thread pool for data-parallel loops.
// Workers spin briefly before sleeping so that back-to-back parallel_for calls (decode) do not pay the
// futex wake-up each time.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace ev {

class ThreadPool {
 public:
  // n_threads <= 0: hardware_concurrency(). The calling thread takes part, so n-1 workers are spawned.
  explicit ThreadPool(int n_threads = 0);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int size() const { return n_threads_; }

  // Calls fn(thread_index, begin, end) over [0, n) split into contiguous chunks, one per thread,
  // chunk boundaries rounded to multiples of `grain`. Blocks until all chunks are done.
  void parallel_for(int64_t n, const std::function<void(int, int64_t, int64_t)>& fn, int64_t grain = 1);
  // Calls fn(thread_index, n_threads) once on every thread.
  void run_on_all(const std::function<void(int, int)>& fn);

  // The process-wide pool (size from EDGEVLM_THREADS is NOT read here; callers pass n explicitly).
  static ThreadPool& global();
  static void set_global_threads(int n);

 private:
  void worker_loop(int idx);

  int n_threads_;
  std::vector<std::thread> workers_;
  std::mutex mu_;
  std::condition_variable cv_;
  const std::function<void(int, int)>* job_ = nullptr;
  std::atomic<uint64_t> generation_{0};
  std::atomic<int> pending_{0};
  std::atomic<bool> stop_{false};
};

}  // namespace ev
