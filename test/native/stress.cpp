// Concurrency stress of the native indexes, built with -fsanitize=thread by scripts/sanitize.sh.
//
// Per index (HNSW l2 / cosine / ip, flat, IVF-PQ): an adder thread adds batches (each one drawn
// from a wider range than the last, so that the HNSW quantizer widens and re-encodes its codes
// while searches read them; every third batch also replaces labels of the previous one), a
// second writer removes labels and adds them back (so slots are freed and reused while searches
// hold ids), three searcher threads (plain, small filter, large filter) and an observer thread
// (size, memory_bytes, get_vectors, serialize) run at the same time. The indexes' own
// parallel_for threads run inside. ThreadSanitizer reports any data race; the driver itself
// checks that every result names a label that was added at some point.
#include <atomic>
#include <cmath>
#include <cstdio>
#include <string>
#include <thread>
#include <vector>

#include "common/limits.h"
#include "driver.h"

namespace {

using qv::Index;
using qv::Status;
using qvtest::Rng;

constexpr uint32_t kDim = 16;
constexpr uint32_t kBatch = 150;
constexpr uint32_t kBatches = 10;
constexpr uint32_t kLabels = kBatch * kBatches;

// Vectors of batch b: values in [-(1 + b/2), 1 + b/2] around an offset that moves with b, so that
// each batch falls partly outside the range fitted to the ones before.
std::vector<float> batch_vectors(Rng& rng, size_t n, uint32_t b) {
  std::vector<float> v(n * kDim);
  const float scale = 1.0f + 0.5f * static_cast<float>(b);
  const float shift = b % 2 == 0 ? 0.25f * static_cast<float>(b) : -0.25f * static_cast<float>(b);
  for (float& x : v) x = shift + scale * (2.0f * rng.uniform() - 1.0f);
  return v;
}

void stress(const char* name, Index* ix) {
  std::atomic<bool> done{false};
  std::atomic<uint32_t> added{0};  // labels [0, added) have been added at least once
  std::atomic<uint64_t> searches{0};

  std::thread adder([&] {
    Rng rng(1);
    for (uint32_t b = 0; b < kBatches; ++b) {
      std::vector<uint32_t> labels(kBatch);
      for (uint32_t i = 0; i < kBatch; ++i) labels[i] = b * kBatch + i;
      std::vector<float> v = batch_vectors(rng, kBatch, b);
      const Status st = ix->add(labels.data(), v.data(), kBatch, 2);
      CHECK(st.is_ok(), "%s add: %s", name, st.message().c_str());
      added.store((b + 1) * kBatch, std::memory_order_release);
      if (b > 0 && b % 3 == 0) {  // replace part of the previous batch
        std::vector<uint32_t> again(kBatch / 4);
        for (uint32_t i = 0; i < again.size(); ++i) again[i] = (b - 1) * kBatch + 2 * i;
        std::vector<float> w = batch_vectors(rng, again.size(), b + 1);
        const Status up = ix->add(again.data(), w.data(), again.size(), 2);
        CHECK(up.is_ok(), "%s upsert: %s", name, up.message().c_str());
      }
    }
    done.store(true, std::memory_order_release);
  });

  std::thread churn([&] {
    Rng rng(2);
    while (!done.load(std::memory_order_acquire)) {
      const uint32_t hi = added.load(std::memory_order_acquire);
      if (hi < kBatch) {
        std::this_thread::yield();
        continue;
      }
      std::vector<uint32_t> labels;
      for (uint32_t i = 0; i < 12; ++i) {
        const uint32_t l = rng.below(hi);
        bool dup = false;
        for (uint32_t x : labels) dup = dup || x == l;
        if (!dup) labels.push_back(l);
      }
      for (uint32_t l : labels) {
        const Status st = ix->remove(&l, 1);
        CHECK(st.is_ok() || st.code() == qv::Code::NotFound, "%s remove: %s", name, st.message().c_str());
      }
      std::vector<float> v = batch_vectors(rng, labels.size(), hi / kBatch);
      const Status st = ix->add(labels.data(), v.data(), labels.size(), 2);
      CHECK(st.is_ok(), "%s re-add: %s", name, st.message().c_str());
    }
  });

  auto searcher = [&](int kind) {
    Rng rng(10 + kind);
    std::vector<uint32_t> allow;
    if (kind == 1) {  // a handful of labels: the exact path where an index has one
      for (uint32_t l = 0; l < kLabels; l += 97) allow.push_back(l);
    } else if (kind == 2) {  // half of the labels: the filtered walk
      for (uint32_t l = 0; l < kLabels; l += 2) allow.push_back(l);
    }
    qv::Filter filter(allow.data(), allow.size());
    while (!done.load(std::memory_order_acquire)) {
      const uint32_t nq = 1 + rng.below(3), k = 10;
      std::vector<float> q = batch_vectors(rng, nq, rng.below(kBatches));
      std::vector<uint32_t> labels(nq * k);
      std::vector<float> dists(nq * k);
      qv::SearchParams p;
      p.k = k;
      p.ef = 32;
      p.nprobe = 4;
      p.threads = 1 + static_cast<int>(rng.below(2));
      if (kind != 0) p.filter = &filter;
      const Status st = ix->search(q.data(), nq, p, labels.data(), dists.data());
      CHECK(st.is_ok(), "%s search: %s", name, st.message().c_str());
      for (size_t i = 0; i < labels.size(); ++i) {
        if (labels[i] == qv::kLabelNone) continue;
        CHECK(labels[i] < kLabels, "%s search returned label %u", name, labels[i]);
        CHECK(kind == 0 || filter.allows(labels[i]), "%s filtered search returned label %u", name, labels[i]);
        CHECK(std::isfinite(dists[i]), "%s search returned a non-finite distance", name);
      }
      searches.fetch_add(1, std::memory_order_relaxed);
    }
  };
  std::thread s0(searcher, 0), s1(searcher, 1), s2(searcher, 2);

  std::thread observer([&] {
    Rng rng(20);
    std::vector<float> out(kDim);
    qv::Bytes bytes;
    for (uint32_t round = 0; !done.load(std::memory_order_acquire); ++round) {
      (void)ix->size();
      (void)ix->memory_bytes();
      const uint32_t hi = added.load(std::memory_order_acquire);
      if (hi > 0) {
        const uint32_t l = rng.below(hi);
        const Status st = ix->get_vectors(&l, 1, out.data());
        CHECK(st.is_ok() || st.code() == qv::Code::NotFound || st.code() == qv::Code::FailedPrecondition,
              "%s get_vectors: %s", name, st.message().c_str());
      }
      if (round % 16 == 0) CHECK(ix->serialize(&bytes).is_ok(), "%s serialize", name);
      std::this_thread::yield();
    }
  });

  adder.join();
  churn.join();
  s0.join();
  s1.join();
  s2.join();
  observer.join();
  std::printf("stress %-12s %6zu points, %6llu searches during the writes\n", name, ix->size(),
              static_cast<unsigned long long>(searches.load()));
}

}  // namespace

int main() {
  std::setvbuf(stdout, nullptr, _IOLBF, 0);
  for (qv::Metric m : {qv::Metric::L2, qv::Metric::Cosine, qv::Metric::IP}) {
    auto ix = qvtest::make("hnsw", kDim, m, {{"m", 8}, {"efConstruction", 32}});
    stress((std::string("hnsw-") + qv::metric_name(m)).c_str(), ix.get());
  }
  stress("flat-l2", qvtest::make("flat", kDim, qv::Metric::L2, {}).get());
  auto ivf = qvtest::make("ivfpq", kDim, qv::Metric::L2, {{"nlist", 8}, {"m", 4}, {"refine", 2}});
  Rng rng(3);
  const std::vector<float> sample = batch_vectors(rng, 512, 2);
  CHECK(ivf->train(sample.data(), 512, 2, nullptr).is_ok(), "ivfpq train");
  stress("ivfpq-l2", ivf.get());
  return qvtest::finish("stress");
}
