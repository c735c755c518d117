// Host thread pool-free parallel_for: splits a range over std::threads and
// hands the first exception back to the caller instead of terminating.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

namespace pixdisc {

namespace detail {
inline std::atomic<int>& thread_setting() {
  static std::atomic<int> n{0};  // 0 means "all hardware threads"
  return n;
}
}  // namespace detail

inline int get_num_threads() {
  const int n = detail::thread_setting().load();
  if (n > 0) return n;
  const unsigned hw = std::thread::hardware_concurrency();
  return hw == 0 ? 1 : static_cast<int>(hw);
}

// n <= 0 restores the default (all hardware threads).
inline void set_num_threads(int n) { detail::thread_setting().store(n > 0 ? n : 0); }

// Number of workers parallel_for will use for this size (for sizing scratch).
inline int planned_workers(int64_t n, int64_t min_chunk, int max_workers = 0) {
  int workers = get_num_threads();
  if (max_workers > 0) workers = std::min(workers, max_workers);
  const int64_t by_size = std::max<int64_t>(1, n / std::max<int64_t>(1, min_chunk));
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(workers, by_size)));
}

// Calls fn(begin, end, worker) on contiguous chunks of [0, n). Each worker gets
// one chunk, so per-worker scratch (indexed by `worker`) needs no locking.
// `min_chunk` keeps tiny inputs on the calling thread.
template <typename Fn>
void parallel_for(int64_t n, int64_t min_chunk, Fn&& fn, int max_workers = 0) {
  if (n <= 0) return;
  const int workers = planned_workers(n, min_chunk, max_workers);
  if (workers <= 1) {
    fn(int64_t(0), n, 0);
    return;
  }
  std::exception_ptr error;
  std::mutex error_mutex;
  auto run = [&](int w) {
    const int64_t begin = n * w / workers;
    const int64_t end = n * (w + 1) / workers;
    try {
      fn(begin, end, w);
    } catch (...) {
      std::lock_guard<std::mutex> lock(error_mutex);
      if (!error) error = std::current_exception();
    }
  };
  std::vector<std::thread> threads;
  threads.reserve(workers - 1);
  for (int w = 1; w < workers; ++w) threads.emplace_back(run, w);
  run(0);
  for (auto& t : threads) t.join();
  if (error) std::rethrow_exception(error);
}


}  // namespace pixdisc
