#include "common/alloc.h"

#include <sys/mman.h>

#include <atomic>
#include <cstdint>

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

void* map_huge_pages(size_t bytes) {
  // 2 MB-aligned inside a mapping one huge page larger; the slack on either side is unmapped.
  const size_t size = huge_pages_bytes(bytes);
  const size_t map = size + kHugePage;
  void* m = mmap(nullptr, map, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (m == MAP_FAILED) throw std::bad_alloc();
  const uintptr_t base = reinterpret_cast<uintptr_t>(m);
  const uintptr_t p = (base + kHugePage - 1) & ~(uintptr_t{kHugePage} - 1);
  if (p > base) munmap(m, p - base);
  if (base + map > p + size) munmap(reinterpret_cast<void*>(p + size), base + map - (p + size));
#ifdef MADV_HUGEPAGE
  madvise(reinterpret_cast<void*>(p), size, MADV_HUGEPAGE);
#endif
  return reinterpret_cast<void*>(p);
}

void unmap_huge_pages(void* p, size_t bytes) noexcept { munmap(p, huge_pages_bytes(bytes)); }

void lazy_free_huge_pages(void* p, size_t bytes) noexcept {
#ifdef MADV_FREE
  madvise(p, huge_pages_bytes(bytes), MADV_FREE);
#else
  (void)p;
  (void)bytes;
#endif
}

}  // namespace qv
