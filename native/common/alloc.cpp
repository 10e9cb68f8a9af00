#include "common/alloc.h"

#include <atomic>

namespace qv {

namespace {
std::atomic<uint32_t> fail_countdown{0};
}  // namespace

void fail_next_allocations(uint32_t n) { fail_countdown.store(n, std::memory_order_relaxed); }

void allocation_point() {
  uint32_t n = fail_countdown.load(std::memory_order_relaxed);
  while (n != 0) {
    if (fail_countdown.compare_exchange_weak(n, n - 1, std::memory_order_relaxed)) throw std::bad_alloc();
  }
}

}  // namespace qv
