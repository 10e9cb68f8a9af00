#include "ivfpq/ivfpq_index.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>
#include <string>
#include <utility>

#include "common/alloc.h"
#include "common/assert.h"
#include "common/limits.h"
#include "common/thread_pool.h"
#include "distance/distance.h"
#include "ivfpq/kmeans.h"
#include "ivfpq/scan.h"

namespace qv {

using ivfpq::kCodebookSize;
using ivfpq::kScanBlock;

namespace {
constexpr uint32_t kNlistMax = 65536;
constexpr uint32_t kRefineMax = 1024;
constexpr uint32_t kDefaultNprobe = 16;
constexpr int kCoarseIterations = 10;
constexpr int kPqIterations = 12;
constexpr size_t kPqTrainPointsMax = 64 * kCodebookSize;  // residuals used to train the codebooks
constexpr size_t kQueryChunk = 32;     // queries sharing one pass over the coarse centroids
constexpr double kCoarseShare = 0.8;   // share of the training progress bar for the coarse k-means
// The l2 table term2 holds nlist * m * 256 floats: at most 1 GiB (nlist * m <= 2^20).
constexpr uint64_t kListsTimesSubquantizersMax = uint64_t{1} << 20;

void normalize_rows(const float* in, size_t n, uint32_t dim, float* out) {
  for (size_t i = 0; i < n; ++i) normalize_f32(in + i * dim, out + i * dim, dim);
}
}  // namespace

// ---------------------------------------------------------------------------------------------
// Construction

IvfPqIndex::IvfPqIndex(uint32_t dim, Metric metric, const Params& p)
    : dim_(dim),
      metric_(metric),
      p_(p),
      dsub_((dim + p.m - 1) / p.m),
      dpad_(p.m * ((dim + p.m - 1) / p.m)),
      lists_(p.nlist) {
  QV_ASSERT(p.nlist >= 1 && p.m >= 1 && p.m <= dim);
}

Status IvfPqIndex::create(const IndexOptions& opts, std::unique_ptr<Index>* out) {
  QV_RETURN_IF_ERROR(opts.only({"nlist", "m", "refine", "nprobe", "seed"}));
  if (!opts.has("nlist")) return invalid_argument("ivfpq needs nlist (number of inverted lists)");
  if (!opts.has("m")) return invalid_argument("ivfpq needs m (number of sub-quantizers)");
  uint64_t nlist, m, refine, nprobe, seed;
  QV_RETURN_IF_ERROR(opts.integer("nlist", 0, 1, kNlistMax, &nlist));
  QV_RETURN_IF_ERROR(opts.integer("m", 0, 1, opts.dim, &m));
  QV_RETURN_IF_ERROR(opts.integer("refine", 0, 0, kRefineMax, &refine));
  QV_RETURN_IF_ERROR(opts.integer("nprobe", 0, 0, static_cast<double>(nlist), &nprobe));
  QV_RETURN_IF_ERROR(opts.integer("seed", 1, 0, 9007199254740991.0, &seed));
  if (nlist * m > kListsTimesSubquantizersMax)
    return invalid_argument("nlist * m must be at most " + std::to_string(kListsTimesSubquantizersMax) +
                            " (the per-list look-up tables would exceed 1 GiB)");
  Params p;
  p.nlist = static_cast<uint32_t>(nlist);
  p.m = static_cast<uint32_t>(m);
  p.refine = static_cast<uint32_t>(refine);
  p.nprobe = static_cast<uint32_t>(nprobe);
  p.seed = seed;
  out->reset(new IvfPqIndex(opts.dim, opts.metric, p));
  return Status::ok();
}

size_t IvfPqIndex::memory_bytes() const {
  ReadGate::Shared reading(gate_);
  size_t b = (centroids_.size() + centroid_norms_.size() + codebooks_.size() + codebook_norms_.size() +
              codebooks_t_.size() + term2_.size()) * sizeof(float);
  for (const List& l : lists_)
    b += l.labels.capacity() * 4 + l.codes.capacity() + l.raw.capacity() * sizeof(float) + sizeof(List);
  b += where_.size() * (sizeof(uint32_t) + sizeof(uint64_t) + 2 * sizeof(void*));
  return b;
}

// ---------------------------------------------------------------------------------------------
// Training

Status IvfPqIndex::train(const float* data, size_t n, int threads, const ProgressFn& progress) {
  std::lock_guard<std::mutex> one_training(train_mu_);
  if (trained()) return failed_precondition("ivfpq index is already trained");
  if (n < p_.nlist)
    return invalid_argument("training sample of " + std::to_string(n) + " vectors is smaller than nlist (" +
                            std::to_string(p_.nlist) + ")");
  QV_RETURN_IF_ERROR(check_vectors(data, n, dim_, "training sample"));
  threads = resolve_threads(threads);
  auto report = [&](double f, const char* phase) {
    if (progress) progress(std::min(1.0, std::max(0.0, f)), phase);
  };
  report(0, "kmeans");

  std::vector<float> normalized;
  const float* x = data;
  if (metric_ == Metric::Cosine) {
    normalized.resize(n * dim_);
    normalize_rows(data, n, dim_, normalized.data());
    x = normalized.data();
  }

  // 1. Coarse quantizer: nlist centroids by k-means on the whole sample.
  std::vector<float> centroids(static_cast<size_t>(p_.nlist) * dim_);
  ivfpq::kmeans(x, n, dim_, p_.nlist, kCoarseIterations, p_.seed, threads,
                [&](double f) { report(kCoarseShare * f, "kmeans"); }, centroids.data());

  // 2. Residuals of (a seeded subsample of) the sample against their nearest centroid.
  std::vector<float> cn(p_.nlist);
  ivfpq::row_norms(centroids.data(), p_.nlist, dim_, cn.data());
  ivfpq::Rng rng(p_.seed ^ 0x5851F42D4C957F2Dull);
  std::vector<size_t> pick(n);
  std::iota(pick.begin(), pick.end(), size_t{0});
  const size_t ns = std::min(n, kPqTrainPointsMax);
  for (size_t i = 0; i < ns; ++i) std::swap(pick[i], pick[i + rng.below(n - i)]);
  pick.resize(ns);
  std::sort(pick.begin(), pick.end());
  std::vector<float> sample(ns * dim_);
  for (size_t i = 0; i < ns; ++i) std::memcpy(&sample[i * dim_], x + pick[i] * dim_, dim_ * sizeof(float));
  std::vector<uint32_t> assign(ns);
  ivfpq::assign_nearest(sample.data(), ns, dim_, centroids.data(), cn.data(), p_.nlist, threads, assign.data(),
                        nullptr);
  std::vector<float> resid(ns * dpad_, 0.0f);
  for (size_t i = 0; i < ns; ++i)
    for (uint32_t t = 0; t < dim_; ++t) resid[i * dpad_ + t] = sample[i * dim_ + t] - centroids[assign[i] * dim_ + t];
  sample.clear();
  sample.shrink_to_fit();

  // 3. One codebook of 256 centroids per sub-space, by k-means on that slice of the residuals.
  //    Sub-spaces are independent: one per thread. (A sample under 256 points gives fewer
  //    distinct centroids; the rest repeat the first, which never wins a strict comparison.)
  report(kCoarseShare, "pq");
  std::vector<float> codebooks(static_cast<size_t>(p_.m) * kCodebookSize * dsub_);
  const size_t kpq = std::min<size_t>(kCodebookSize, ns);
  std::atomic<uint32_t> done{0};
  parallel_for(p_.m, threads, 1, [&](size_t b, size_t e, int tid) {
    std::vector<float> sub(ns * dsub_), cb(kpq * dsub_);
    for (size_t j = b; j < e; ++j) {
      for (size_t i = 0; i < ns; ++i)
        std::memcpy(&sub[i * dsub_], &resid[i * dpad_ + j * dsub_], dsub_ * sizeof(float));
      ivfpq::kmeans(sub.data(), ns, dsub_, kpq, kPqIterations, p_.seed + 0x9E3779B97F4A7C15ull * (j + 1), 1,
                    nullptr, cb.data());
      float* dst = &codebooks[j * kCodebookSize * dsub_];
      for (size_t c = 0; c < kCodebookSize; ++c)
        std::memcpy(dst + c * dsub_, &cb[(c < kpq ? c : 0) * dsub_], dsub_ * sizeof(float));
      uint32_t d = done.fetch_add(1) + 1;
      // Progress is reported from the calling thread only (thread 0 of parallel_for).
      if (tid == 0) report(kCoarseShare + (1 - kCoarseShare) * d / p_.m, "pq");
    }
  });

  {
    ReadGate::Exclusive writing(gate_);
    centroids_ = std::move(centroids);
    codebooks_ = std::move(codebooks);
    install_quantizers();
    trained_.store(true, std::memory_order_release);
  }
  report(1, "done");
  return Status::ok();
}

// Derived tables. For l2 and cosine, term2 (see search_one) of list c, sub-quantizer j, code k:
//   term2[c][j][k] = |p_jk|^2 + 2 <c_j, p_jk>
void IvfPqIndex::install_quantizers() {
  const size_t m = p_.m, ks = kCodebookSize;
  centroid_norms_.resize(p_.nlist);
  ivfpq::row_norms(centroids_.data(), p_.nlist, dim_, centroid_norms_.data());
  codebook_norms_.resize(m * ks);
  ivfpq::row_norms(codebooks_.data(), m * ks, dsub_, codebook_norms_.data());
  codebooks_t_.assign(m * dsub_ * ks, 0.0f);
  for (size_t j = 0; j < m; ++j)
    for (size_t c = 0; c < ks; ++c)
      for (size_t t = 0; t < dsub_; ++t)
        codebooks_t_[(j * dsub_ + t) * ks + c] = codebooks_[(j * ks + c) * dsub_ + t];
  term2_.clear();
  if (metric_ == Metric::IP) return;
  term2_.resize(static_cast<size_t>(p_.nlist) * m * ks);
  const ivfpq::ScanKernels& sk = ivfpq::scan_kernels();
  parallel_for(p_.nlist, default_threads(), 16, [&](size_t b, size_t e, int) {
    std::vector<float> cpad(dpad_, 0.0f), dots(m * ks);
    for (size_t c = b; c < e; ++c) {
      std::memcpy(cpad.data(), &centroids_[c * dim_], dim_ * sizeof(float));
      sk.ip_table(cpad.data(), codebooks_t_.data(), m, dsub_, dots.data());
      float* t2 = &term2_[c * m * ks];
      for (size_t i = 0; i < m * ks; ++i) t2[i] = codebook_norms_[i] + 2.0f * dots[i];
    }
  });
}

// ---------------------------------------------------------------------------------------------
// Encoding, add, remove

// list_of[i]: nearest coarse centroid of x_i (L2); codes[i*m + j]: nearest codeword of the j-th
// slice of the residual x_i - c.
void IvfPqIndex::encode(const float* x, size_t n, int threads, uint32_t* list_of, uint8_t* codes) const {
  const size_t m = p_.m, ks = kCodebookSize;
  ivfpq::assign_nearest(x, n, dim_, centroids_.data(), centroid_norms_.data(), p_.nlist, threads, list_of, nullptr);
  // Nearest codeword of each slice of the residual: argmin_c |p_jc|^2 - 2 <r_j, p_jc>.
  const ivfpq::ScanKernels& sk = ivfpq::scan_kernels();
  parallel_for(n, threads, 256, [&](size_t b, size_t e, int) {
    std::vector<float> r(dpad_, 0.0f);
    float score;
    for (size_t i = b; i < e; ++i) {
      const float* c = &centroids_[static_cast<size_t>(list_of[i]) * dim_];
      for (uint32_t t = 0; t < dim_; ++t) r[t] = x[i * dim_ + t] - c[t];
      for (size_t j = 0; j < m; ++j)
        codes[i * m + j] = static_cast<uint8_t>(sk.nearest_256(&r[j * dsub_], &codebooks_t_[j * dsub_ * ks],
                                                               &codebook_norms_[j * ks], dsub_, &score));
    }
  });
}

uint32_t IvfPqIndex::append(uint32_t list, uint32_t label, const uint8_t* code, const float* raw) {
  List& l = lists_[list];
  const size_t pos = l.size(), m = p_.m;
  if (pos % kScanBlock == 0) l.codes.resize(l.codes.size() + m * kScanBlock, 0);
  uint8_t* blk = &l.codes[(pos / kScanBlock) * m * kScanBlock];
  for (size_t j = 0; j < m; ++j) blk[j * kScanBlock + pos % kScanBlock] = code[j];
  l.labels.push_back(label);
  if (p_.refine > 0) l.raw.insert(l.raw.end(), raw, raw + dim_);
  return static_cast<uint32_t>(pos);
}

void IvfPqIndex::code_of(const List& l, size_t pos, uint8_t* code) const {
  const uint8_t* blk = &l.codes[(pos / kScanBlock) * p_.m * kScanBlock];
  for (size_t j = 0; j < p_.m; ++j) code[j] = blk[j * kScanBlock + pos % kScanBlock];
}

// Removes entry `pos` of a list by moving the last entry into its place.
void IvfPqIndex::erase(uint32_t list, uint32_t pos) {
  List& l = lists_[list];
  const size_t last = l.size() - 1, m = p_.m;
  where_.erase(l.labels[pos]);
  uint8_t* lb = &l.codes[(last / kScanBlock) * m * kScanBlock];
  if (pos != last) {
    uint8_t* pb = &l.codes[(pos / kScanBlock) * m * kScanBlock];
    for (size_t j = 0; j < m; ++j) pb[j * kScanBlock + pos % kScanBlock] = lb[j * kScanBlock + last % kScanBlock];
    l.labels[pos] = l.labels[last];
    if (p_.refine > 0) std::memcpy(&l.raw[pos * dim_], &l.raw[last * dim_], dim_ * sizeof(float));
    where_[l.labels[pos]] = (static_cast<uint64_t>(list) << 32) | pos;
  }
  for (size_t j = 0; j < m; ++j) lb[j * kScanBlock + last % kScanBlock] = 0;
  l.labels.pop_back();
  if (p_.refine > 0) l.raw.resize(last * dim_);
  if (last % kScanBlock == 0) l.codes.resize(l.codes.size() - m * kScanBlock);
}

Status IvfPqIndex::add(const uint32_t* labels, const float* vectors, size_t n, int threads) {
  if (!trained()) return failed_precondition("ivfpq index is not trained: call train() before add()");
  QV_RETURN_IF_ERROR(check_vectors(vectors, n, dim_, "vectors"));
  QV_RETURN_IF_ERROR(check_labels_for_add(labels, n));
  if (n == 0) return Status::ok();
  threads = resolve_threads(threads);
  std::vector<float> normalized;
  const float* x = vectors;
  if (metric_ == Metric::Cosine) {
    normalized.resize(n * dim_);
    normalize_rows(vectors, n, dim_, normalized.data());
    x = normalized.data();
  }
  // The quantizers are immutable once trained, so encoding needs no lock.
  std::vector<uint32_t> list_of(n);
  std::vector<uint8_t> codes(n * p_.m);
  encode(x, n, threads, list_of.data(), codes.data());

  StagedLabels<uint64_t> staged(labels, n);
  std::vector<uint32_t> incoming(p_.nlist, 0);
  for (size_t i = 0; i < n; ++i) ++incoming[list_of[i]];

  ReadGate::Exclusive writing(gate_);
  // Room for the batch in each list it touches (exact on a list's first batch, then growing by
  // half) and in the label map: all this add allocates. The inserts below cannot fail.
  for (uint32_t c = 0; c < p_.nlist; ++c) {
    if (incoming[c] == 0) continue;
    List& l = lists_[c];
    const size_t need = l.size() + incoming[c];
    reserve_growing(l.labels, need);
    reserve_growing(l.codes, (need + kScanBlock - 1) / kScanBlock * kScanBlock * p_.m);
    if (p_.refine > 0) reserve_growing(l.raw, need * dim_);
  }
  staged.reserve(where_);
  for (size_t i = 0; i < n; ++i) {
    auto it = where_.find(labels[i]);
    if (it != where_.end()) erase(static_cast<uint32_t>(it->second >> 32), static_cast<uint32_t>(it->second));
    const uint32_t pos = append(list_of[i], labels[i], &codes[i * p_.m], x + i * dim_);
    staged.put(where_, labels[i], (static_cast<uint64_t>(list_of[i]) << 32) | pos);
  }
  size_.store(where_.size(), std::memory_order_relaxed);
  return Status::ok();
}

Status IvfPqIndex::remove(const uint32_t* labels, size_t n) {
  ReadGate::Exclusive writing(gate_);
  std::vector<uint32_t> sorted(labels, labels + n);
  std::sort(sorted.begin(), sorted.end());
  for (size_t i = 0; i < n; ++i) {
    if (i > 0 && sorted[i] == sorted[i - 1])
      return invalid_argument("label " + std::to_string(sorted[i]) + " appears twice in one batch");
    if (where_.find(sorted[i]) == where_.end()) return not_found("label " + std::to_string(sorted[i]) + " is not in the index");
  }
  for (size_t i = 0; i < n; ++i) {
    uint64_t w = where_.at(labels[i]);
    erase(static_cast<uint32_t>(w >> 32), static_cast<uint32_t>(w));
  }
  size_.store(where_.size(), std::memory_order_relaxed);
  return Status::ok();
}

Status IvfPqIndex::get_vectors(const uint32_t* labels, size_t n, float* out) const {
  if (p_.refine == 0)
    return failed_precondition("this ivfpq index keeps no raw vectors (create it with refine > 0)");
  ReadGate::Shared reading(gate_);
  for (size_t i = 0; i < n; ++i)
    if (where_.find(labels[i]) == where_.end()) return not_found("label " + std::to_string(labels[i]) + " is not in the index");
  for (size_t i = 0; i < n; ++i) {
    uint64_t w = where_.at(labels[i]);
    const List& l = lists_[w >> 32];
    std::memcpy(out + i * dim_, &l.raw[static_cast<size_t>(static_cast<uint32_t>(w)) * dim_], dim_ * sizeof(float));
  }
  return Status::ok();
}

// ---------------------------------------------------------------------------------------------
// Search
//
// A stored vector x in list C is approximated by y_C + y_R: the coarse centroid plus the PQ
// reconstruction of its residual, y_R = [p_1(k_1) | ... | p_m(k_m)], one codeword per sub-space.
//
// l2 (and cosine, on unit vectors):
//   |q - y_C - y_R|^2 = |q - y_C|^2 + |y_R|^2 + 2 <y_C, y_R> - 2 <q, y_R>
//                     = |q - y_C|^2                                   term1: per (query, list)
//                       + sum_j ( |p_j(k_j)|^2 + 2 <y_C,j, p_j(k_j)> ) term2: per (list, j, code), at train
//                       - 2 sum_j <q_j, p_j(k_j)>                       term3: per (query, j, code)
//   term1 comes from the coarse step (|q|^2 - 2 <q, y_C> + |y_C|^2, the dot products blocked over a
//   chunk of queries). term3 is one m x 256 table per query, independent of the list. So probing a
//   list costs one m x 256 multiply-add (LUT = term2[C] - 2 <q_j, p_jk>) and m look-ups per vector;
//   term1 is added once per candidate.
// ip: <q, x> ~ <q, y_C> + sum_j <q_j, p_j(k_j)>; the table -<q_j, p_j(k)> is the same for every list
//   and the distance is 1 - <q, y_C> + sum_j LUT_j(k_j). Lists are probed by largest <q, y_C>.
// A list is scanned 16 vectors at a time (ivfpq/scan.h); a candidate enters a bounded max-heap only
// if it beats the current worst. With refine, the heap holds refine*k candidates and the best k of
// them by exact f32 distance to the stored raw vector are returned.
// At least nprobe lists are probed, and further lists (in order of coarse distance) while fewer than
// refine*k (or k) candidates have been found, so a selective filter still yields k results.

struct IvfPqIndex::QueryScratch {
  std::vector<float> qpad, ipt, tab, lut, keys;
  std::vector<uint32_t> order;
  std::vector<std::pair<float, uint64_t>> heap;
  std::vector<std::pair<float, uint32_t>> exact;
};

void IvfPqIndex::search_one(const float* q, const float* dots, const SearchParams& p, uint32_t nprobe,
                            uint32_t refine, QueryScratch* s, uint32_t* ol, float* od) const {
  const Kernels& kern = kernels();
  const ivfpq::ScanKernels& sk = ivfpq::scan_kernels();
  const size_t m = p_.m, ks = kCodebookSize, nlist = p_.nlist;
  const bool l2 = metric_ != Metric::IP;
  const uint32_t k = p.k;
  const size_t K = refine > 0 ? static_cast<size_t>(refine) * k : k;

  const float qn = l2 ? kern.ip_f32(q, q, dim_) : 0.0f;
  for (size_t c = 0; c < nlist; ++c) s->keys[c] = l2 ? qn - 2.0f * dots[c] + centroid_norms_[c] : -dots[c];
  std::memcpy(s->qpad.data(), q, dim_ * sizeof(float));
  sk.ip_table(s->qpad.data(), codebooks_t_.data(), m, dsub_, s->ipt.data());
  if (!l2)
    for (size_t i = 0; i < m * ks; ++i) s->tab[i] = -s->ipt[i];

  auto& order = s->order;
  std::iota(order.begin(), order.end(), 0u);
  auto closer = [&](uint32_t a, uint32_t b) { return s->keys[a] < s->keys[b] || (s->keys[a] == s->keys[b] && a < b); };
  const size_t np = std::min<size_t>(nprobe, nlist);
  std::partial_sort(order.begin(), order.begin() + np, order.end(), closer);

  auto& heap = s->heap;
  heap.clear();
  const Filter* filter = p.filter;
  float d16[kScanBlock];
  auto scan_list = [&](uint32_t c) {
    const List& l = lists_[c];
    if (l.size() == 0) return;
    const float* table;
    float offset;
    if (l2) {
      sk.lut_add(&term2_[static_cast<size_t>(c) * m * ks], s->ipt.data(), -2.0f, m * ks, s->lut.data());
      table = s->lut.data();
      offset = s->keys[c];
    } else {
      table = s->tab.data();
      offset = 1.0f - dots[c];
    }
    const size_t n = l.size();
    for (size_t b = 0; b * kScanBlock < n; ++b) {
      sk.scan_block(&l.codes[b * m * kScanBlock], m, table, d16);
      const size_t lanes = std::min(kScanBlock, n - b * kScanBlock);
      for (size_t lane = 0; lane < lanes; ++lane) {
        const float d = offset + d16[lane];
        if (heap.size() == K && !(d < heap.front().first)) continue;
        const size_t pos = b * kScanBlock + lane;
        if (filter && !filter->allows(l.labels[pos])) continue;
        const uint64_t id = (static_cast<uint64_t>(c) << 32) | pos;
        if (heap.size() == K) {
          std::pop_heap(heap.begin(), heap.end());
          heap.back() = {d, id};
        } else {
          heap.push_back({d, id});
        }
        std::push_heap(heap.begin(), heap.end());
      }
    }
  };
  for (size_t i = 0; i < np; ++i) scan_list(order[i]);
  if (heap.size() < K && np < nlist) {
    std::sort(order.begin() + np, order.end(), closer);
    for (size_t i = np; i < nlist && heap.size() < K; ++i) scan_list(order[i]);
  }

  const float out_scale = metric_ == Metric::Cosine ? 0.5f : 1.0f;  // |x - y|^2 / 2 = 1 - cos
  size_t found = 0;
  if (refine == 0) {
    std::sort_heap(heap.begin(), heap.end());
    for (const auto& h : heap) {
      ol[found] = lists_[h.second >> 32].labels[static_cast<uint32_t>(h.second)];
      od[found] = l2 ? std::max(0.0f, h.first) * out_scale : h.first;
      ++found;
    }
  } else {
    auto& ex = s->exact;
    ex.clear();
    auto raw_of = [&](const std::pair<float, uint64_t>& h) {
      return &lists_[h.second >> 32].raw[static_cast<size_t>(static_cast<uint32_t>(h.second)) * dim_];
    };
    // The candidates' raw vectors are scattered: fetch the next ones while this one is computed.
    constexpr size_t kAhead = 2;
    auto prefetch = [&](const float* v) {
      for (size_t t = 0; t < dim_; t += 16) __builtin_prefetch(v + t);
    };
    for (size_t i = 0; i < std::min(kAhead, heap.size()); ++i) prefetch(raw_of(heap[i]));
    for (size_t i = 0; i < heap.size(); ++i) {
      if (i + kAhead < heap.size()) prefetch(raw_of(heap[i + kAhead]));
      const auto& h = heap[i];
      const List& l = lists_[h.second >> 32];
      const size_t pos = static_cast<uint32_t>(h.second);
      const float* v = &l.raw[pos * dim_];
      const float d = l2 ? kern.l2_f32(q, v, dim_) * out_scale : 1.0f - kern.ip_f32(q, v, dim_);
      ex.push_back({d, l.labels[pos]});
    }
    const size_t kk = std::min<size_t>(k, ex.size());
    std::partial_sort(ex.begin(), ex.begin() + kk, ex.end());
    for (size_t i = 0; i < kk; ++i) {
      ol[found] = ex[i].second;
      od[found] = ex[i].first;
      ++found;
    }
  }
  for (; found < k; ++found) {
    ol[found] = kLabelNone;
    od[found] = std::numeric_limits<float>::infinity();
  }
}

Status IvfPqIndex::search(const float* queries, size_t nq, const SearchParams& params, uint32_t* out_labels,
                          float* out_distances) const {
  QV_RETURN_IF_ERROR(check_k(params.k));
  if (!trained()) return failed_precondition("ivfpq index is not trained: call train() before search()");
  QV_RETURN_IF_ERROR(check_vectors(queries, nq, dim_, "queries"));
  uint32_t nprobe = params.nprobe != 0 ? params.nprobe : (p_.nprobe != 0 ? p_.nprobe : kDefaultNprobe);
  nprobe = std::min(nprobe, p_.nlist);
  const uint32_t refine = params.refine_set ? params.refine : p_.refine;
  if (refine > kRefineMax) return invalid_argument("refine must be in 0.." + std::to_string(kRefineMax));
  if (refine > 0 && p_.refine == 0)
    return failed_precondition("refine needs the raw vectors: create the ivfpq index with refine > 0");
  if (nq == 0) return Status::ok();

  std::vector<float> normalized;
  const float* qs = queries;
  if (metric_ == Metric::Cosine) {
    normalized.resize(nq * dim_);
    normalize_rows(queries, nq, dim_, normalized.data());
    qs = normalized.data();
  }
  const int threads = resolve_threads(params.threads);
  const size_t k = params.k;
  ReadGate::Shared reading(gate_);
  if (params.terms_max != 0) {
    // Per query: the coarse distances, the inner-product table, then per list scanned its table
    // (l2, cosine) and a look-up per code byte, then the exact re-rank. The scan takes nprobe lists
    // of the average length, or more until refine x k candidates (all allowed ones, at the filter's
    // share of the points) are found.
    const uint64_t live = where_.size(), nlist = p_.nlist, m = p_.m;
    const uint64_t avg = std::max<uint64_t>(1, (live + nlist - 1) / nlist);
    const uint64_t want = uint64_t{std::max<uint32_t>(refine, 1)} * k;
    const uint64_t allowed = params.filter == nullptr ? live : std::min<uint64_t>(params.filter->count(), live);
    const uint64_t entries = std::min(live, std::max(uint64_t{nprobe} * avg, allowed == 0 ? live : want * live / allowed));
    const uint64_t lists = std::min(nlist, std::max<uint64_t>(nprobe, (entries + avg - 1) / avg));
    const uint64_t terms = nlist * dim_ + kCodebookSize * dpad_ + (metric_ != Metric::IP ? lists * kCodebookSize * m : 0) +
                           entries * m + (refine > 0 ? std::min(want, entries) * dim_ : 0);
    QV_RETURN_IF_ERROR(check_terms(params, terms));
  }
  parallel_for(nq, threads, kQueryChunk, [&](size_t b, size_t e, int) {
    QueryScratch s;
    const size_t m = p_.m;
    s.qpad.assign(dpad_, 0.0f);
    s.ipt.resize(m * kCodebookSize);
    s.tab.resize(m * kCodebookSize);
    s.lut.resize(m * kCodebookSize);
    s.keys.resize(p_.nlist);
    s.order.resize(p_.nlist);
    s.heap.reserve(static_cast<size_t>(std::max<uint32_t>(refine, 1)) * k + 1);
    s.exact.reserve(s.heap.capacity());
    std::vector<float> dots((e - b) * p_.nlist);
    ivfpq::dot_matrix(qs + b * dim_, e - b, dim_, centroids_.data(), p_.nlist, dots.data());
    for (size_t i = b; i < e; ++i)
      search_one(qs + i * dim_, &dots[(i - b) * p_.nlist], params, nprobe, refine, &s, out_labels + i * k,
                 out_distances + i * k);
  });
  return Status::ok();
}

// ---------------------------------------------------------------------------------------------
// Serialization
//
// Body (inside the envelope of common/format.h), little-endian:
//   u32 nlist | u32 m | u32 refine | u32 nprobe | u64 seed | u32 trained (0 or 1)
//   if trained:
//     f32 centroids[nlist * dim]
//     f32 codebooks[m * 256 * dsub]        (sub-quantizer, codeword, coordinate); dsub = ceil(dim/m)
//     u64 entries
//     nlist times: u32 count | u32 labels[count] | u8 codes[count * m] (entry-major)
//                  | f32 raw[count * dim] (only when refine > 0)
// The derived tables (norms, transposed codebooks, term2) are rebuilt on load. A reader refuses
// any inconsistency (sizes, duplicate or reserved labels, trailing bytes) with DATA_LOSS.

Status IvfPqIndex::serialize(Bytes* out) const {
  {
    ReadGate::Shared reading(gate_);
    const bool is_trained = trained();
    size_t body = 4 * 4 + 8 + 4;
    if (is_trained) {
      body += 4 * (centroids_.size() + codebooks_.size()) + 8;
      for (const List& l : lists_) body += 4 + l.size() * (4 + p_.m) + 4 * l.raw.size();
    }
    begin_envelope(out, IndexKind::IvfPq, dim_, metric_, body);
    Writer w(out);
    w.u32(p_.nlist);
    w.u32(p_.m);
    w.u32(p_.refine);
    w.u32(p_.nprobe);
    w.u64(p_.seed);
    w.u32(is_trained ? 1 : 0);
    if (is_trained) {
      w.array(centroids_.data(), centroids_.size());
      w.array(codebooks_.data(), codebooks_.size());
      w.u64(where_.size());
      std::vector<uint8_t> code(p_.m);
      for (const List& l : lists_) {
        w.u32(static_cast<uint32_t>(l.size()));
        w.array(l.labels.data(), l.size());
        for (size_t pos = 0; pos < l.size(); ++pos) {
          code_of(l, pos, code.data());
          w.array(code.data(), p_.m);
        }
        if (p_.refine > 0) w.array(l.raw.data(), l.raw.size());
      }
    }
    QV_ASSERT(out->size() == kEnvelopeHeader + body);
  }
  finish_envelope(out);
  return Status::ok();
}

Status IvfPqIndex::deserialize(const EnvelopeInfo& info, std::unique_ptr<Index>* out) {
  Reader r(info.body, info.body_len);
  Params p;
  uint32_t trained = 0;
  r.u32(&p.nlist);
  r.u32(&p.m);
  r.u32(&p.refine);
  r.u32(&p.nprobe);
  r.u64(&p.seed);
  r.u32(&trained);
  QV_RETURN_IF_ERROR(r.status("ivfpq header"));
  if (p.nlist < 1 || p.nlist > kNlistMax || p.m < 1 || p.m > info.dim || p.refine > kRefineMax ||
      p.nprobe > p.nlist || trained > 1 || uint64_t{p.nlist} * p.m > kListsTimesSubquantizersMax)
    return data_loss("ivfpq index file has invalid parameters");
  std::unique_ptr<IvfPqIndex> idx(new IvfPqIndex(info.dim, info.metric, p));
  if (trained) {
    std::vector<float> centroids, codebooks;
    r.array(&centroids, static_cast<uint64_t>(p.nlist) * info.dim);
    r.array(&codebooks, static_cast<uint64_t>(p.m) * kCodebookSize * idx->dsub_);
    uint64_t entries = 0;
    r.u64(&entries);
    QV_RETURN_IF_ERROR(r.status("ivfpq quantizers"));
    for (float v : centroids)
      if (!std::isfinite(v)) return data_loss("ivfpq index file has a non-finite centroid");
    for (float v : codebooks)
      if (!std::isfinite(v)) return data_loss("ivfpq index file has a non-finite codeword");
    idx->centroids_ = std::move(centroids);
    idx->codebooks_ = std::move(codebooks);
    idx->install_quantizers();
    idx->trained_.store(true);
    std::vector<uint32_t> labels;
    std::vector<uint8_t> codes;
    std::vector<float> raw;
    uint64_t seen = 0;
    for (uint32_t c = 0; c < p.nlist; ++c) {
      uint32_t count = 0;
      if (!r.u32(&count)) break;
      if (count > entries - seen) return data_loss("ivfpq index file: list sizes exceed the entry count");
      r.array(&labels, count);
      r.array(&codes, static_cast<uint64_t>(count) * p.m);
      if (p.refine > 0) r.array(&raw, static_cast<uint64_t>(count) * info.dim);
      QV_RETURN_IF_ERROR(r.status("ivfpq list"));
      if (p.refine > 0)
        for (float v : raw)
          if (!std::isfinite(v)) return data_loss("ivfpq index file has a non-finite vector value");
      for (uint32_t i = 0; i < count; ++i) {
        if (labels[i] == kLabelNone || idx->where_.count(labels[i]))
          return data_loss("ivfpq index file has a reserved or duplicate label");
        const uint32_t pos = idx->append(c, labels[i], &codes[static_cast<size_t>(i) * p.m],
                                         p.refine > 0 ? &raw[static_cast<size_t>(i) * info.dim] : nullptr);
        idx->where_[labels[i]] = (static_cast<uint64_t>(c) << 32) | pos;
      }
      seen += count;
    }
    QV_RETURN_IF_ERROR(r.status("ivfpq lists"));
    if (seen != entries) return data_loss("ivfpq index file: entry count does not match its lists");
  }
  if (r.remaining() != 0) return data_loss("ivfpq index file has trailing bytes");
  idx->size_.store(idx->where_.size(), std::memory_order_relaxed);
  *out = std::move(idx);
  return Status::ok();
}

Status IvfPqIndex::snapshot(IvfPqSnapshot* out) const {
  if (!trained()) return failed_precondition("ivfpq index is not trained");
  ReadGate::Shared reading(gate_);
  out->dim = dim_;
  out->nlist = p_.nlist;
  out->m = p_.m;
  out->dsub = dsub_;
  out->metric = metric_;
  out->centroids = centroids_;
  out->codebooks = codebooks_;
  out->list_offsets.assign(p_.nlist + 1, 0);
  out->labels.clear();
  out->codes.clear();
  std::vector<uint8_t> code(p_.m);
  for (uint32_t c = 0; c < p_.nlist; ++c) {
    const List& l = lists_[c];
    out->list_offsets[c + 1] = out->list_offsets[c] + static_cast<uint32_t>(l.size());
    out->labels.insert(out->labels.end(), l.labels.begin(), l.labels.end());
    for (size_t pos = 0; pos < l.size(); ++pos) {
      code_of(l, pos, code.data());
      out->codes.insert(out->codes.end(), code.begin(), code.end());
    }
  }
  return Status::ok();
}

}  // namespace qv
