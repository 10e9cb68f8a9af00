// Internals of HnswIndex shared by search (hnsw_index.cpp) and build (hnsw_build.cpp): the
// per-thread search context, the two distance spaces and the graph walk templates.
#pragma once
#include <algorithm>
#include <cstring>
#include <functional>
#include <limits>
#include <utility>
#include <vector>

#include "distance/distance.h"
#include "hnsw/hnsw_index.h"

namespace qv {
namespace hnsw {

template <typename D>
using Cand = std::pair<D, uint32_t>;  // (distance, slot); ties break on slot, so order is total

// Preallocated per-thread state: the visited set, the two heaps, and query buffers. Pooled by
// the index; one search call takes one per worker thread.
//
// The visited set is a bitmap (one bit per slot: 25 KB for 200k points, so it stays in L1/L2
// where a 16-bit tag array would not), with the list of slots set in this walk, so that
// clearing costs one store per visit instead of a pass over the bitmap.
struct SearchContext {
  std::vector<uint64_t> bits;
  std::vector<uint32_t> touched;
  std::vector<Cand<uint32_t>> cand_u, res_u;
  std::vector<Cand<float>> cand_f, res_f, rerank;
  std::vector<uint32_t> nbrs;
  std::vector<const uint8_t*> rows;  // code rows of one l2_u8_many call
  std::vector<uint32_t> dist_u;
  std::vector<float> dist_f;
  std::vector<float> qbuf;
  std::vector<uint8_t> qcode;

  void new_visit(size_t n) {
    for (uint32_t s : touched) bits[s >> 6] = 0;
    touched.clear();
    const size_t words = (n + 63) / 64;
    if (bits.size() < words) bits.resize(words + words / 4 + 1, 0);
  }
  // True the first time s is seen in this walk.
  bool visit(uint32_t s) {
    const size_t w = s >> 6;
    if (w >= bits.size()) bits.resize(w + w / 4 + 1, 0);
    const uint64_t bit = uint64_t{1} << (s & 63);
    if (bits[w] & bit) return false;
    bits[w] |= bit;
    touched.push_back(s);
    return true;
  }
  template <typename D>
  std::vector<Cand<D>>& cand();
  template <typename D>
  std::vector<Cand<D>>& res();
  // A distance buffer of at least n.
  template <typename D>
  D* dists(size_t n) {
    std::vector<D>& v = dist_vec<D>();
    if (v.size() < n) v.resize(n);
    return v.data();
  }
  template <typename D>
  std::vector<D>& dist_vec();
};
template <>
inline std::vector<Cand<uint32_t>>& SearchContext::cand<uint32_t>() { return cand_u; }
template <>
inline std::vector<Cand<uint32_t>>& SearchContext::res<uint32_t>() { return res_u; }
template <>
inline std::vector<Cand<float>>& SearchContext::cand<float>() { return cand_f; }
template <>
inline std::vector<Cand<float>>& SearchContext::res<float>() { return res_f; }
template <>
inline std::vector<uint32_t>& SearchContext::dist_vec<uint32_t>() { return dist_u; }
template <>
inline std::vector<float>& SearchContext::dist_vec<float>() { return dist_f; }

inline uint32_t load_relaxed(const uint32_t* p) { return __atomic_load_n(p, __ATOMIC_RELAXED); }
inline uint32_t load_acquire(const uint32_t* p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
inline void store_relaxed(uint32_t* p, uint32_t v) { __atomic_store_n(p, v, __ATOMIC_RELAXED); }
inline void store_release(uint32_t* p, uint32_t v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }

}  // namespace hnsw

// The walk over u8 codes (l2; cosine on normalized vectors, where l2 ranks as cosine does).
struct HnswIndex::CodeSpace {
  using D = uint32_t;
  const HnswIndex* ix;
  const uint8_t* q;
  // out[j] = dist(s[j]) for j < n, in one kernel call.
  void dist_many(const uint32_t* s, uint32_t n, hnsw::SearchContext& ctx, D* out) const {
    if (ctx.rows.size() < n) ctx.rows.resize(n);
    for (uint32_t j = 0; j < n; ++j) ctx.rows[j] = ix->code(s[j]);
    ix->l2u8many_(q, ctx.rows.data(), n, ix->dim_, out);
  }
  D dist(uint32_t s) const { return ix->l2u8_(q, ix->code(s), ix->dim_); }
  D pair(uint32_t a, uint32_t b) const { return ix->l2u8_(ix->code(a), ix->code(b), ix->dim_); }
  // The code lines only: the links are read when (if) the node is expanded.
  void prefetch(uint32_t s) const {
    hnsw::prefetch_lines(ix->block(s), ix->code_bytes_);
  }
};

// The walk over f32 vectors (ip: distance 1 - dot).
struct HnswIndex::FloatSpace {
  using D = float;
  const HnswIndex* ix;
  const float* q;
  float (*ip)(const float*, const float*, size_t);
  D dist(uint32_t s) const { return 1.0f - ip(q, ix->vec(s), ix->dim_); }
  void dist_many(const uint32_t* s, uint32_t n, hnsw::SearchContext&, D* out) const {
    for (uint32_t j = 0; j < n; ++j) out[j] = dist(s[j]);
  }
  D pair(uint32_t a, uint32_t b) const { return 1.0f - ip(ix->vec(a), ix->vec(b), ix->dim_); }
  void prefetch(uint32_t s) const {
    hnsw::prefetch_lines(ix->vec(s), ix->dim_ * sizeof(float));
  }
};

// Greedy descent through levels from..to+1: moves to the closest neighbour until none is closer.
template <typename Space>
void HnswIndex::greedy(const Space& sp, uint32_t* ep, typename Space::D* epd, int from, int to) const {
  uint32_t cur = *ep;
  typename Space::D best = *epd;
  for (int l = from; l > to; --l) {
    for (bool changed = true; changed;) {
      changed = false;
      const uint32_t* ll = links(cur, l);
      const uint32_t c = std::min(hnsw::load_acquire(ll), max_links(l));
      for (uint32_t j = 0; j < c; ++j) {
        const uint32_t nb = hnsw::load_relaxed(ll + 1 + j);
        const typename Space::D d = sp.dist(nb);
        if (d < best || (d == best && nb < cur)) {
          best = d;
          cur = nb;
          changed = true;
        }
      }
    }
  }
  *ep = cur;
  *epd = best;
}

// Beam search of width ef on one level from ep. Leaves ctx.res<D>() as a max-heap of at most ef
// (distance, slot) pairs. kFiltered: only live slots whose label the filter allows enter the
// results (the walk still passes through the others). kCheckLive: tombstones may be reachable.
template <typename Space, bool kFiltered, bool kCheckLive>
void HnswIndex::walk(const Space& sp, hnsw::SearchContext& ctx, uint32_t ep, typename Space::D epd, int level,
                     uint32_t ef, const Filter* f) const {
  using D = typename Space::D;
  using C = hnsw::Cand<D>;
  auto& cand = ctx.cand<D>();
  auto& res = ctx.res<D>();
  cand.clear();
  res.clear();
  auto accept = [&](uint32_t s) -> bool {
    if (!kFiltered && !kCheckLive) return true;
    const Meta& mt = meta(s);
    if (mt.state.load(std::memory_order_acquire) != kLive) return false;
    return !kFiltered || f->allows(mt.label);
  };
  ctx.new_visit(n_slots_.load(std::memory_order_acquire));
  ctx.visit(ep);
  cand.push_back(C(epd, ep));
  if (accept(ep)) res.push_back(C(epd, ep));
  const uint32_t maxl = max_links(level);
  if (ctx.nbrs.size() < maxl) ctx.nbrs.resize(maxl);
  uint32_t* nbrs = ctx.nbrs.data();
  while (!cand.empty()) {
    const C top = cand.front();
    if (res.size() >= ef && res.front() < top) break;
    std::pop_heap(cand.begin(), cand.end(), std::greater<C>());
    cand.pop_back();
    // The next candidate to expand is likely the new front: fetch its links while this one runs.
    if (level == 0 && !cand.empty()) prefetch_links0(cand.front().second);
    const uint32_t* ll = links(top.second, level);
    const uint32_t c = std::min(hnsw::load_acquire(ll), maxl);
    uint32_t n = 0;
    for (uint32_t j = 0; j < c; ++j) {
      const uint32_t nb = hnsw::load_relaxed(ll + 1 + j);
      if (ctx.visit(nb)) nbrs[n++] = nb;
    }
    // Every new neighbour's code lines are requested at once, so their memory latencies overlap
    // (a handful of distances at a time cannot hide a DRAM miss each).
    for (uint32_t j = 0; j < n; ++j) sp.prefetch(nbrs[j]);
    D* dists = ctx.dists<D>(maxl);
    sp.dist_many(nbrs, n, ctx, dists);
    for (uint32_t j = 0; j < n; ++j) {
      const uint32_t nb = nbrs[j];
      const C cd(dists[j], nb);
      if (res.size() < ef || cd < res.front()) {
        cand.push_back(cd);
        std::push_heap(cand.begin(), cand.end(), std::greater<C>());
        if (accept(nb)) {
          res.push_back(cd);
          std::push_heap(res.begin(), res.end());
          if (res.size() > ef) {
            std::pop_heap(res.begin(), res.end());
            res.pop_back();
          }
        }
      }
    }
  }
}

// hnswlib's neighbour heuristic: walk the candidates nearest first and keep one only if it is
// closer to the base point than to every one already kept. `cand` is sorted ascending.
template <typename Space>
void HnswIndex::prune(const Space& sp, std::vector<std::pair<typename Space::D, uint32_t>>& cand, uint32_t max,
                      std::vector<uint32_t>* out) const {
  out->clear();
  if (cand.size() <= max) {
    for (const auto& c : cand) out->push_back(c.second);
    return;
  }
  for (const auto& c : cand) {
    if (out->size() >= max) break;
    bool good = true;
    for (uint32_t s : *out) {
      if (sp.pair(c.second, s) < c.first) {
        good = false;
        break;
      }
    }
    if (good) out->push_back(c.second);
  }
}

}  // namespace qv
