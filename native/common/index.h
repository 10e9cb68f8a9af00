// The one C++ interface every index kind implements (flat, hnsw, ivfpq). Knows nothing of Node.
//
// Semantics shared by all kinds:
//  * Labels are uint32; kLabelNone (0xFFFFFFFF) is reserved. add() of a label already present
//    replaces its vector (upsert). A batch with the same label twice is refused.
//  * Every entry point validates its whole input first and changes nothing when it refuses.
//  * search() writes nq*k labels and distances, nearest first; missing slots get kLabelNone and
//    +infinity. Distances: l2 = squared Euclidean; ip = 1 - dot; cosine = 1 - cos (vectors are
//    normalized on add, queries on search).
//  * Thread-safety: search() may run concurrently with search(), add() and remove(); each kind
//    documents how it achieves that.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "common/filter.h"
#include "common/format.h"
#include "common/status.h"

namespace qv {

struct SearchParams {
  uint32_t k = 10;
  uint32_t ef = 0;       // hnsw: candidate list size (0 = index default, raised to k)
  uint32_t nprobe = 0;   // ivfpq: inverted lists probed (0 = index default)
  uint32_t refine = 0;   // ivfpq: re-rank refine*k candidates exactly
  bool refine_set = false;  // false: use the index default for refine
  int threads = 0;       // 0 = all (QUIVER_THREADS or core count)
  const Filter* filter = nullptr;  // allow-set, or null for none
  // Bound on one query's estimated work, in terms (common/limits.h, kSearchSyncTermsMax); 0 = none.
  // A search over it is refused with RESOURCE_EXHAUSTED before any work.
  uint64_t terms_max = 0;
};

// Progress of long work (training, builds): fraction in [0,1] and a short phase name.
using ProgressFn = std::function<void(double fraction, const char* phase)>;

class Index {
 public:
  virtual ~Index() = default;
  virtual IndexKind kind() const = 0;
  virtual uint32_t dim() const = 0;
  virtual Metric metric() const = 0;
  virtual size_t size() const = 0;  // live (not removed) points

  // Training (ivfpq). Other kinds need none and refuse it.
  virtual bool trained() const { return true; }
  virtual Status train(const float* data, size_t n, int threads, const ProgressFn& progress) {
    return failed_precondition("this index kind needs no training");
  }

  virtual Status add(const uint32_t* labels, const float* vectors, size_t n, int threads) = 0;
  virtual Status remove(const uint32_t* labels, size_t n) = 0;
  virtual Status search(const float* queries, size_t nq, const SearchParams& params,
                        uint32_t* out_labels, float* out_distances) const = 0;
  // Whole index in the envelope of common/format.h: a point-in-time copy, written once into a
  // buffer of its exact size (Bytes), while writers wait; the checksum comes after they may go on.
  virtual Status serialize(Bytes* out) const = 0;
  // Copies of the stored vectors of `labels` (for get-with-vectors); NOT_FOUND for an absent one.
  virtual Status get_vectors(const uint32_t* labels, size_t n, float* out) const {
    return failed_precondition("this index kind does not keep raw vectors");
  }
  // Approximate bytes held (vectors, graph, codes), for benchmarks and metrics.
  virtual size_t memory_bytes() const = 0;
};

// Shared input checks, used by every kind before it changes anything.
Status check_dim(uint32_t dim);
Status check_vectors(const float* v, size_t n, uint32_t dim, const char* what);
Status check_labels_for_add(const uint32_t* labels, size_t n);
Status check_k(uint32_t k);
// RESOURCE_EXHAUSTED when params.terms_max is set and `terms`, a query's estimated work, exceeds it.
Status check_terms(const SearchParams& params, uint64_t terms);
Status parse_metric(const std::string& name, Metric* out);
const char* metric_name(Metric m);

// Deserialize any kind from an envelope (dispatches on the kind field).
Status deserialize_index(const uint8_t* p, size_t n, std::unique_ptr<Index>* out);

}  // namespace qv

#include <map>

namespace qv {

// Construction options as they cross from JavaScript: dim, metric, and named numeric parameters
// (m, efConstruction, seed, nlist, refine, ...). Each kind validates the ones it knows and refuses
// the ones it does not know.
struct IndexOptions {
  uint32_t dim = 0;
  Metric metric = Metric::L2;
  std::map<std::string, double> num;

  bool has(const std::string& key) const { return num.count(key) != 0; }
  double get(const std::string& key, double fallback) const {
    auto it = num.find(key);
    return it == num.end() ? fallback : it->second;
  }
  // Refuses any key not in `known` (a typo in a parameter name is an error, not a silent default).
  Status only(std::initializer_list<const char*> known) const;
  // Reads an integer parameter in [lo, hi].
  Status integer(const std::string& key, double fallback, double lo, double hi, uint64_t* out) const;
};

Status create_index(const std::string& kind, const IndexOptions& opts, std::unique_ptr<Index>* out);

}  // namespace qv
