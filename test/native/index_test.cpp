// Native tests of the indexes under AddressSanitizer + UBSan (scripts/sanitize.sh):
//  * every kind and metric: add (two batches, the second outside the first's range), search against
//    brute force, remove, upsert, get_vectors, serialize -> deserialize -> serialize (same bytes,
//    same answers);
//  * every deserializer fed broken bytes: each truncation of a file; each byte of the envelope
//    changed; each byte of each kind's body set to 0x00, 0xFF and its value + 1 and to a truncated
//    body, with the envelope's length and checksum made to match (so the body parser, not the
//    checksum, meets the damage). Each must be refused with DATA_LOSS, or give an index that
//    searches, adds, removes and serializes.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "common/format.h"
#include "distance/distance.h"
#include "driver.h"

namespace {

using qv::Index, qv::Metric, qv::Status;
using qvtest::bytes_of, qvtest::labels_from, qvtest::make, qvtest::vectors;

struct Answer {
  std::vector<uint32_t> labels;
  std::vector<float> dists;
  bool operator==(const Answer& o) const { return labels == o.labels && dists == o.dists; }
};

Answer search(const Index& ix, const std::vector<float>& q, uint32_t k) {
  const size_t nq = q.size() / ix.dim();
  Answer a{std::vector<uint32_t>(nq * k), std::vector<float>(nq * k)};
  qv::SearchParams p;
  p.k = k;
  p.ef = 64;
  p.nprobe = 8;
  p.threads = 2;
  const Status st = ix.search(q.data(), nq, p, a.labels.data(), a.dists.data());
  CHECK(st.is_ok(), "search: %s", st.message().c_str());
  return a;
}

// The distance the index reports between a query and a stored vector.
float distance(Metric m, const float* q, const float* x, uint32_t dim) {
  if (m == Metric::L2) return qv::kernels().l2_f32(q, x, dim);
  if (m == Metric::IP) return 1.0f - qv::kernels().ip_f32(q, x, dim);
  std::vector<float> a(q, q + dim), b(x, x + dim);
  qv::normalize_f32(a.data(), a.data(), dim);
  qv::normalize_f32(b.data(), b.data(), dim);
  return 1.0f - qv::kernels().ip_f32(a.data(), b.data(), dim);
}

// Share of the true k nearest (by the index's own distance, over `live`) that the search returned.
double recall(const Answer& a, const std::vector<float>& q, uint32_t k, Metric m, uint32_t dim,
              const std::map<uint32_t, std::vector<float>>& live) {
  const size_t nq = q.size() / dim;
  size_t hit = 0;
  for (size_t i = 0; i < nq; ++i) {
    std::vector<std::pair<float, uint32_t>> all;
    for (const auto& kv : live) all.emplace_back(distance(m, &q[i * dim], kv.second.data(), dim), kv.first);
    std::sort(all.begin(), all.end());
    for (uint32_t j = 0; j < k && j < all.size(); ++j)
      for (uint32_t t = 0; t < k; ++t) hit += a.labels[i * k + t] == all[j].second;
  }
  return static_cast<double>(hit) / static_cast<double>(nq * k);
}

void round_trip(const std::string& kind, Metric metric, std::map<std::string, double> num, double min_recall) {
  const uint32_t dim = 13;
  const std::string name = kind + "-" + qv::metric_name(metric);
  auto ix = make(kind, dim, metric, num);
  if (kind == "ivfpq") {
    auto sample = vectors(600, dim, 1, 1.0f);
    CHECK(ix->train(sample.data(), 600, 2, nullptr).is_ok(), "%s train", name.c_str());
  }
  std::map<uint32_t, std::vector<float>> live;
  auto add = [&](const std::vector<uint32_t>& l, const std::vector<float>& v) {
    const Status st = ix->add(l.data(), v.data(), l.size(), 2);
    CHECK(st.is_ok(), "%s add: %s", name.c_str(), st.message().c_str());
    for (size_t i = 0; i < l.size(); ++i) live[l[i]] = std::vector<float>(&v[i * dim], &v[(i + 1) * dim]);
  };
  add(labels_from(0, 300), vectors(300, dim, 2, 1.0f));
  add(labels_from(300, 200), vectors(200, dim, 3, 3.0f));  // outside the first batch's range
  std::vector<uint32_t> gone = labels_from(100, 40);
  CHECK(ix->remove(gone.data(), gone.size()).is_ok(), "%s remove", name.c_str());
  for (uint32_t l : gone) live.erase(l);
  add(labels_from(20, 30), vectors(30, dim, 4, 2.0f));  // upsert
  CHECK(ix->size() == live.size(), "%s size %zu, expected %zu", name.c_str(), ix->size(), live.size());
  CHECK(ix->remove(gone.data(), 1).code() == qv::Code::NotFound, "%s remove of an absent label", name.c_str());

  const auto q = vectors(20, dim, 5, 2.0f);
  const Answer a = search(*ix, q, 10);
  const double r = recall(a, q, 10, metric, dim, live);
  CHECK(r >= min_recall, "%s recall@10 %.3f < %.3f", name.c_str(), r, min_recall);

  std::vector<uint32_t> some = labels_from(20, 10);
  std::vector<float> got(some.size() * dim);
  const Status gv = ix->get_vectors(some.data(), some.size(), got.data());
  if (gv.is_ok() && metric != Metric::Cosine) {
    for (size_t i = 0; i < some.size(); ++i)
      CHECK(std::memcmp(&got[i * dim], live[some[i]].data(), dim * sizeof(float)) == 0, "%s get_vectors", name.c_str());
  }

  const auto b = bytes_of(*ix);
  std::unique_ptr<Index> back;
  const Status st = qv::deserialize_index(b.data(), b.size(), &back);
  CHECK(st.is_ok(), "%s deserialize: %s", name.c_str(), st.message().c_str());
  if (!back) return;
  CHECK(bytes_of(*back) == b, "%s serialize after deserialize differs", name.c_str());
  CHECK(search(*back, q, 10) == a, "%s answers differ after a round trip", name.c_str());
  std::printf("index_test %-14s recall@10 %.3f, %zu bytes, round trip ok\n", name.c_str(), r, b.size());
}

// Recomputes the envelope's body length and checksum after the body was changed.
void reseal(qv::Bytes* f) {
  const uint64_t body = f->size() - qv::kEnvelopeHeader - 4;
  std::memcpy(f->data() + 24, &body, 8);
  const uint32_t crc = qv::crc32c(f->data(), f->size() - 4);
  std::memcpy(f->data() + f->size() - 4, &crc, 4);
}

// A file that deserializes must give a usable index.
void exercise(Index& ix) {
  const uint32_t dim = ix.dim();
  const auto q = vectors(3, dim, 9, 1.0f);
  std::vector<uint32_t> l(3 * 5);
  std::vector<float> d(3 * 5);
  qv::SearchParams p;
  p.k = 5;
  p.threads = 1;
  (void)ix.search(q.data(), 3, p, l.data(), d.data());
  for (float x : d) CHECK(!std::isnan(x), "a deserialized index answers a NaN distance");
  std::vector<float> v(dim);
  for (uint32_t label = 0; label < 64; ++label)
    if (ix.get_vectors(&label, 1, v.data()).is_ok())
      for (float x : v) CHECK(std::isfinite(x), "a deserialized index holds a non-finite value (label %u)", label);
  if (!ix.trained()) return;
  const auto w = vectors(4, dim, 10, 1.0f);
  const auto nl = labels_from(1u << 30, 4);
  CHECK(ix.add(nl.data(), w.data(), 4, 1).is_ok(), "add to a deserialized index");
  CHECK(ix.remove(nl.data(), 2).is_ok(), "remove from a deserialized index");
  qv::Bytes again;
  CHECK(ix.serialize(&again).is_ok(), "serialize a deserialized index");
}

// Deserializes f; returns whether it was accepted. A refusal must be DATA_LOSS.
bool feed(const qv::Bytes& f, size_t len, const char* what, size_t at) {
  std::unique_ptr<Index> ix;
  const Status st = qv::deserialize_index(f.data(), len, &ix);
  if (!st.is_ok()) {
    CHECK(st.code() == qv::Code::DataLoss, "%s at %zu: %s is %s", what, at, st.message().c_str(), qv::code_name(st.code()));
    return false;
  }
  exercise(*ix);
  return true;
}

void corrupt(const std::string& name, const qv::Bytes& good) {
  size_t accepted = 0, tried = 0;
  for (size_t len = 0; len < good.size(); ++len, ++tried) CHECK(!feed(good, len, "truncated file", len), "%s", name.c_str());
  for (size_t at = 0; at < qv::kEnvelopeHeader; ++at) {
    qv::Bytes f = good;
    f[at] ^= 0x01;
    ++tried;
    CHECK(!feed(f, f.size(), "changed envelope", at), "%s: a changed envelope byte was accepted", name.c_str());
  }
  const size_t body_end = good.size() - 4;
  for (size_t at = qv::kEnvelopeHeader; at < body_end; ++at) {
    for (int variant = 0; variant < 3; ++variant) {
      qv::Bytes f = good;
      const uint8_t was = f[at];
      f[at] = variant == 0 ? 0x00 : variant == 1 ? 0xFF : static_cast<uint8_t>(was + 1);
      if (f[at] == was) continue;
      reseal(&f);
      ++tried;
      accepted += feed(f, f.size(), "changed body byte", at);
    }
    qv::Bytes cut(good.begin(), good.begin() + at);
    cut.resize(at + 4);
    reseal(&cut);
    ++tried;
    CHECK(!feed(cut, cut.size(), "truncated body", at), "%s: a body cut at %zu was accepted", name.c_str(), at);
  }
  std::printf("index_test %-14s %zu broken files, %zu accepted as valid indexes\n", name.c_str(), tried, accepted);
}

}  // namespace

int main() {
  std::setvbuf(stdout, nullptr, _IOLBF, 0);
  const Metric metrics[] = {Metric::L2, Metric::IP, Metric::Cosine};
  for (Metric m : metrics) {
    round_trip("flat", m, {}, 0.999);
    round_trip("hnsw", m, {{"m", 8}, {"efConstruction", 64}}, 0.95);
    round_trip("ivfpq", m, {{"nlist", 8}, {"m", 13}, {"refine", 8}}, 0.8);
  }

  // Small files, so that every byte can be tried.
  const uint32_t dim = 3;
  const auto v = vectors(24, dim, 11, 1.0f);
  const auto l = labels_from(5, 24);
  {
    auto ix = make("flat", dim, Metric::L2, {});
    CHECK(ix->add(l.data(), v.data(), 24, 1).is_ok(), "flat add");
    corrupt("flat", bytes_of(*ix));
  }
  for (Metric m : {Metric::L2, Metric::IP}) {  // with and without the quantizer
    auto ix = make("hnsw", dim, m, {{"m", 2}, {"efConstruction", 8}});
    CHECK(ix->add(l.data(), v.data(), 24, 1).is_ok(), "hnsw add");
    std::vector<uint32_t> gone = {7, 8};
    CHECK(ix->remove(gone.data(), 2).is_ok(), "hnsw remove");  // free slots in the file
    corrupt(std::string("hnsw-") + qv::metric_name(m), bytes_of(*ix));
  }
  for (double refine : {0.0, 2.0}) {
    auto ix = make("ivfpq", dim, Metric::L2, {{"nlist", 2}, {"m", 1}, {"refine", refine}});
    const auto sample = vectors(300, dim, 12, 1.0f);
    CHECK(ix->train(sample.data(), 300, 1, nullptr).is_ok(), "ivfpq train");
    CHECK(ix->add(l.data(), v.data(), 24, 1).is_ok(), "ivfpq add");
    corrupt(refine > 0 ? "ivfpq-refine" : "ivfpq", bytes_of(*ix));
  }
  auto untrained = make("ivfpq", dim, Metric::L2, {{"nlist", 2}, {"m", 1}});
  corrupt("ivfpq-untrained", bytes_of(*untrained));
  return qvtest::finish("index_test");
}
