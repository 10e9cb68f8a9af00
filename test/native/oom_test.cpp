// Allocation-failure sweep of the indexes, under AddressSanitizer + UBSan (scripts/sanitize.sh).
//
// This program replaces the global operator new/delete with ones that can be told to fail: either
// exactly the k-th allocation from now (once), or every allocation from the k-th on (memory stays
// exhausted). For each write (add with new and replaced labels that widen the HNSW quantizer,
// remove, IVF-PQ train) and each read (search, serialize, deserialize) of every kind, k runs from
// 0 until the operation no longer reaches a k-th allocation, on a fresh copy of the same index
// each time. Whatever fails, the operation must either throw std::bad_alloc or succeed, and then:
//  * the index is consistent: it serializes, and what it serializes deserializes (an HNSW graph
//    with a link to a freed slot, say, is refused there with DATA_LOSS);
//  * a write that threw left the index as it was (the same bytes), except an HNSW add whose
//    rounds ran out, which keeps the whole batch (every label, with its vector);
//  * repeating a write that threw gives what the write gives without a failure (for Flat and
//    IVF-PQ the same bytes; for HNSW the same labels and vectors);
//  * a read that succeeded answers as it does without a failure.
// LeakSanitizer (on with ASan) reports any allocation an unwinding path forgot.
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <new>
#include <string>
#include <vector>

#include "driver.h"

namespace {

// < 0: off. Otherwise the number of allocations that still succeed before one fails.
std::atomic<long> countdown{-1};
std::atomic<bool> persistent{false};  // every allocation fails once the countdown has run out
std::atomic<bool> fired{false};

bool should_fail() {
  long n = countdown.load(std::memory_order_relaxed);
  while (n >= 0) {
    if (n == 0) {
      fired.store(true, std::memory_order_relaxed);
      if (!persistent.load(std::memory_order_relaxed)) countdown.store(-1, std::memory_order_relaxed);
      return true;
    }
    if (countdown.compare_exchange_weak(n, n - 1, std::memory_order_relaxed)) return false;
  }
  return false;
}

void* allocate(size_t n, size_t align) {
  if (should_fail()) return nullptr;
  if (n == 0) n = 1;
  if (align <= alignof(std::max_align_t)) return std::malloc(n);
  void* p = nullptr;
  return posix_memalign(&p, align, n) == 0 ? p : nullptr;
}

void* allocate_or_throw(size_t n, size_t align) {
  void* p = allocate(n, align);
  if (p == nullptr) throw std::bad_alloc();
  return p;
}

}  // namespace

// These delete what allocate() got from malloc/posix_memalign; gcc cannot see that pairing.
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"
void* operator new(size_t n) { return allocate_or_throw(n, 0); }
void* operator new[](size_t n) { return allocate_or_throw(n, 0); }
void* operator new(size_t n, std::align_val_t a) { return allocate_or_throw(n, static_cast<size_t>(a)); }
void* operator new[](size_t n, std::align_val_t a) { return allocate_or_throw(n, static_cast<size_t>(a)); }
void* operator new(size_t n, const std::nothrow_t&) noexcept { return allocate(n, 0); }
void* operator new[](size_t n, const std::nothrow_t&) noexcept { return allocate(n, 0); }
void* operator new(size_t n, std::align_val_t a, const std::nothrow_t&) noexcept { return allocate(n, static_cast<size_t>(a)); }
void* operator new[](size_t n, std::align_val_t a, const std::nothrow_t&) noexcept { return allocate(n, static_cast<size_t>(a)); }
void operator delete(void* p) noexcept { std::free(p); }
void operator delete[](void* p) noexcept { std::free(p); }
void operator delete(void* p, size_t) noexcept { std::free(p); }
void operator delete[](void* p, size_t) noexcept { std::free(p); }
void operator delete(void* p, std::align_val_t) noexcept { std::free(p); }
void operator delete[](void* p, std::align_val_t) noexcept { std::free(p); }
void operator delete(void* p, size_t, std::align_val_t) noexcept { std::free(p); }
void operator delete[](void* p, size_t, std::align_val_t) noexcept { std::free(p); }
void operator delete(void* p, const std::nothrow_t&) noexcept { std::free(p); }
void operator delete[](void* p, const std::nothrow_t&) noexcept { std::free(p); }
void operator delete(void* p, std::align_val_t, const std::nothrow_t&) noexcept { std::free(p); }
void operator delete[](void* p, std::align_val_t, const std::nothrow_t&) noexcept { std::free(p); }

namespace {

using qv::Index, qv::Metric, qv::Status;
using qvtest::bytes_of, qvtest::labels_from;

constexpr uint32_t kDim = 6;

std::vector<float> vectors(size_t n, uint64_t seed, float scale) { return qvtest::vectors(n, kDim, seed, scale); }

std::unique_ptr<Index> load(const qv::Bytes& b) {
  std::unique_ptr<Index> ix;
  const Status st = qv::deserialize_index(b.data(), b.size(), &ix);
  CHECK(st.is_ok(), "deserialize: %s", st.message().c_str());
  return ix;
}

// The stored vector of every label in `labels` (empty where absent).
std::map<uint32_t, std::vector<float>> contents(const Index& ix, uint32_t max_label) {
  std::map<uint32_t, std::vector<float>> out;
  std::vector<float> v(kDim);
  for (uint32_t l = 0; l < max_label; ++l)
    if (ix.get_vectors(&l, 1, v.data()).is_ok()) out[l] = v;
  return out;
}

struct Answer {
  Status st;
  std::vector<uint32_t> labels;
  std::vector<float> dists;
};
Answer search(const Index& ix) {
  const auto q = vectors(3, 99, 1.0f);
  Answer a{Status::ok(), std::vector<uint32_t>(3 * 4), std::vector<float>(3 * 4)};
  qv::SearchParams p;
  p.k = 4;
  p.ef = 16;
  p.nprobe = 2;
  p.threads = 2;
  a.st = ix.search(q.data(), 3, p, a.labels.data(), a.dists.data());
  return a;
}

// Sets the failure point, runs fn, clears it; returns whether the failure point was reached.
bool armed(long k, bool persist, const std::function<void()>& fn) {
  fired.store(false);
  persistent.store(persist);
  countdown.store(k);
  fn();
  countdown.store(-1);
  return fired.load();
}

// The sweep of one operation over copies of `base`. `op` runs on a copy and returns its status
// (or throws std::bad_alloc); `partial_ok`: an HNSW add, which may keep its batch when it throws.
void sweep(const std::string& name, const qv::Bytes& base, uint32_t max_label, bool write,
           bool partial_ok, const std::function<Status(Index&)>& op) {
  // What the operation gives without a failure.
  auto clean = load(base);
  const Status clean_st = op(*clean);
  CHECK(clean_st.is_ok(), "%s without a failure: %s", name.c_str(), clean_st.message().c_str());
  const auto clean_bytes = bytes_of(*clean);
  const auto clean_contents = contents(*clean, max_label);
  const Answer clean_answer = search(*clean);
  const bool exact_bytes = clean->kind() != qv::IndexKind::Hnsw;

  size_t runs = 0, threw = 0, kept = 0;
  for (bool persist : {false, true}) {
    for (long k = 0;; ++k) {
      auto ix = load(base);
      if (!ix) return;
      Status st;
      bool bad_alloc = false;
      const bool reached = armed(k, persist, [&] {
        try {
          st = op(*ix);
        } catch (const std::bad_alloc&) {
          bad_alloc = true;
        }
      });
      ++runs;
      threw += bad_alloc;
      if (!bad_alloc) CHECK(st.is_ok(), "%s k=%ld: %s", name.c_str(), k, st.message().c_str());
      // Consistent: what it serializes loads again.
      const auto b = bytes_of(*ix);
      auto again = load(b);
      if (again) CHECK(bytes_of(*again) == b, "%s k=%ld: the reloaded index serializes differently", name.c_str(), k);
      if (write) {
        if (bad_alloc && b != base) {
          const bool whole_batch = partial_ok && contents(*ix, max_label) == clean_contents && ix->size() == clean->size();
          kept += whole_batch;
          CHECK(whole_batch, "%s k=%ld: a write that threw changed the index", name.c_str(), k);
        }
        if (bad_alloc) CHECK(op(*ix).is_ok(), "%s k=%ld: repeating the write", name.c_str(), k);
        if (exact_bytes) CHECK(bytes_of(*ix) == clean_bytes, "%s k=%ld: not what a write without failure gives", name.c_str(), k);
        CHECK(contents(*ix, max_label) == clean_contents, "%s k=%ld: contents differ from a write without failure", name.c_str(), k);
        CHECK(ix->size() == clean->size(), "%s k=%ld: size %zu, expected %zu", name.c_str(), k, ix->size(), clean->size());
      } else {
        CHECK(b == base, "%s k=%ld: a read changed the index", name.c_str(), k);
      }
      const Answer a = search(*ix);
      if (a.st.is_ok() && (!write || exact_bytes))
        CHECK(a.labels == clean_answer.labels && a.dists == clean_answer.dists, "%s k=%ld: answers differ", name.c_str(), k);
      if (!reached) break;
    }
  }
  std::printf("oom_test %-26s %5zu runs, %5zu threw std::bad_alloc, %3zu kept a whole batch\n", name.c_str(), runs,
              threw, kept);
}

std::unique_ptr<Index> make(const std::string& kind, Metric metric, std::map<std::string, double> num) {
  return qvtest::make(kind, kDim, metric, std::move(num));
}

void sweep_kind(const std::string& name, std::unique_ptr<Index> ix) {
  const uint32_t n = 60, max_label = n + 20;
  const auto v = vectors(n, 1, 1.0f);
  const auto l = labels_from(0, n);
  CHECK(ix->add(l.data(), v.data(), n, 2).is_ok(), "%s add", name.c_str());
  const auto base = bytes_of(*ix);

  // 10 replaced labels and 20 new ones, from a wider range (an HNSW quantizer refit).
  const auto al = labels_from(n - 10, 30);
  const auto av = vectors(30, 2, 3.0f);
  sweep(name + " add", base, max_label, true, ix->kind() == qv::IndexKind::Hnsw,
        [&](Index& x) { return x.add(al.data(), av.data(), al.size(), 2); });
  const auto rl = labels_from(5, 12);
  sweep(name + " remove", base, max_label, true, false, [&](Index& x) { return x.remove(rl.data(), rl.size()); });
  sweep(name + " search", base, max_label, false, false, [](Index& x) { return search(x).st; });
  sweep(name + " serialize", base, max_label, false, false, [](Index& x) {
    qv::Bytes b;
    return x.serialize(&b);
  });
  sweep(name + " deserialize", base, max_label, false, false, [&](Index&) {
    std::unique_ptr<Index> y;
    return qv::deserialize_index(base.data(), base.size(), &y);
  });
}

}  // namespace

int main() {
  std::setvbuf(stdout, nullptr, _IOLBF, 0);
  for (Metric m : {Metric::L2, Metric::Cosine, Metric::IP})
    sweep_kind(std::string("hnsw-") + qv::metric_name(m), make("hnsw", m, {{"m", 4}, {"efConstruction", 16}}));
  sweep_kind("flat", make("flat", Metric::L2, {}));
  const auto sample = vectors(300, 7, 1.0f);
  auto trained = [&] {
    auto ix = make("ivfpq", Metric::L2, {{"nlist", 4}, {"m", 3}, {"refine", 2}});
    CHECK(ix->train(sample.data(), 300, 2, nullptr).is_ok(), "ivfpq train");
    return ix;
  };
  sweep_kind("ivfpq", trained());
  auto untrained = make("ivfpq", Metric::L2, {{"nlist", 4}, {"m", 3}, {"refine", 2}});
  sweep("ivfpq train", bytes_of(*untrained), 0, true, false,
        [&](Index& x) { return x.train(sample.data(), 300, 2, nullptr); });
  return qvtest::finish("oom_test");
}
