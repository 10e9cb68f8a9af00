// FlatIndex: exact k-NN over vectors stored densely (row-major) as given, with a per-row norm term.
//
// Threading contract: every method may be called from any thread, concurrently with any other.
// A reader-writer gate (common/read_gate.h: readers take no lock, a writer is never starved):
// search(), get_vectors(), serialize() and memory_bytes() hold it shared; add() and remove() hold
// it exclusively, so a search sees the index before or after a whole batch, never part of one.
// size() reads a counter the writers keep, and never waits.
//
// Out of memory: add() reserves its rows and label-map entries before it writes any, so when
// memory runs out it throws std::bad_alloc and the index is unchanged; remove() allocates nothing
// once it starts changing the index.
#pragma once
#include <atomic>
#include <memory>
#include <unordered_map>
#include <vector>

#include "common/index.h"
#include "common/read_gate.h"

namespace qv {

class FlatIndex final : public Index {
 public:
  FlatIndex(uint32_t dim, Metric metric) : dim_(dim), metric_(metric) {}
  static Status create(const IndexOptions& opts, std::unique_ptr<Index>* out);
  static Status deserialize(const EnvelopeInfo& info, std::unique_ptr<Index>* out);

  IndexKind kind() const override { return IndexKind::Flat; }
  uint32_t dim() const override { return dim_; }
  Metric metric() const override { return metric_; }
  size_t size() const override { return size_.load(std::memory_order_relaxed); }
  Status add(const uint32_t* labels, const float* vectors, size_t n, int threads) override;
  Status remove(const uint32_t* labels, size_t n) override;
  Status search(const float* queries, size_t nq, const SearchParams& params, uint32_t* out_labels,
                float* out_distances) const override;
  Status serialize(Bytes* out) const override;
  Status get_vectors(const uint32_t* labels, size_t n, float* out) const override;
  size_t memory_bytes() const override;

 private:
  void search_one_scan(const float* q, const SearchParams& p, int threads, uint32_t* ol, float* od) const;
  void search_subset(const float* q, const std::vector<uint32_t>& slots, uint32_t k, uint32_t* ol, float* od) const;
  template <Metric M>
  void search_blocked(const float* q, size_t nq, const SearchParams& p, int threads, uint32_t* ol, float* od) const;
  float distance(const float* q, size_t row) const;
  void set_norm(size_t row);

  const uint32_t dim_;
  const Metric metric_;
  mutable ReadGate gate_;
  std::atomic<size_t> size_{0};   // labels_.size(), for size() without the gate
  std::vector<float> data_;       // size() * dim_, as added
  std::vector<float> norms_;      // per row: l2 |x|^2, cosine 1/|x| (inv_norm_f32), ip unused
  std::vector<uint32_t> labels_;  // label of each row
  std::unordered_map<uint32_t, uint32_t> slot_of_;
};

}  // namespace qv
