// HnswIndex: hierarchical navigable small-world graph (Malkov & Yashunin) with an 8-bit scalar
// quantized walk, an exact f32 re-rank, deterministic parallel batch insertion, and tombstone
// deletes repaired in place.
//
// Layout. Nodes live in slots. A slot's level-0 data is one contiguous block:
//     [u8 code[dim]][pad to 4][f32 1/|x|, cosine only][u32 count][u32 links[2m]]   padded to 64 bytes
// so the walk touches one run of cache lines per node: a distance reads (and prefetches) only the
// code lines at the start, an expansion the link lines after them. f32 vectors as given (kept for
// the re-rank, get_vectors and serialize) and per-slot metadata (label, level, state, upper-level
// links) sit in separate arrays. Cosine keeps each vector as given too, so get_vectors returns it
// bit for bit, and its inverse norm r (inv_norm_f32) in the block: the walk's codes encode the
// normalized vector x * r (what normalize_f32 gives, to the bit), and the re-rank computes
// 1 - cos(q, x) = 1 - (q/|q|).x * r. Storage is chunked (4096 slots per chunk, a directory of chunk pointers
// that is replaced, never resized, when it fills), so capacity grows without moving a node
// while searches read it: there is no max_elements.
//
// Threading contract. add() and remove() (and serialize()) run one at a time (a writer mutex);
// search(), get_vectors(), size() and memory_bytes() may run at any time, from any number of
// threads, concurrently with them and with each other. search() takes no lock on the graph:
//  * A link list is updated in place (links first, then the count with a release store); every
//    id in it names a node whose data was written before the id was published, and readers load
//    counts with acquire. A search that races with a writer sees the old or the new list (never a
//    torn id), so it stays safe and loses at most a little recall; it may or may not return the
//    points of a batch being added, and one that starts after remove() returned never returns
//    the removed points.
//  * Each query holds the search gate (common/read_gate.h: an atomic increment and decrement, no
//    lock) while it runs. A removed slot is reused only after a grace period of the gate, so no
//    query still holding its id sees its code, vector or label rewritten; and when a batch widens
//    the quantizer's range, the writer closes the gate (new queries wait, running ones finish),
//    installs the new quantizer and re-encodes the codes, then opens it: a query sees the old
//    quantizer and codes or the new ones, never a mix. Refits are rare (the range grows with a
//    margin) and cost the waiting queries the re-encoding time (~n * dim byte encodes).
//  * The label -> slot map is behind a reader-writer lock that only the filtered exact path,
//    get_vectors and writers take; the writer never waits for the gate while it holds that lock
//    (a query in the gate may be waiting for it). Upper-level link arrays of reused slots are
//    reused or retired (freed with the index), never freed under a reader; so are replaced chunk
//    directories.
//
// Out of memory. add() allocates what it keeps (chunks, upper link arrays, label-map entries, the
// new quantizer, the scratch of the removal of replaced labels) before it changes anything: when
// one of those fails it throws std::bad_alloc and the index is unchanged. The build's own scratch
// (kilobytes per thread per round) is allocated as it goes; should that fail, add() still throws,
// and the batch is stored and labeled but some of its points may be left unreachable by the graph
// walk (exact filtered search and get_vectors find them) until they are added again. remove()
// allocates before it changes anything too; if the repair's scratch then fails, the links to the
// removed nodes are dropped in place instead (a little recall lost around them) and it succeeds.
//
// Determinism. A node's level is a hash of (label, seed). add(batch) inserts in rounds (prefix
// doubling, ParlayANN): within a round, each new point searches the graph as it stood before
// the round (in parallel), then reverse links are applied grouped by target node in batch order
// (in parallel over targets). Ties are broken by slot. Slots are handed out lowest-free-first.
// So the same batches in the same order give the same graph, codes and bytes whatever the
// thread count and whatever the SIMD level: the build reads only u8 code distances (l2, cosine),
// a fixed-order normalization (cosine) and the fixed-lane dot product ip_f32_fixed (ip).
//
// Removal. remove() tombstones the slots (never returned from then on), then repairs every node
// that links to them: its new list is its live links plus the live links of the removed
// neighbours, pruned by the same heuristic as insertion (FreshDiskANN's delete consolidation).
// The freed slots have no in-links left and are reused by later adds.
//
// Filters. An allow-set under ~2% of the live points is searched exactly (f32 over the allowed
// slots); a broader one walks the graph and keeps only allowed results.
#pragma once
#include <atomic>
#include <memory>
#include <mutex>
#include <shared_mutex>
#include <unordered_map>
#include <vector>

#include "common/alloc.h"
#include "common/index.h"
#include "common/read_gate.h"
#include "hnsw/hnsw_quant.h"

namespace qv {

namespace hnsw {
struct SearchContext;

// Requests every 64-byte line of [p, p + bytes) into L1 (prefetcht0 on x86).
inline void prefetch_lines(const void* p, size_t bytes) {
  if (bytes == 0) return;
  const uintptr_t end = reinterpret_cast<uintptr_t>(p) + bytes;
  for (uintptr_t a = reinterpret_cast<uintptr_t>(p) & ~uintptr_t{63}; a < end; a += 64)
    __builtin_prefetch(reinterpret_cast<const void*>(a));
}
}  // namespace hnsw

class HnswIndex final : public Index {
 public:
  struct Params {
    uint32_t m = 16;
    uint32_t ef_construction = 200;
    uint32_t ef_search = 64;
    uint64_t seed = 1;
  };

  HnswIndex(uint32_t dim, Metric metric, const Params& p);
  ~HnswIndex() override;

  static Status create(const IndexOptions& opts, std::unique_ptr<Index>* out);
  static Status deserialize(const EnvelopeInfo& info, std::unique_ptr<Index>* out);

  IndexKind kind() const override { return IndexKind::Hnsw; }
  uint32_t dim() const override { return dim_; }
  Metric metric() const override { return metric_; }
  size_t size() const override { return live_.load(std::memory_order_relaxed); }

  Status add(const uint32_t* labels, const float* vectors, size_t n, int threads) override;
  Status remove(const uint32_t* labels, size_t n) override;
  Status search(const float* queries, size_t nq, const SearchParams& params, uint32_t* out_labels,
                float* out_distances) const override;
  Status serialize(Bytes* out) const override;
  Status get_vectors(const uint32_t* labels, size_t n, float* out) const override;
  size_t memory_bytes() const override;

  // Level of a label under a seed (exposed for tests of the level distribution).
  static int level_of(uint32_t label, uint64_t seed, uint32_t m);

  static constexpr uint32_t kMMax = 128;
  static constexpr int kLevelMax = 15;
  // Points per insertion round at most; each compares itself with every other one of its round.
  static constexpr size_t kRoundMax = 256;
  // Search re-ranks (f32) the best max(2k, kRerankMin) walk results by code distance.
  static constexpr size_t kRerankMin = 16;
  // A filter allowing fewer than this share of the live points is searched exactly.
  static constexpr double kExactFilterShare = 0.02;

 private:
  static constexpr uint32_t kChunkBits = 12;
  static constexpr uint32_t kChunk = 1u << kChunkBits;
  static constexpr uint32_t kNone = 0xFFFFFFFFu;

  enum : uint8_t { kFree = 0, kLive = 1, kDead = 2 };

  struct Meta {
    // Read by searches (results, filters), written by the writer when it hands the slot out.
    // Relaxed is enough: the slot becomes reachable only through a link published (release) after
    // the write, and a reused slot is rewritten only after a grace period of the search gate, so
    // no reader loads it while it changes; atomic, so that even so no load of it is a data race.
    std::atomic<uint32_t> label;
    uint8_t level;                   // written and read by the writer only
    std::atomic<uint8_t> state;      // kFree, kLive, kDead
    // [cap][level 1: count, links[m]][level 2: ...] for levels 1..cap (cap >= level). A reader
    // checks l <= cap in the same array it reads, so a reused slot is never read out of bounds.
    std::atomic<uint32_t*> upper;
  };

  struct Dir {
    std::vector<char*> blocks;
    std::vector<float*> vecs;
    std::vector<Meta*> metas;
  };

  // Distance spaces of the walk (hnsw_walk.h): u8 codes (l2, cosine) or f32 (ip).
  struct CodeSpace;
  struct FloatSpace;
  template <typename Space>
  void greedy(const Space& sp, hnsw::SearchContext& ctx, uint32_t* ep, typename Space::D* epd, int from,
              int to) const;
  template <typename Space, bool kFiltered, bool kCheckLive>
  void walk(const Space& sp, hnsw::SearchContext& ctx, uint32_t ep, typename Space::D epd, int level,
            uint32_t ef, const Filter* f) const;
  template <typename Space>
  void walk_sorted(const Space& sp, hnsw::SearchContext& ctx, uint32_t ep, typename Space::D epd, int level,
                   uint32_t ef) const;
  uint32_t new_neighbours(hnsw::SearchContext& ctx, uint32_t s, int level, uint32_t* nbrs) const;
  template <typename Space>
  void prune(const Space& sp, std::vector<std::pair<typename Space::D, uint32_t>>& cand, uint32_t max,
             std::vector<uint32_t>* out) const;
  template <typename Space>
  void insert_round(const std::vector<uint32_t>& slots, const std::vector<int>& levels, size_t b, size_t e,
                    int threads);
  template <typename Space>
  void repair(const std::vector<char>& dead, int threads);
  template <typename Space>
  void search_one(const Space& sp, hnsw::SearchContext& ctx, const float* q, uint32_t k, uint32_t ef,
                  const Filter* f, bool exact_codes, uint32_t* ol, float* od) const;
  void search_filtered_exact(const float* q, uint32_t k, const Filter& f, uint32_t* ol, float* od) const;
  float final_distance(const float* q, uint32_t s) const;

  // --- storage ---
  char* block(uint32_t s) const {
    const Dir* d = dir_.load(std::memory_order_acquire);
    return d->blocks[s >> kChunkBits] + static_cast<size_t>(s & (kChunk - 1)) * stride_;
  }
  float* vec(uint32_t s) const {
    const Dir* d = dir_.load(std::memory_order_acquire);
    return d->vecs[s >> kChunkBits] + static_cast<size_t>(s & (kChunk - 1)) * dim_;
  }
  // Cosine: 1/|vec(s)| (inv_norm_f32).
  float& inv_norm(uint32_t s) const { return *reinterpret_cast<float*>(block(s) + inv_norm_off_); }
  // The vector the codes encode: vec(s) normalized into buf under cosine (bit for bit what
  // normalize_f32 gives), vec(s) itself otherwise.
  const float* coded_vector(uint32_t s, float* buf) const;
  Meta& meta(uint32_t s) const {
    const Dir* d = dir_.load(std::memory_order_acquire);
    return d->metas[s >> kChunkBits][s & (kChunk - 1)];
  }
  uint8_t* code(uint32_t s) const { return reinterpret_cast<uint8_t*>(block(s)); }
  // [count, links...] of slot s at level l; an empty list if s has no such level.
  uint32_t* links(uint32_t s, int l) const {
    if (l == 0) return reinterpret_cast<uint32_t*>(block(s) + links_off_);
    uint32_t* u = meta(s).upper.load(std::memory_order_acquire);
    if (u == nullptr || static_cast<uint32_t>(l) > u[0]) return empty_links();
    return u + 1 + static_cast<size_t>(l - 1) * (m_ + 1);
  }
  void prefetch_links0(uint32_t s) const { hnsw::prefetch_lines(block(s) + links_off_, 4 + 4 * static_cast<size_t>(m0_)); }
  static uint32_t* empty_links() {
    static uint32_t zero[1] = {0};
    return zero;
  }
  uint32_t max_links(int l) const { return l == 0 ? m0_ : m_; }
  void ensure_slots(uint32_t n);  // capacity for slots [0, n); throws std::bad_alloc, changing nothing
  // An upper link array for `level` if slot s has none large enough, else null.
  std::unique_ptr<uint32_t[]> upper_for(uint32_t s, int level) const;
  // Hands slot s out; `upper` comes from upper_for() (room in uppers_ reserved where it must not throw).
  void init_slot(uint32_t s, uint32_t label, int level, std::unique_ptr<uint32_t[]> upper);

  uint64_t entry_packed() const { return entry_.load(std::memory_order_acquire); }
  static uint32_t entry_slot(uint64_t e) { return static_cast<uint32_t>(e); }
  static int entry_level(uint64_t e) { return static_cast<int>(e >> 32); }
  void set_entry(uint32_t slot, int level) {
    entry_.store((static_cast<uint64_t>(level) << 32) | slot, std::memory_order_release);
  }

  bool use_codes() const { return metric_ != Metric::IP; }
  void reencode(const hnsw::ScalarQuantizer::Refit& r, int threads, float* scratch);
  // Removal of slots in two steps: prepare_removal() allocates (and may throw, changing nothing),
  // remove_slots() tombstones, repairs and frees them without throwing.
  struct Removal {
    std::vector<uint32_t> slots;
    std::vector<char> dead;  // per slot: being removed
  };
  Removal prepare_removal(std::vector<uint32_t> slots);
  void remove_slots(Removal& r, int threads);
  void drop_links_to(const std::vector<char>& dead);  // the repair without scratch

  hnsw::SearchContext* acquire_context() const;
  void release_context(hnsw::SearchContext* c) const noexcept;
  // A pooled context for the scope (given back also when a search throws).
  class ContextLease {
   public:
    explicit ContextLease(const HnswIndex* ix) : ix_(ix), c_(ix->acquire_context()) {}
    ~ContextLease() { ix_->release_context(c_); }
    ContextLease(const ContextLease&) = delete;
    ContextLease& operator=(const ContextLease&) = delete;
    hnsw::SearchContext* operator->() const { return c_; }
    hnsw::SearchContext& operator*() const { return *c_; }

   private:
    const HnswIndex* ix_;
    hnsw::SearchContext* c_;
  };

  const uint32_t dim_;
  const Metric metric_;
  const Params p_;
  const uint32_t m_, m0_;
  const double level_mult_;
  const size_t code_bytes_, inv_norm_off_, links_off_, stride_;  // level-0 block: codes, (1/|x|,) links
  hnsw::L2U8Fn l2u8_;
  hnsw::L2U8ManyFn l2u8many_;

  std::atomic<Dir*> dir_{nullptr};
  std::vector<std::unique_ptr<Dir>> dirs_;   // every directory ever published (old ones retired)
  std::vector<void*> chunks_;                // alloc_aligned64 blocks, freed with the index
  std::vector<std::unique_ptr<Meta[]>> meta_chunks_;
  std::vector<std::unique_ptr<uint32_t[]>> uppers_;  // upper link arrays (live and retired)
  std::atomic<size_t> chunk_count_{0};
  std::atomic<size_t> aux_bytes_{0};            // directories and upper link arrays
  std::atomic<uint32_t> n_slots_{0};         // slots ever handed out
  std::atomic<uint64_t> entry_;
  std::atomic<size_t> live_{0};
  std::atomic<size_t> dead_{0};              // tombstones not yet repaired
  std::vector<uint32_t> free_;               // free slots, sorted descending (pop_back = lowest)

  hnsw::ScalarQuantizer sq_;                 // replaced, and codes re-encoded, with gate_ closed
  std::atomic<bool> lossless_{true};         // every stored vector decodes exactly from its code

  mutable ReadGate gate_;              // held by each query; see "Threading contract"

  mutable std::mutex write_mu_;              // one add/remove/serialize at a time
  // add()'s normalized copy of a cosine batch (for the codes), kept for the next batch: allocated
  // afresh on whichever pool thread runs the add, each batch's copy stayed cached in that thread's
  // malloc arena (on Fashion-MNIST in 1,000-vector batches, ~50 MiB of RSS over 16 threads).
  std::vector<float> normed_;
  mutable std::shared_mutex label_mu_;
  std::unordered_map<uint32_t, uint32_t> slot_of_;

  mutable std::mutex ctx_mu_;
  mutable std::vector<std::unique_ptr<hnsw::SearchContext>> ctx_pool_;
};

}  // namespace qv
