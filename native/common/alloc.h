// Memory of the native core. Running out of it is a runtime condition, never a crash: allocation
// throws std::bad_alloc (aligned storage included), parallel_for carries it to its caller, and the
// binding reports it as RESOURCE_EXHAUSTED (native/napi/errors.h). A write allocates what it keeps
// (storage, label-map entries) before it changes anything; each index's header says what a write
// that runs out of memory leaves behind.
#pragma once
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <new>
#include <unordered_map>
#include <utility>

namespace qv {

// Test hook: the next n calls of allocation_point() throw std::bad_alloc (process-wide; 0 turns it
// off). For tests of the out-of-memory paths; nothing else sets it.
void fail_next_allocations(uint32_t n);
// Called where a write starts reserving memory (StagedLabels) and where the binding allocates a
// search's results or a row buffer: throws std::bad_alloc while the test hook counts down, else
// costs one relaxed load.
void allocation_point();

// 64-byte aligned storage (chunks of the HNSW graph); throws std::bad_alloc.
inline void* alloc_aligned64(size_t bytes) { return ::operator new(bytes, std::align_val_t{64}); }
inline void free_aligned64(void* p) { ::operator delete(p, std::align_val_t{64}); }

// Fresh anonymous memory in whole 2 MB pages, 2 MB-aligned and advised for transparent huge pages,
// zeroed by the kernel on first touch. Filling it takes one page fault per 2 MB instead of one per
// 4 KB: on the paravirtualized VMs measured a fault costs ~12 us, and writing a fresh 18 MB buffer
// took ~60 ms of CPU in 4 KB pages against ~2.5 ms in huge pages.
constexpr size_t kHugePage = size_t{2} << 20;
// `bytes` rounded up to whole huge pages: what map_huge_pages() maps for it.
inline size_t huge_pages_bytes(size_t bytes) { return (bytes + kHugePage - 1) / kHugePage * kHugePage; }
// Maps huge_pages_bytes(bytes); throws std::bad_alloc. Give it back with unmap_huge_pages(p, bytes).
void* map_huge_pages(size_t bytes);
void unmap_huge_pages(void* p, size_t bytes) noexcept;
// Keeps the mapping of huge_pages_bytes(bytes) at p (from map_huge_pages) but not its contents
// (MADV_FREE): the kernel takes the pages back only under memory pressure, and until then the next
// write reuses them without a fault. Memory freed to the kernel may go back to the host on the VMs
// measured, and mapping it again cost tens of ms of faults beside the writes.
void lazy_free_huge_pages(void* p, size_t bytes) noexcept;

// Whether LargeAllocator maps an allocation of `bytes` in huge pages (from half a huge page up).
inline bool large_allocation(size_t bytes) { return bytes >= kHugePage / 2; }

// A std::allocator for large buffers: from half a huge page up, map_huge_pages; below, operator new.
template <typename T>
struct LargeAllocator {
  using value_type = T;
  LargeAllocator() = default;
  template <typename U>
  LargeAllocator(const LargeAllocator<U>&) noexcept {}
  T* allocate(size_t n) {
    if (n > (SIZE_MAX - kHugePage) / sizeof(T)) throw std::bad_alloc();
    const size_t bytes = n * sizeof(T);
    return static_cast<T*>(large_allocation(bytes) ? map_huge_pages(bytes) : ::operator new(bytes));
  }
  void deallocate(T* p, size_t n) noexcept {
    const size_t bytes = n * sizeof(T);
    if (large_allocation(bytes)) unmap_huge_pages(p, bytes);
    else ::operator delete(p);
  }
  template <typename U>
  bool operator==(const LargeAllocator<U>&) const noexcept { return true; }
  template <typename U>
  bool operator!=(const LargeAllocator<U>&) const noexcept { return false; }
};

// Room in v for `need` elements, growing by half at least: appends stay amortized O(1) and at most
// a third of the capacity goes unused (doubling would leave up to half of a large buffer unused).
template <typename V>
void reserve_growing(V& v, size_t need) {
  if (need > v.capacity()) v.reserve(std::max(need, v.capacity() + v.capacity() / 2));
}

// Entries of a label -> V map for the labels of one write, allocated before the write changes the
// map, so that putting them in cannot fail half-way through a batch:
//   StagedLabels<V> staged(labels, n);   allocates (may throw: the map is untouched)
//   staged.reserve(map);                 room in the map's buckets (may throw: no entry changed)
//   staged.put(map, label, v);           insert or update, without allocating
// Every label of the batch gets an entry, also one already in the map (a write may take it out
// and put it back, as an upsert does).
template <typename V>
class StagedLabels {
 public:
  using Map = std::unordered_map<uint32_t, V>;
  StagedLabels(const uint32_t* labels, size_t n) {
    allocation_point();
    nodes_.reserve(n);
    for (size_t i = 0; i < n; ++i) nodes_.emplace(labels[i], V{});
  }
  void reserve(Map& map) {
    // Grows as inserting one by one would (doubling) and never shrinks: reserving the exact size
    // every batch would rehash the whole map every few batches. (At size == buckets * load factor
    // an insert already rehashes, hence >=.)
    const size_t need = map.size() + nodes_.size();
    if (static_cast<double>(need) >= static_cast<double>(map.bucket_count()) * map.max_load_factor())
      map.reserve(std::max(need, 2 * map.size()));
  }
  // label must be one of the staged labels, each put at most once after it left the map.
  void put(Map& map, uint32_t label, V v) noexcept {
    auto it = map.find(label);
    if (it != map.end()) {
      it->second = v;
      return;
    }
    auto node = nodes_.extract(label);
    node.mapped() = v;
    map.insert(std::move(node));  // no rehash: reserve() made room for every staged label
  }

 private:
  Map nodes_;
};

}  // namespace qv
