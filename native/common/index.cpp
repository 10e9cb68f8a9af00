#include "common/index.h"

#include <algorithm>
#include <cmath>
#include <unordered_set>

#include "common/limits.h"
#include "flat/flat_index.h"
#include "hnsw/hnsw_index.h"
#include "ivfpq/ivfpq_index.h"

namespace qv {

Status check_dim(uint32_t dim) {
  if (dim == 0 || dim > kDimMax)
    return invalid_argument("dim must be in 1.." + std::to_string(kDimMax) + ", got " + std::to_string(dim));
  return Status::ok();
}

Status check_vectors(const float* v, size_t n, uint32_t dim, const char* what) {
  if (n > kBatchVectorsMax)
    return invalid_argument(std::string(what) + ": batch of " + std::to_string(n) + " vectors exceeds the limit of " +
                            std::to_string(kBatchVectorsMax));
  const size_t total = n * dim;
  for (size_t i = 0; i < total; ++i) {
    if (!std::isfinite(v[i])) {
      return invalid_argument(std::string(what) + ": vector " + std::to_string(i / dim) + " has a NaN or infinite value at position " +
                              std::to_string(i % dim));
    }
  }
  return Status::ok();
}

Status check_labels_for_add(const uint32_t* labels, size_t n) {
  std::vector<uint32_t> sorted(labels, labels + n);
  std::sort(sorted.begin(), sorted.end());
  for (size_t i = 0; i < n; ++i) {
    if (sorted[i] == kLabelNone) return invalid_argument("label 4294967295 (0xFFFFFFFF) is reserved");
    if (i > 0 && sorted[i] == sorted[i - 1])
      return invalid_argument("label " + std::to_string(sorted[i]) + " appears twice in one batch");
  }
  return Status::ok();
}

Status check_k(uint32_t k) {
  if (k == 0 || k > kTopKMax) return invalid_argument("k must be in 1.." + std::to_string(kTopKMax) + ", got " + std::to_string(k));
  return Status::ok();
}

Status check_terms(const SearchParams& params, uint64_t terms) {
  if (params.terms_max == 0 || terms <= params.terms_max) return Status::ok();
  return resource_exhausted("this search is estimated at " + std::to_string(terms) +
                            " terms of work (vector components compared), over the bound of " +
                            std::to_string(params.terms_max) + " for a synchronous search; use search()");
}

Status parse_metric(const std::string& name, Metric* out) {
  if (name == "l2") *out = Metric::L2;
  else if (name == "ip") *out = Metric::IP;
  else if (name == "cosine") *out = Metric::Cosine;
  else return invalid_argument("metric must be one of l2, ip, cosine; got '" + name + "'");
  return Status::ok();
}

const char* metric_name(Metric m) {
  switch (m) {
    case Metric::L2: return "l2";
    case Metric::IP: return "ip";
    case Metric::Cosine: return "cosine";
  }
  return "l2";
}

Status deserialize_index(const uint8_t* p, size_t n, std::unique_ptr<Index>* out) {
  EnvelopeInfo info;
  QV_RETURN_IF_ERROR(open_envelope(p, n, &info));
  switch (info.kind) {
    case IndexKind::Flat: return FlatIndex::deserialize(info, out);
    case IndexKind::Hnsw: return HnswIndex::deserialize(info, out);
    case IndexKind::IvfPq: return IvfPqIndex::deserialize(info, out);
  }
  return data_loss("unknown index kind");
}

}  // namespace qv

namespace qv {

Status IndexOptions::only(std::initializer_list<const char*> known) const {
  for (const auto& kv : num) {
    bool ok = false;
    for (const char* k : known) ok = ok || kv.first == k;
    if (!ok) return invalid_argument("unknown index parameter '" + kv.first + "'");
  }
  return Status::ok();
}

Status IndexOptions::integer(const std::string& key, double fallback, double lo, double hi, uint64_t* out) const {
  double v = get(key, fallback);
  if (!std::isfinite(v) || v != std::floor(v) || v < lo || v > hi)
    return invalid_argument(key + " must be an integer in " + std::to_string(static_cast<uint64_t>(lo)) + ".." +
                            std::to_string(static_cast<uint64_t>(hi)));
  *out = static_cast<uint64_t>(v);
  return Status::ok();
}

Status create_index(const std::string& kind, const IndexOptions& opts, std::unique_ptr<Index>* out) {
  QV_RETURN_IF_ERROR(check_dim(opts.dim));
  if (kind == "flat") return FlatIndex::create(opts, out);
  if (kind == "hnsw") return HnswIndex::create(opts, out);
  if (kind == "ivfpq") return IvfPqIndex::create(opts, out);
  return invalid_argument("unknown index kind '" + kind + "' (flat, hnsw, ivfpq)");
}

}  // namespace qv
