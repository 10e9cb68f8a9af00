// HnswIndex: deterministic parallel batch insertion, upsert, removal with neighbour repair.
//
// add(batch), after validation:
//   1. labels already present are removed first (upsert = remove + insert, see remove_slots);
//   2. cosine vectors are normalized (for the codes; the vectors are kept as given, with their
//      inverse norm); the quantizer range is widened to cover the batch (and the stored codes it
//      changes are re-encoded);
//   3. each point gets a slot (lowest free slot first, else a new one) and its level
//      (hash of label and seed), its vector and code are written;
//   4. the points are inserted in rounds of sizes 1, 2, 4, ... capped at 1/8 of the graph, at
//      2% of the final size and at kRoundMax (prefix doubling). In a round:
//        a. in parallel, each point searches the graph as it stood before the round (new points
//           of the round are not linked yet, so they cannot be found), adds every other point
//           of the round as a candidate (brute force), and writes its own links: the heuristic
//           choice of m among those candidates, per level;
//        b. the reverse links (target q gets the new point p) are grouped by (level, q) and
//           applied in batch order, in parallel over groups; a list that overflows is re-pruned
//           by the same heuristic;
//        c. the entry point moves to the first point of the round with the highest level, if
//           that level is above the current top.
//      Nothing in a or b depends on the thread count, so the graph is the same for any.
//   5. the label map is updated.
// Everything the batch keeps is allocated before step 1 (see "Out of memory" in hnsw_index.h), so
// steps 1-3 and 5 cannot fail; only the rounds' scratch is allocated as they go.
#include <algorithm>
#include <cmath>
#include <tuple>

#include "common/assert.h"
#include "common/limits.h"
#include "common/thread_pool.h"
#include "hnsw/hnsw_index.h"
#include "hnsw/hnsw_walk.h"

namespace qv {

// After a refit: re-encodes what it says changed, over the live slots, in parallel. Every code
// is recomputed from its f32 vector, so the result does not depend on the thread count.
// lossless_ (every stored code decodes exactly) is recomputed when every code is; after a
// partial re-encode it can only stay or turn false (codes of the other dimensions are unchanged).
// Allocates nothing (it runs after the write has changed the index): under cosine, scratch holds
// dim floats per thread (threads x dim), where each slot's normalized vector is computed.
void HnswIndex::reencode(const hnsw::ScalarQuantizer::Refit& r, int threads, float* scratch) {
  if (!r.all && r.dims.empty()) return;
  const uint32_t n = n_slots_.load(std::memory_order_relaxed);
  std::atomic<bool> lossless{true};
  parallel_for(n, threads, 1024, [&](size_t b, size_t e, int tid) {
    bool ok = true;
    float* buf = scratch == nullptr ? nullptr : scratch + static_cast<size_t>(tid) * dim_;
    for (size_t s = b; s < e; ++s) {
      if (meta(static_cast<uint32_t>(s)).state.load(std::memory_order_relaxed) != kLive) continue;
      const uint32_t slot = static_cast<uint32_t>(s);
      const float* v = coded_vector(slot, buf);
      ok = (r.all ? sq_.encode(v, code(slot)) : sq_.encode_dims(v, code(slot), r.dims)) && ok;
    }
    if (!ok) lossless.store(false);
  });
  if (r.all) lossless_.store(lossless.load(), std::memory_order_release);
  else if (!lossless.load()) lossless_.store(false, std::memory_order_release);
}

template <typename Space>
void HnswIndex::insert_round(const std::vector<uint32_t>& slots, const std::vector<int>& levels, size_t b, size_t e,
                             int threads) {
  using D = typename Space::D;
  const uint64_t entry = entry_packed();
  const uint32_t ep0 = entry_slot(entry);
  const int top = entry_level(entry);

  auto space_of = [this](uint32_t s) -> Space {
    if constexpr (std::is_same<Space, CodeSpace>::value) return CodeSpace{this, code(s)};
    else return FloatSpace{this, vec(s), kernels().ip_f32_fixed};  // same bits on every host
  };

  // a. Own links: candidates are the graph before the round (searched) plus the other points of
  //    the round (every one, by brute force: a round is at most kRoundMax points). Without the
  //    second part, points of one round could not link to each other, and input sorted by
  //    cluster (a whole cluster in one round) built a graph with the cluster's points unlinked.
  const bool have_graph = ep0 != kNone;
  if (have_graph || e - b > 1) {
    parallel_for(e - b, threads, 4, [&](size_t lo, size_t hi, int) {
      ContextLease ctx(this);
      std::vector<std::pair<D, uint32_t>> cand, peers, near, merged;
      std::vector<int> peer_level;
      std::vector<uint32_t> chosen;
      for (size_t i = b + lo; i < b + hi; ++i) {
        const uint32_t s = slots[i];
        const int L = levels[i];
        const Space sp = space_of(s);
        peers.clear();
        peer_level.clear();
        for (size_t j = b; j < e; ++j) {
          if (j == i) continue;
          peers.emplace_back(sp.dist(slots[j]), j);
        }
        std::sort(peers.begin(), peers.end());
        for (auto& pr : peers) {
          peer_level.push_back(levels[pr.second]);
          pr.second = slots[pr.second];
        }
        uint32_t ep = ep0;
        D epd{};
        if (have_graph) {
          epd = sp.dist(ep);
          if (L < top) greedy(sp, *ctx, &ep, &epd, top, L);
        }
        for (int l = L; l >= 0; --l) {
          cand.clear();
          if (have_graph && l <= top) {
            walk<Space, false, false>(sp, *ctx, ep, epd, l, p_.ef_construction, nullptr);
            cand = ctx->res<D>();  // sorted
            ep = cand[0].second;  // the next level starts from the graph, never from a peer
            epd = cand[0].first;
          }
          // The nearest 2m peers on this level join the search's candidates (peers are sorted).
          near.clear();
          for (size_t j = 0; j < peers.size() && near.size() < m0_; ++j)
            if (peer_level[j] >= l) near.push_back(peers[j]);
          merged.resize(cand.size() + near.size());
          std::merge(cand.begin(), cand.end(), near.begin(), near.end(), merged.begin());
          cand.swap(merged);
          prune(sp, cand, m_, &chosen);
          uint32_t* ll = links(s, l);
          for (size_t j = 0; j < chosen.size(); ++j) hnsw::store_relaxed(ll + 1 + j, chosen[j]);
          hnsw::store_release(ll, static_cast<uint32_t>(chosen.size()));
        }
      }
    });
  }

  // b. Reverse links, grouped by (level, target), in batch order within a group.
  std::vector<std::tuple<int, uint32_t, uint32_t>> edges;  // (level, target, index in batch)
  for (size_t i = b; i < e; ++i) {
    const uint32_t s = slots[i];
    for (int l = levels[i]; l >= 0; --l) {
      const uint32_t* ll = links(s, l);
      for (uint32_t j = 0; j < ll[0]; ++j) edges.emplace_back(l, ll[1 + j], static_cast<uint32_t>(i));
    }
  }
  std::sort(edges.begin(), edges.end());
  std::vector<size_t> starts;
  for (size_t i = 0; i < edges.size(); ++i)
    if (i == 0 || std::get<0>(edges[i]) != std::get<0>(edges[i - 1]) || std::get<1>(edges[i]) != std::get<1>(edges[i - 1]))
      starts.push_back(i);
  starts.push_back(edges.size());
  const size_t groups = starts.size() - 1;
  parallel_for(groups, threads, 16, [&](size_t lo, size_t hi, int) {
    std::vector<std::pair<D, uint32_t>> cand;
    std::vector<uint32_t> merged, chosen;
    for (size_t g = lo; g < hi; ++g) {
      const int l = std::get<0>(edges[starts[g]]);
      const uint32_t q = std::get<1>(edges[starts[g]]);
      uint32_t* ll = links(q, l);
      const uint32_t c = ll[0];
      merged.assign(ll + 1, ll + 1 + c);
      for (size_t x = starts[g]; x < starts[g + 1]; ++x) merged.push_back(slots[std::get<2>(edges[x])]);
      const uint32_t maxl = max_links(l);
      if (merged.size() <= maxl) {
        for (size_t j = c; j < merged.size(); ++j) hnsw::store_relaxed(ll + 1 + j, merged[j]);
        hnsw::store_release(ll, static_cast<uint32_t>(merged.size()));
        continue;
      }
      const Space sp = space_of(q);
      cand.clear();
      for (uint32_t x : merged) cand.emplace_back(sp.dist(x), x);
      std::sort(cand.begin(), cand.end());
      prune(sp, cand, maxl, &chosen);
      for (size_t j = 0; j < chosen.size(); ++j) hnsw::store_relaxed(ll + 1 + j, chosen[j]);
      hnsw::store_release(ll, static_cast<uint32_t>(chosen.size()));
    }
  });

  // c. Entry point.
  int best = ep0 == kNone ? -1 : top;
  uint32_t best_slot = ep0;
  for (size_t i = b; i < e; ++i) {
    if (levels[i] > best) {
      best = levels[i];
      best_slot = slots[i];
    }
  }
  if (best_slot != ep0) set_entry(best_slot, best);
}

Status HnswIndex::add(const uint32_t* labels, const float* vectors, size_t n, int threads) {
  QV_RETURN_IF_ERROR(check_vectors(vectors, n, dim_, "vectors"));
  QV_RETURN_IF_ERROR(check_labels_for_add(labels, n));
  if (n == 0) return Status::ok();
  std::lock_guard<std::mutex> w(write_mu_);
  threads = resolve_threads(threads);

  // Allocation, before anything changes. Labels already present are replaced (step 1).
  std::vector<uint32_t> replaced;
  {
    std::shared_lock<std::shared_mutex> g(label_mu_);
    for (size_t i = 0; i < n; ++i) {
      auto it = slot_of_.find(labels[i]);
      if (it != slot_of_.end()) replaced.push_back(it->second);
    }
  }
  const size_t new_slots = n > replaced.size() + free_.size() ? n - replaced.size() - free_.size() : 0;
  if (static_cast<uint64_t>(n_slots_.load()) + new_slots >= kNone)
    return resource_exhausted("hnsw index is full (2^32 - 1 slots)");
  StagedLabels<uint32_t> staged(labels, n);
  {
    std::unique_lock<std::shared_mutex> g(label_mu_);
    staged.reserve(slot_of_);
  }
  // Slots: the lowest free ones first (the replaced ones are free by then), then new ones.
  std::vector<uint32_t> slots(free_.rbegin(), free_.rbegin() + std::min(n, free_.size()));
  slots.insert(slots.end(), replaced.begin(), replaced.end());
  std::sort(slots.begin(), slots.end());
  const size_t reused = std::min(slots.size(), n);
  slots.resize(n);
  uint32_t next = n_slots_.load(std::memory_order_relaxed);
  for (size_t i = reused; i < n; ++i) slots[i] = next++;
  Removal removal = prepare_removal(std::move(replaced));
  std::vector<int> levels(n);
  std::vector<std::unique_ptr<uint32_t[]>> uppers(n);
  for (size_t i = 0; i < n; ++i) levels[i] = level_of(labels[i], p_.seed, m_);
  ensure_slots(next);
  size_t fresh = 0;
  for (size_t i = 0; i < n; ++i) {
    uppers[i] = upper_for(slots[i], levels[i]);
    fresh += uppers[i] != nullptr;
  }
  uppers_.reserve(uppers_.size() + fresh);
  // Cosine: the normalized copy the codes encode (x * 1/|x|, as normalize_f32 computes it) in the
  // index's scratch buffer, and 1/|x| of each vector, kept beside the vector as given.
  std::vector<float> inv(metric_ == Metric::Cosine ? n : 0);
  std::vector<float> reencode_scratch(metric_ == Metric::Cosine ? static_cast<size_t>(std::max(1, threads)) * dim_ : 0);
  const float* v = vectors;
  if (metric_ == Metric::Cosine) {
    normed_.resize(n * dim_);
    float* normed = normed_.data();
    parallel_for(n, threads, 256, [&](size_t lo, size_t hi, int) {
      for (size_t i = lo; i < hi; ++i) {
        inv[i] = inv_norm_f32(vectors + i * dim_, dim_);
        for (size_t d = 0; d < dim_; ++d) normed[i * dim_ + d] = vectors[i * dim_ + d] * inv[i];
      }
    });
    v = normed;
  }
  hnsw::ScalarQuantizer wider;
  const hnsw::ScalarQuantizer::Refit refit = use_codes() ? sq_.fit(v, n, dim_, &wider) : hnsw::ScalarQuantizer::Refit{};

  // 1. Upsert: labels already present leave first.
  if (!removal.slots.empty()) {
    {
      std::unique_lock<std::shared_mutex> g(label_mu_);
      for (size_t i = 0; i < n; ++i) slot_of_.erase(labels[i]);
    }
    remove_slots(removal, threads);
  }

  // 2. The quantizer covers the batch: a wider one and the codes it changes, with no search running.
  if (refit.widened) {
    ReadGate::Exclusive no_search(gate_);
    sq_ = std::move(wider);
    reencode(refit, threads, reencode_scratch.empty() ? nullptr : reencode_scratch.data());
  }

  // 3. Slots, vectors, codes.
  for (size_t i = 0; i < reused; ++i) {
    QV_ASSERT(free_.back() == slots[i]);
    free_.pop_back();
  }
  std::atomic<bool> lossless{true};
  parallel_for(n, threads, 256, [&](size_t lo, size_t hi, int) {
    bool ok = true;
    for (size_t i = lo; i < hi; ++i) {
      const uint32_t s = slots[i];
      std::memcpy(vec(s), vectors + i * dim_, dim_ * sizeof(float));
      if (metric_ == Metric::Cosine) inv_norm(s) = inv[i];
      if (use_codes()) ok = sq_.encode(v + i * dim_, code(s)) && ok;
    }
    if (!ok) lossless.store(false);
  });
  for (size_t i = 0; i < n; ++i) {
    init_slot(slots[i], labels[i], levels[i], std::move(uppers[i]));
    meta(slots[i]).state.store(kLive, std::memory_order_release);
  }
  if (!lossless.load()) lossless_.store(false, std::memory_order_release);
  n_slots_.store(next, std::memory_order_release);

  // 5 (also after a failed round). Labels.
  auto publish = [&] {
    std::unique_lock<std::shared_mutex> g(label_mu_);
    for (size_t i = 0; i < n; ++i) staged.put(slot_of_, labels[i], slots[i]);
    live_.fetch_add(n);
  };

  // 4. Rounds.
  const size_t final_size = live_.load() + n;
  const size_t cap_final = std::max<size_t>(1, final_size / 50);
  size_t done = 0, pow2 = 1;
  try {
    while (done < n) {
      const size_t graph = live_.load() + done;
      size_t rs = std::min({pow2, std::max<size_t>(1, graph / 8), cap_final, kRoundMax, n - done});
      if (use_codes()) insert_round<CodeSpace>(slots, levels, done, done + rs, threads);
      else insert_round<FloatSpace>(slots, levels, done, done + rs, threads);
      done += rs;
      pow2 = std::min(pow2 * 2, n);
    }
  } catch (const std::bad_alloc&) {
    // Out of memory in a round's scratch. Every link written so far names a live node, so the graph
    // is sound; the points not yet linked stay stored and labeled (a later upsert links them), and
    // an empty graph gets an entry point among them, as the first round would have chosen.
    if (entry_slot(entry_packed()) == kNone) {
      size_t top = 0;
      for (size_t i = 1; i < n; ++i)
        if (levels[i] > levels[top]) top = i;
      set_entry(slots[top], levels[top]);
    }
    publish();
    throw;
  }
  publish();
  return Status::ok();
}

Status HnswIndex::remove(const uint32_t* labels, size_t n) {
  if (n > kBatchVectorsMax) return invalid_argument("remove: too many labels in one call");
  std::lock_guard<std::mutex> w(write_mu_);
  std::vector<uint32_t> slots;
  slots.reserve(n);
  {
    std::shared_lock<std::shared_mutex> g(label_mu_);
    for (size_t i = 0; i < n; ++i) {
      auto it = slot_of_.find(labels[i]);
      if (it == slot_of_.end()) return not_found("label " + std::to_string(labels[i]) + " is not in the index");
      slots.push_back(it->second);
    }
  }
  std::sort(slots.begin(), slots.end());
  slots.erase(std::unique(slots.begin(), slots.end()), slots.end());  // a label repeated in the list
  Removal removal = prepare_removal(std::move(slots));
  {
    std::unique_lock<std::shared_mutex> g(label_mu_);
    for (size_t i = 0; i < n; ++i) slot_of_.erase(labels[i]);
  }
  remove_slots(removal, 0);
  return Status::ok();
}

HnswIndex::Removal HnswIndex::prepare_removal(std::vector<uint32_t> slots) {
  Removal r;
  r.dead.assign(n_slots_.load(std::memory_order_relaxed), 0);
  free_.reserve(free_.size() + slots.size());
  r.slots = std::move(slots);
  return r;
}

// Tombstones the slots (searches stop returning them at once), repairs every list that links to
// them, moves the entry point off them, waits out the searches that may still hold their ids, and
// frees them for reuse. Caller holds write_mu_ and has already taken the labels out of the map.
void HnswIndex::remove_slots(Removal& r, int threads) {
  if (r.slots.empty()) return;
  threads = resolve_threads(threads);
  const std::vector<char>& dead = r.dead;
  const uint32_t n = static_cast<uint32_t>(dead.size());
  dead_.fetch_add(r.slots.size());
  for (uint32_t s : r.slots) {
    meta(s).state.store(kDead, std::memory_order_release);
    r.dead[s] = 1;
  }
  live_.fetch_sub(r.slots.size());
  try {
    if (use_codes()) repair<CodeSpace>(dead, threads);
    else repair<FloatSpace>(dead, threads);
  } catch (const std::bad_alloc&) {
    drop_links_to(dead);
  }

  // Entry point: the live node of the highest level (lowest slot among equals).
  const uint32_t old_entry = entry_slot(entry_packed());
  if (old_entry == kNone || dead[old_entry]) {
    int best = -1;
    uint32_t best_slot = kNone;
    for (uint32_t s = 0; s < n; ++s) {
      if (dead[s] || meta(s).state.load(std::memory_order_relaxed) != kLive) continue;
      if (meta(s).level > best) {
        best = meta(s).level;
        best_slot = s;
      }
    }
    set_entry(best_slot, best < 0 ? 0 : best);
  }
  // No list links to the slots any more; a search that read one before the repair may still be
  // running. Once those are done, nothing can reach the slots until they are handed out again.
  gate_.grace();
  for (uint32_t s : r.slots) {
    hnsw::store_release(links(s, 0), 0);
    meta(s).state.store(kFree, std::memory_order_release);
    free_.push_back(s);
  }
  std::sort(free_.begin(), free_.end(), std::greater<uint32_t>());
  dead_.fetch_sub(r.slots.size());
}

// The repair without scratch, for when its allocation fails: every live list drops its links to
// removed nodes in place. The graph stays sound; the removed nodes' neighbours lose the detours
// the repair would have added.
void HnswIndex::drop_links_to(const std::vector<char>& dead) {
  const uint32_t n = static_cast<uint32_t>(dead.size());
  for (uint32_t s = 0; s < n; ++s) {
    if (dead[s] || meta(s).state.load(std::memory_order_relaxed) != kLive) continue;
    for (int l = 0; l <= meta(s).level; ++l) {
      uint32_t* ll = links(s, l);
      const uint32_t c = ll[0];
      uint32_t kept = 0;
      for (uint32_t j = 0; j < c; ++j)
        if (!dead[ll[1 + j]]) hnsw::store_relaxed(ll + 1 + kept++, ll[1 + j]);
      if (kept != c) hnsw::store_release(ll, kept);
    }
  }
}

// FreshDiskANN-style consolidation, level by level: a live node p that links to removed nodes
// gets as candidates its live links plus the live links of those removed neighbours, and keeps
// all of them if they fit, else the heuristic choice. New lists are computed from the old graph
// (in parallel), then written, so the result does not depend on the thread count.
template <typename Space>
void HnswIndex::repair(const std::vector<char>& dead, int threads) {
  using D = typename Space::D;
  const uint32_t n = static_cast<uint32_t>(dead.size());
  int top = 0;
  for (uint32_t s = 0; s < n; ++s)
    if (meta(s).state.load(std::memory_order_relaxed) == kLive) top = std::max<int>(top, meta(s).level);
  auto space_of = [this](uint32_t s) -> Space {
    if constexpr (std::is_same<Space, CodeSpace>::value) return CodeSpace{this, code(s)};
    else return FloatSpace{this, vec(s), kernels().ip_f32_fixed};  // same bits on every host
  };
  // The nodes to fix are found by a scan of every list, split in fixed ranges of slots over the
  // threads and joined in slot order, so the result does not depend on the thread count.
  constexpr uint32_t kScanRange = 16384;
  const size_t ranges = (static_cast<size_t>(n) + kScanRange - 1) / kScanRange;
  std::vector<std::vector<uint32_t>> found(ranges);
  for (int l = 0; l <= top; ++l) {
    parallel_for(ranges, threads, 1, [&](size_t lo, size_t hi, int) {
      for (size_t r = lo; r < hi; ++r) {
        auto& out = found[r];
        out.clear();
        const uint32_t end = static_cast<uint32_t>(std::min<size_t>(n, (r + 1) * kScanRange));
        for (uint32_t s = static_cast<uint32_t>(r * kScanRange); s < end; ++s) {
          if (dead[s] || meta(s).state.load(std::memory_order_relaxed) != kLive || meta(s).level < l) continue;
          const uint32_t* ll = links(s, l);
          for (uint32_t j = 0; j < ll[0]; ++j) {
            if (dead[ll[1 + j]]) {
              out.push_back(s);
              break;
            }
          }
        }
      }
    });
    std::vector<uint32_t> fix;
    for (const auto& f : found) fix.insert(fix.end(), f.begin(), f.end());
    std::vector<std::vector<uint32_t>> lists(fix.size());
    const uint32_t maxl = max_links(l);
    parallel_for(fix.size(), threads, 16, [&](size_t lo, size_t hi, int) {
      std::vector<std::pair<D, uint32_t>> cand;
      std::vector<uint32_t> merged;
      for (size_t i = lo; i < hi; ++i) {
        const uint32_t p = fix[i];
        const uint32_t* ll = links(p, l);
        merged.clear();
        for (uint32_t j = 0; j < ll[0]; ++j)
          if (!dead[ll[1 + j]]) merged.push_back(ll[1 + j]);
        for (uint32_t j = 0; j < ll[0]; ++j) {
          const uint32_t d = ll[1 + j];
          if (!dead[d]) continue;
          const uint32_t* dl = links(d, l);
          for (uint32_t t = 0; t < dl[0]; ++t) {
            const uint32_t x = dl[1 + t];
            if (x == p || dead[x] || meta(x).state.load(std::memory_order_relaxed) != kLive) continue;
            if (std::find(merged.begin(), merged.end(), x) == merged.end()) merged.push_back(x);
          }
        }
        if (merged.size() <= maxl) {
          lists[i] = merged;
          continue;
        }
        const Space sp = space_of(p);
        cand.clear();
        for (uint32_t x : merged) cand.emplace_back(sp.dist(x), x);
        std::sort(cand.begin(), cand.end());
        prune(sp, cand, maxl, &lists[i]);
      }
    });
    parallel_for(fix.size(), threads, 64, [&](size_t lo, size_t hi, int) {
      for (size_t i = lo; i < hi; ++i) {
        uint32_t* ll = links(fix[i], l);
        const auto& nl = lists[i];
        for (size_t j = 0; j < nl.size(); ++j) hnsw::store_relaxed(ll + 1 + j, nl[j]);
        hnsw::store_release(ll, static_cast<uint32_t>(nl.size()));
      }
    });
  }
}

}  // namespace qv
