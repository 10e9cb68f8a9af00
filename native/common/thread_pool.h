// parallel_for over [0, n) on `threads` OS threads. Work is handed out in chunks from an atomic
// counter, so uneven items balance. threads <= 1 runs inline on the caller (no thread created).
#pragma once
#include <algorithm>
#include <atomic>
#include <cstddef>
#include <exception>
#include <thread>
#include <vector>

namespace qv {

// Threads to use when the caller asks for 0 ("all"): QUIVER_THREADS if set, else the core count.
int default_threads();

inline int resolve_threads(int requested) {
  int t = requested > 0 ? requested : default_threads();
  return std::max(1, t);
}

// fn(begin, end, thread_index). Chunks of `grain` items. Thread 0 is the caller.
//
// An exception thrown by fn (std::bad_alloc: out of memory) stops the handing out of chunks, and
// the first one is rethrown on the caller once every thread has finished; chunks not yet started
// are not run. A thread that cannot be started (no memory, a thread limit) leaves its share to the
// others, so the work is done all the same.
template <typename Fn>
void parallel_for(size_t n, int threads, size_t grain, Fn&& fn) {
  if (n == 0) return;
  grain = std::max<size_t>(1, grain);
  size_t chunks = (n + grain - 1) / grain;
  int t = static_cast<int>(std::min<size_t>(static_cast<size_t>(std::max(1, threads)), chunks));
  if (t <= 1) {
    fn(size_t{0}, n, 0);
    return;
  }
  std::atomic<size_t> next{0};
  std::atomic<bool> failed{false};
  std::exception_ptr error;  // the first exception, written once under failed
  auto worker = [&](int tid) {
    try {
      for (;;) {
        size_t c = next.fetch_add(1, std::memory_order_relaxed);
        if (c >= chunks) break;
        size_t b = c * grain, e = std::min(n, b + grain);
        fn(b, e, tid);
      }
    } catch (...) {
      next.store(chunks, std::memory_order_relaxed);
      if (!failed.exchange(true, std::memory_order_acq_rel)) error = std::current_exception();
    }
  };
  std::vector<std::thread> pool;
  try {
    pool.reserve(t - 1);
    for (int i = 1; i < t; ++i) pool.emplace_back(worker, i);
  } catch (const std::exception&) {
    // Fewer threads than asked: the ones running (and the caller) take every chunk.
  }
  worker(0);
  for (auto& th : pool) th.join();
  if (error) std::rethrow_exception(error);
}

}  // namespace qv
