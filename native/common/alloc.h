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
