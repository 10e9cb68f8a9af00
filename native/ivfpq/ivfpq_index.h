// IvfPqIndex: inverted file (k-means coarse quantizer, nlist lists) with residual product
// quantization (m sub-quantizers of 8 bits), look-up-table scan, and optional exact re-ranking.
//
// Parameters (IndexOptions.num): nlist (1..65536, required), m (1..dim, required; dim is zero-padded
// to m * ceil(dim/m) when m does not divide it), refine (0..1024, default 0: 0 keeps no raw vectors;
// > 0 keeps them and re-ranks refine*k candidates by exact distance), nprobe (default lists probed,
// 0 = min(nlist, 16)), seed (k-means seed, default 1).
//
// Metrics: l2 and cosine quantize in L2 (cosine normalizes vectors on add and queries on search,
// and 1 - cos = |x - y|^2 / 2 for unit vectors); ip assigns points by L2 (smallest residuals, best
// codes) but probes the lists of largest q.c and scores q.x ~ q.c + q.r.
//
// Threading contract: every method may be called from any thread, concurrently with any other.
// A reader-writer gate (common/read_gate.h: readers take no lock, a writer is never starved):
// search(), get_vectors(), serialize(), snapshot() and memory_bytes() hold it shared; add()
// encodes outside it (the quantizers never change once trained_ is set, which is published with
// release after them) and holds it exclusively only to insert; remove() and the end of train()
// hold it exclusively. So a search sees the index before or after a whole batch, never part of
// one. size() reads a counter the writers keep, and never waits.
//
// Out of memory: add() reserves room in every list it touches and the label-map entries before it
// inserts anything, so when memory runs out it throws std::bad_alloc and the index is unchanged;
// train() that runs out leaves the index untrained (it may be trained again).
#pragma once
#include <atomic>
#include <memory>
#include <mutex>
#include <unordered_map>
#include <vector>

#include "common/index.h"
#include "common/read_gate.h"

namespace qv {

// A flat, read-only copy of a trained index for the GPU search (native/cuda): codes row-major.
struct IvfPqSnapshot {
  uint32_t dim = 0, nlist = 0, m = 0, dsub = 0;
  Metric metric = Metric::L2;
  std::vector<float> centroids;       // nlist x dim
  std::vector<float> codebooks;       // m x 256 x dsub
  std::vector<uint32_t> list_offsets;  // nlist + 1: list i holds entries [off[i], off[i+1])
  std::vector<uint32_t> labels;       // one per entry
  std::vector<uint8_t> codes;         // entries x m
};

class IvfPqIndex final : public Index {
 public:
  struct Params {
    uint32_t nlist = 0;
    uint32_t m = 0;
    uint32_t refine = 0;
    uint32_t nprobe = 0;
    uint64_t seed = 1;
  };

  IvfPqIndex(uint32_t dim, Metric metric, const Params& p);
  static Status create(const IndexOptions& opts, std::unique_ptr<Index>* out);
  static Status deserialize(const EnvelopeInfo& info, std::unique_ptr<Index>* out);

  IndexKind kind() const override { return IndexKind::IvfPq; }
  uint32_t dim() const override { return dim_; }
  Metric metric() const override { return metric_; }
  size_t size() const override { return size_.load(std::memory_order_relaxed); }
  bool trained() const override { return trained_.load(std::memory_order_acquire); }
  Status train(const float* data, size_t n, int threads, const ProgressFn& progress) override;
  Status add(const uint32_t* labels, const float* vectors, size_t n, int threads) override;
  Status remove(const uint32_t* labels, size_t n) override;
  Status search(const float* queries, size_t nq, const SearchParams& params, uint32_t* out_labels,
                float* out_distances) const override;
  Status serialize(Bytes* out) const override;
  Status get_vectors(const uint32_t* labels, size_t n, float* out) const override;
  size_t memory_bytes() const override;

  const Params& params() const { return p_; }
  // Bytes of PQ code per vector (m).
  size_t code_bytes() const { return p_.m; }
  Status snapshot(IvfPqSnapshot* out) const;

 private:
  struct List {
    std::vector<uint32_t> labels;
    std::vector<uint8_t> codes;  // transposed blocks of 16 (see ivfpq/scan.h)
    std::vector<float> raw;      // size x dim, only when refine > 0
    size_t size() const { return labels.size(); }
  };
  struct QueryScratch;

  void install_quantizers();  // derived tables from centroids_ and codebooks_
  void encode(const float* x, size_t n, int threads, uint32_t* list_of, uint8_t* codes) const;
  // Appends an entry to a list (room reserved by the caller) and returns its position; the caller
  // records it in where_.
  uint32_t append(uint32_t list, uint32_t label, const uint8_t* code, const float* raw);
  void erase(uint32_t list, uint32_t pos);
  void code_of(const List& l, size_t pos, uint8_t* code) const;
  void search_one(const float* q, const float* coarse_dots, const SearchParams& p, uint32_t nprobe, uint32_t refine,
                  QueryScratch* s, uint32_t* ol, float* od) const;

  const uint32_t dim_;
  const Metric metric_;
  const Params p_;
  const uint32_t dsub_;  // ceil(dim / m)
  const uint32_t dpad_;  // m * dsub

  std::mutex train_mu_;
  std::atomic<bool> trained_{false};
  std::vector<float> centroids_;       // nlist x dim
  std::vector<float> centroid_norms_;  // |c|^2
  std::vector<float> codebooks_;       // m x 256 x dsub
  std::vector<float> codebook_norms_;  // m x 256: |p_jc|^2
  std::vector<float> codebooks_t_;     // m x dsub x 256 (transposed, for the per-query table)
  std::vector<float> term2_;           // l2/cosine: nlist x m x 256 (see search_one)

  mutable ReadGate gate_;
  std::atomic<size_t> size_{0};  // where_.size(), for size() without the gate
  std::vector<List> lists_;
  std::unordered_map<uint32_t, uint64_t> where_;  // label -> list << 32 | position
};

}  // namespace qv
