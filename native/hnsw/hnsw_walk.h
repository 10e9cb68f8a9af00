// Internals of HnswIndex shared by search (hnsw_index.cpp) and build (hnsw_build.cpp): the
// per-thread search context, the two distance spaces and the graph walk templates.
#pragma once
#include <algorithm>
#include <cstring>
#include <functional>
#include <limits>
#include <type_traits>
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
  std::vector<uint8_t> expanded;  // the sorted walk's flags, parallel to its list
  std::vector<uint64_t> keys;     // the sorted walk's list for u32 distances
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
  // out[j] = dist(s[j]) for j < n: every code's lines requested first, so that their memory
  // latencies overlap (a handful of distances at a time cannot hide a DRAM miss each), then one
  // kernel call.
  void dist_many(const uint32_t* s, uint32_t n, hnsw::SearchContext& ctx, D* out) const {
    if (ctx.rows.size() < n) ctx.rows.resize(n);
    const uint8_t** rows = ctx.rows.data();
    for (uint32_t j = 0; j < n; ++j) {
      rows[j] = ix->code(s[j]);
      hnsw::prefetch_lines(rows[j], ix->code_bytes_);
    }
    ix->l2u8many_(q, rows, n, ix->dim_, out);
  }
  D dist(uint32_t s) const { return ix->l2u8_(q, ix->code(s), ix->dim_); }
  D pair(uint32_t a, uint32_t b) const { return ix->l2u8_(ix->code(a), ix->code(b), ix->dim_); }
};

// The walk over f32 vectors (ip: distance 1 - dot).
struct HnswIndex::FloatSpace {
  using D = float;
  const HnswIndex* ix;
  const float* q;
  float (*ip)(const float*, const float*, size_t);
  D dist(uint32_t s) const { return 1.0f - ip(q, ix->vec(s), ix->dim_); }
  void dist_many(const uint32_t* s, uint32_t n, hnsw::SearchContext&, D* out) const {
    for (uint32_t j = 0; j < n; ++j) prefetch(s[j]);
    for (uint32_t j = 0; j < n; ++j) out[j] = dist(s[j]);
  }
  D pair(uint32_t a, uint32_t b) const { return 1.0f - ip(ix->vec(a), ix->vec(b), ix->dim_); }
  void prefetch(uint32_t s) const {
    hnsw::prefetch_lines(ix->vec(s), ix->dim_ * sizeof(float));
  }
};

// Greedy descent through levels from..to+1: moves to the closest neighbour until none is closer.
// A node's neighbours are measured in one call (their lines requested at once), then taken in
// link order as one at a time would be: the same moves, without a cache miss per neighbour in
// series.
template <typename Space>
void HnswIndex::greedy(const Space& sp, hnsw::SearchContext& ctx, uint32_t* ep, typename Space::D* epd, int from,
                       int to) const {
  using D = typename Space::D;
  if (ctx.nbrs.size() < m0_) ctx.nbrs.resize(m0_);
  uint32_t* nbrs = ctx.nbrs.data();
  D* dists = ctx.dists<D>(m0_);
  uint32_t cur = *ep;
  D best = *epd;
  for (int l = from; l > to; --l) {
    for (bool changed = true; changed;) {
      changed = false;
      const uint32_t* ll = links(cur, l);
      const uint32_t c = std::min(hnsw::load_acquire(ll), max_links(l));
      for (uint32_t j = 0; j < c; ++j) nbrs[j] = hnsw::load_relaxed(ll + 1 + j);
      sp.dist_many(nbrs, c, ctx, dists);
      for (uint32_t j = 0; j < c; ++j) {
        if (dists[j] < best || (dists[j] == best && nbrs[j] < cur)) {
          best = dists[j];
          cur = nbrs[j];
          changed = true;
        }
      }
    }
  }
  *ep = cur;
  *epd = best;
}

// The unvisited neighbours of s on a level, into nbrs (marked visited). Returns how many.
inline uint32_t HnswIndex::new_neighbours(hnsw::SearchContext& ctx, uint32_t s, int level, uint32_t* nbrs) const {
  const uint32_t* ll = links(s, level);
  const uint32_t c = std::min(hnsw::load_acquire(ll), max_links(level));
  uint32_t n = 0;
  for (uint32_t j = 0; j < c; ++j) {
    const uint32_t nb = hnsw::load_relaxed(ll + 1 + j);
    if (ctx.visit(nb)) nbrs[n++] = nb;
  }
  return n;
}

// Beam search of width ef on one level from ep. Leaves ctx.res<D>() holding at most ef
// (distance, slot) pairs, sorted ascending. kFiltered: only live slots whose label the filter allows enter the results (the walk still
// passes through the others). kCheckLive: tombstones may be reachable.
template <typename Space, bool kFiltered, bool kCheckLive>
void HnswIndex::walk(const Space& sp, hnsw::SearchContext& ctx, uint32_t ep, typename Space::D epd, int level,
                     uint32_t ef, const Filter* f) const {
  if constexpr (!kFiltered && !kCheckLive) {
    walk_sorted(sp, ctx, ep, epd, level, ef);
  } else {
    using D = typename Space::D;
    using C = hnsw::Cand<D>;
    auto& cand = ctx.cand<D>();
    auto& res = ctx.res<D>();
    cand.clear();
    res.clear();
    auto accept = [&](uint32_t s) -> bool {
      const Meta& mt = meta(s);
      if (mt.state.load(std::memory_order_acquire) != kLive) return false;
      return !kFiltered || f->allows(mt.label.load(std::memory_order_relaxed));
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
      const uint32_t n = new_neighbours(ctx, top.second, level, nbrs);
      D* dists = ctx.dists<D>(maxl);
      sp.dist_many(nbrs, n, ctx, dists);
      for (uint32_t j = 0; j < n; ++j) {
        const C cd(dists[j], nbrs[j]);
        if (res.size() < ef || cd < res.front()) {
          cand.push_back(cd);
          std::push_heap(cand.begin(), cand.end(), std::greater<C>());
          if (accept(nbrs[j])) {
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
    std::sort_heap(res.begin(), res.end());
  }
}

// The plain walk (no filter, no tombstones: every search and every build step on a clean index)
// keeps one sorted list of the ef nearest seen so far, with an expanded flag per entry, and
// expands its nearest unexpanded entry until none is left. That is the two-heap walk above step
// for step: its candidate heap pops in (distance, slot) order and stops at the first candidate
// outside the ef nearest, which is the first one this list no longer holds. So the expansions,
// the results and the graphs built are the same, for less work: a sorted insert (a binary search
// and a short move) instead of a push on each heap and a pop. For u32 distances an entry is one
// 64-bit key, distance << 32 | slot, which orders as the pair does.
template <typename Space>
void HnswIndex::walk_sorted(const Space& sp, hnsw::SearchContext& ctx, uint32_t ep, typename Space::D epd,
                            int level, uint32_t ef) const {
  using D = typename Space::D;
  using C = hnsw::Cand<D>;
  constexpr bool kPacked = std::is_same<D, uint32_t>::value;
  using E = typename std::conditional<kPacked, uint64_t, C>::type;
  auto make = [](D d, uint32_t s) -> E {
    if constexpr (kPacked) return (uint64_t{d} << 32) | s;
    else return C(d, s);
  };
  auto slot_of = [](const E& e) -> uint32_t {
    if constexpr (kPacked) return static_cast<uint32_t>(e);
    else return e.second;
  };
  std::vector<E>* lp;
  if constexpr (kPacked) lp = &ctx.keys;
  else lp = &ctx.res<D>();
  std::vector<E>& list = *lp;
  std::vector<uint8_t>& done = ctx.expanded;
  list.clear();
  done.clear();
  ctx.new_visit(n_slots_.load(std::memory_order_acquire));
  ctx.visit(ep);
  list.push_back(make(epd, ep));
  done.push_back(0);
  const uint32_t maxl = max_links(level);
  if (ctx.nbrs.size() < maxl) ctx.nbrs.resize(maxl);
  uint32_t* nbrs = ctx.nbrs.data();
  size_t cur = 0;  // every entry before cur is expanded
  while (cur < list.size()) {
    done[cur] = 1;
    // The next entry to expand, unless a new neighbour lands before it: fetch its links now.
    if (level == 0) {
      size_t nx = cur + 1;
      while (nx < list.size() && done[nx]) ++nx;
      if (nx < list.size()) prefetch_links0(slot_of(list[nx]));
    }
    const uint32_t n = new_neighbours(ctx, slot_of(list[cur]), level, nbrs);
    D* dists = ctx.dists<D>(maxl);
    sp.dist_many(nbrs, n, ctx, dists);
    size_t lowest = cur;
    for (uint32_t j = 0; j < n; ++j) {
      const E e = make(dists[j], nbrs[j]);
      if (list.size() >= ef && !(e < list.back())) continue;
      const auto at = std::lower_bound(list.begin(), list.end(), e) - list.begin();
      if (list.size() >= ef) {
        list.pop_back();
        done.pop_back();
      }
      list.insert(list.begin() + at, e);
      done.insert(done.begin() + at, uint8_t{0});
      lowest = std::min(lowest, static_cast<size_t>(at));
    }
    cur = lowest;
    while (cur < list.size() && done[cur]) ++cur;
  }
  if constexpr (kPacked) {
    auto& res = ctx.res<D>();
    res.clear();
    for (uint64_t e : list) res.push_back(C(static_cast<D>(e >> 32), static_cast<uint32_t>(e)));
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
