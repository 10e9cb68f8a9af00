// FlatIndex: exact search.
//
// Layout: rows stored densely (row-major, dim floats each), labels_[row], slot_of_[label] = row.
// Removal moves the last row into the hole, so a scan never meets a tombstone.
//
// Batch search (nq >= 4, no filter) is blocked for the cache, as a GEMM is:
//   for each chunk of kQueryChunk queries (chunks spread over threads)
//     for each tile of kRowTile rows (about 400 KB of 784-d rows: stays in L2)
//       for each 4 queries x 4 rows: ip_f32_4x4 (16 dot products from 8 streams)
// so each row loaded from memory is used by kQueryChunk queries, not one.
//
// For l2 the tile computes dot products only, using
//   ||q - x||^2 = ||q||^2 + ||x||^2 - 2 q.x
// with ||x||^2 precomputed per row. That form loses precision when ||q||, ||x|| are large and
// the two are close (cancellation), so each query keeps its best k + kRerankExtra candidates by
// that estimate and re-ranks them with the direct sum of squared differences; results are the
// exact distances of the direct form.
// For ip (distance 1 - q.x) the dot is the answer. Cosine keeps each row as given (get_vectors
// returns it bit for bit) with its inverse norm r = 1/|x| (inv_norm_f32); the query is normalized,
// and 1 - cos(q, x) = 1 - (q/|q|).x * r.
#include "flat/flat_index.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <mutex>

#include "common/alloc.h"
#include "common/assert.h"
#include "common/limits.h"
#include "common/thread_pool.h"
#include "common/topk.h"
#include "distance/distance.h"

namespace qv {

namespace {
constexpr size_t kQueryChunk = 64;
constexpr size_t kRowTileBytes = 400 * 1024;
constexpr uint32_t kRerankExtra = 16;
// Below this many rows per thread a single query is scanned on one thread.
constexpr size_t kMinRowsPerThread = 4096;

}  // namespace

Status FlatIndex::create(const IndexOptions& opts, std::unique_ptr<Index>* out) {
  QV_RETURN_IF_ERROR(opts.only({}));
  *out = std::make_unique<FlatIndex>(opts.dim, opts.metric);
  return Status::ok();
}

size_t FlatIndex::memory_bytes() const {
  ReadGate::Shared reading(gate_);
  return data_.capacity() * 4 + norms_.capacity() * 4 + labels_.capacity() * 4 + slot_of_.size() * 32;
}

Status FlatIndex::add(const uint32_t* labels, const float* vectors, size_t n, int threads) {
  QV_RETURN_IF_ERROR(check_labels_for_add(labels, n));
  QV_RETURN_IF_ERROR(check_vectors(vectors, n, dim_, "add"));
  StagedLabels<uint32_t> staged(labels, n);
  ReadGate::Exclusive writing(gate_);
  if (labels_.size() + n > kLabelNone) return resource_exhausted("flat index is full");
  // Room for the new rows first (all this add allocates); the writes below cannot fail.
  size_t rows = labels_.size();
  for (size_t i = 0; i < n; ++i) rows += slot_of_.count(labels[i]) == 0;
  reserve_growing(labels_, rows);
  reserve_growing(norms_, rows);
  reserve_growing(data_, rows * dim_);
  staged.reserve(slot_of_);
  for (size_t i = 0; i < n; ++i) {
    auto it = slot_of_.find(labels[i]);
    size_t row;
    if (it != slot_of_.end()) {
      row = it->second;
    } else {
      row = labels_.size();
      labels_.push_back(labels[i]);
      staged.put(slot_of_, labels[i], static_cast<uint32_t>(row));
      data_.resize(data_.size() + dim_);
      norms_.push_back(0);
    }
    std::memcpy(data_.data() + row * dim_, vectors + i * dim_, dim_ * sizeof(float));
    set_norm(row);
  }
  size_.store(labels_.size(), std::memory_order_relaxed);
  return Status::ok();
}

void FlatIndex::set_norm(size_t row) {
  const float* x = data_.data() + row * dim_;
  norms_[row] = metric_ == Metric::Cosine ? inv_norm_f32(x, dim_) : kernels().ip_f32(x, x, dim_);
}

Status FlatIndex::remove(const uint32_t* labels, size_t n) {
  ReadGate::Exclusive writing(gate_);
  for (size_t i = 0; i < n; ++i) {
    if (!slot_of_.count(labels[i])) return not_found("label " + std::to_string(labels[i]) + " is not in the index");
  }
  {
    std::vector<uint32_t> sorted(labels, labels + n);
    std::sort(sorted.begin(), sorted.end());
    if (std::adjacent_find(sorted.begin(), sorted.end()) != sorted.end())
      return invalid_argument("a label appears twice in one remove batch");
  }
  for (size_t i = 0; i < n; ++i) {
    auto it = slot_of_.find(labels[i]);
    uint32_t row = it->second, last = static_cast<uint32_t>(labels_.size() - 1);
    slot_of_.erase(it);
    if (row != last) {
      std::memcpy(data_.data() + size_t(row) * dim_, data_.data() + size_t(last) * dim_, dim_ * sizeof(float));
      norms_[row] = norms_[last];
      labels_[row] = labels_[last];
      slot_of_[labels_[row]] = row;
    }
    labels_.pop_back();
    norms_.pop_back();
    data_.resize(data_.size() - dim_);
  }
  size_.store(labels_.size(), std::memory_order_relaxed);
  return Status::ok();
}

float FlatIndex::distance(const float* q, size_t row) const {
  const auto& K = kernels();
  const float* v = data_.data() + row * dim_;
  switch (metric_) {
    case Metric::L2: return K.l2_f32(q, v, dim_);
    case Metric::IP: return 1.0f - K.ip_f32(q, v, dim_);
    case Metric::Cosine: return 1.0f - K.ip_f32(q, v, dim_) * norms_[row];
  }
  return 0;
}

Status FlatIndex::get_vectors(const uint32_t* labels, size_t n, float* out) const {
  ReadGate::Shared reading(gate_);
  for (size_t i = 0; i < n; ++i) {
    auto it = slot_of_.find(labels[i]);
    if (it == slot_of_.end()) return not_found("label " + std::to_string(labels[i]) + " is not in the index");
    std::memcpy(out + i * dim_, data_.data() + size_t(it->second) * dim_, dim_ * sizeof(float));
  }
  return Status::ok();
}

// One query over all rows, the rows split across threads; each part keeps its own top-k.
void FlatIndex::search_one_scan(const float* q, const SearchParams& p, int threads, uint32_t* ol, float* od) const {
  const size_t n = labels_.size();
  const size_t block = 256;
  int t = static_cast<int>(std::max<size_t>(1, std::min<size_t>(threads, n / kMinRowsPerThread)));
  std::vector<TopK> parts(t, TopK(p.k));
  size_t per = (n + t - 1) / t;
  parallel_for(t, t, 1, [&](size_t b, size_t, int) {
    size_t lo = b * per, hi = std::min(n, lo + per);
    TopK& top = parts[b];
    float dist[block];
    for (size_t r = lo; r < hi; r += block) {
      size_t m = std::min(block, hi - r);
      if (metric_ == Metric::L2) {
        kernels().l2_f32_rows(q, data_.data() + r * dim_, m, dim_, dist);
      } else {
        const float* rn = metric_ == Metric::Cosine ? norms_.data() + r : nullptr;
        for (size_t i = 0; i < m; ++i) {
          const float dot = kernels().ip_f32(q, data_.data() + (r + i) * dim_, dim_);
          dist[i] = 1.0f - (rn ? dot * rn[i] : dot);
        }
      }
      float worst = top.worst();
      for (size_t i = 0; i < m; ++i) {
        if (dist[i] <= worst) {  // a tie may still enter on its label
          top.push(dist[i], labels_[r + i]);
          worst = top.worst();
        }
      }
    }
  });
  TopK all(p.k);
  for (auto& part : parts)
    for (auto& it : part.items()) all.push(it.first, it.second);
  all.write_sorted(ol, od);
}

void FlatIndex::search_subset(const float* q, const std::vector<uint32_t>& slots, uint32_t k, uint32_t* ol,
                              float* od) const {
  TopK top(k);
  for (uint32_t s : slots) top.push(distance(q, s), labels_[s]);
  top.write_sorted(ol, od);
}

// The distance from a tile's dot product q.x, with qn = |q|^2 and rn = norms_[row] (l2); cosine's
// dots come already scaled by 1/|x|. The metric is a template argument: no branch in the tile loop.
template <Metric M>
inline float tile_distance(float qn, float rn, float dot) {
  if constexpr (M == Metric::L2) return qn + rn - 2.0f * dot;
  else return 1.0f - dot;
}

template <Metric M>
void FlatIndex::search_blocked(const float* queries, size_t nq, const SearchParams& p, int threads, uint32_t* ol,
                               float* od) const {
  const size_t n = labels_.size();
  constexpr bool l2 = M == Metric::L2;
  const uint32_t keep = l2 ? std::min<uint32_t>(p.k + kRerankExtra, static_cast<uint32_t>(std::max<size_t>(n, 1))) : p.k;
  const size_t row_tile = std::max<size_t>(4, (kRowTileBytes / (dim_ * sizeof(float))) & ~size_t(3));
  const size_t chunks = (nq + kQueryChunk - 1) / kQueryChunk;
  const auto& K = kernels();

  parallel_for(chunks, threads, 1, [&](size_t c0, size_t c1, int) {
    std::vector<TopK> tops;
    std::vector<float> qnorm(kQueryChunk);
    for (size_t c = c0; c < c1; ++c) {
      const size_t q0 = c * kQueryChunk, qn = std::min(kQueryChunk, nq - q0);
      tops.assign(qn, TopK(keep));
      for (size_t i = 0; i < qn; ++i) qnorm[i] = l2 ? K.ip_f32(queries + (q0 + i) * dim_, queries + (q0 + i) * dim_, dim_) : 0.f;
      for (size_t r0 = 0; r0 < n; r0 += row_tile) {
        const size_t r1 = std::min(n, r0 + row_tile);
        for (size_t qi = 0; qi < qn; qi += 4) {
          const float* qp[4];
          for (int a = 0; a < 4; ++a) qp[a] = queries + (q0 + std::min(qi + a, qn - 1)) * dim_;
          for (size_t r = r0; r < r1; r += 4) {
            const float* rp[4];
            for (int b = 0; b < 4; ++b) rp[b] = data_.data() + std::min(r + b, r1 - 1) * dim_;
            float dots[16];
            K.ip_f32_4x4(qp, rp, dim_, dots);
            if constexpr (M == Metric::Cosine) {
              float rn[4];
              for (int b = 0; b < 4; ++b) rn[b] = norms_[std::min(r + b, r1 - 1)];
              for (int i = 0; i < 16; ++i) dots[i] *= rn[i & 3];
            }
            const size_t na = std::min<size_t>(4, qn - qi), nb = std::min<size_t>(4, r1 - r);
            for (size_t a = 0; a < na; ++a) {
              TopK& top = tops[qi + a];
              float worst = top.worst();
              for (size_t b = 0; b < nb; ++b) {
                const float d = tile_distance<M>(qnorm[qi + a], norms_[r + b], dots[a * 4 + b]);
                if (d < worst) {
                  top.push(d, static_cast<uint32_t>(r + b));  // row for now; label after re-rank
                  worst = top.worst();
                }
              }
            }
          }
        }
      }
      for (size_t i = 0; i < qn; ++i) {
        const float* q = queries + (q0 + i) * dim_;
        TopK final_top(p.k);
        for (auto& it : tops[i].items()) {
          float d = l2 ? K.l2_f32(q, data_.data() + size_t(it.second) * dim_, dim_) : it.first;
          final_top.push(d, labels_[it.second]);
        }
        final_top.write_sorted(ol + (q0 + i) * p.k, od + (q0 + i) * p.k);
      }
    }
  });
}

Status FlatIndex::search(const float* queries, size_t nq, const SearchParams& p, uint32_t* ol, float* od) const {
  QV_RETURN_IF_ERROR(check_k(p.k));
  QV_RETURN_IF_ERROR(check_vectors(queries, nq, dim_, "search"));
  std::vector<float> normalized;
  if (metric_ == Metric::Cosine) {
    normalized.assign(queries, queries + nq * dim_);
    for (size_t i = 0; i < nq; ++i) normalize_f32(normalized.data() + i * dim_, normalized.data() + i * dim_, dim_);
    queries = normalized.data();
  }
  const int threads = resolve_threads(p.threads);
  ReadGate::Shared reading(gate_);
  const size_t rows = p.filter ? std::min(p.filter->count(), labels_.size()) : labels_.size();
  QV_RETURN_IF_ERROR(check_terms(p, uint64_t{rows} * dim_));
  if (p.filter) {
    std::vector<uint32_t> slots;
    slots.reserve(p.filter->count());
    for (uint32_t l : p.filter->labels()) {
      auto it = slot_of_.find(l);
      if (it != slot_of_.end()) slots.push_back(it->second);
    }
    std::sort(slots.begin(), slots.end());
    parallel_for(nq, threads, 1, [&](size_t b, size_t e, int) {
      for (size_t i = b; i < e; ++i) search_subset(queries + i * dim_, slots, p.k, ol + i * p.k, od + i * p.k);
    });
    return Status::ok();
  }
  if (nq >= 4) {
    switch (metric_) {
      case Metric::L2: search_blocked<Metric::L2>(queries, nq, p, threads, ol, od); break;
      case Metric::IP: search_blocked<Metric::IP>(queries, nq, p, threads, ol, od); break;
      case Metric::Cosine: search_blocked<Metric::Cosine>(queries, nq, p, threads, ol, od); break;
    }
  } else {
    for (size_t i = 0; i < nq; ++i) search_one_scan(queries + i * dim_, p, threads, ol + i * p.k, od + i * p.k);
  }
  return Status::ok();
}

// Body: u64 n | u32 labels[n] | f32 rows[n * dim], as added (envelope format 1 stored cosine rows
// normalized; such a file loads, and get_vectors returns the normalized rows it holds).
Status FlatIndex::serialize(Bytes* out) const {
  {
    ReadGate::Shared reading(gate_);
    begin_envelope(out, IndexKind::Flat, dim_, metric_, 8 + labels_.size() * (4 + size_t{dim_} * 4));
    Writer w(out);
    w.u64(labels_.size());
    w.array(labels_.data(), labels_.size());
    w.array(data_.data(), data_.size());
  }
  finish_envelope(out);
  return Status::ok();
}

Status FlatIndex::deserialize(const EnvelopeInfo& info, std::unique_ptr<Index>* out) {
  Reader r(info.body, info.body_len);
  uint64_t n = 0;
  r.u64(&n);
  if (!r.ok() || n > r.remaining() / (4 + size_t(info.dim) * 4)) return data_loss("flat index: bad row count");
  auto index = std::make_unique<FlatIndex>(info.dim, info.metric);
  r.array(&index->labels_, n);
  r.array(&index->data_, n * info.dim);
  QV_RETURN_IF_ERROR(r.status("flat index body"));
  if (r.remaining() != 0) return data_loss("flat index: trailing bytes in body");
  for (float v : index->data_)
    if (!std::isfinite(v)) return data_loss("flat index: a non-finite vector value");
  index->norms_.resize(n);
  index->slot_of_.reserve(n);
  for (size_t i = 0; i < n; ++i) {
    if (index->labels_[i] == kLabelNone || !index->slot_of_.emplace(index->labels_[i], uint32_t(i)).second)
      return data_loss("flat index: duplicate or reserved label");
    index->set_norm(i);
  }
  index->size_.store(n, std::memory_order_relaxed);
  *out = std::move(index);
  return Status::ok();
}

}  // namespace qv
