// Writes the seed corpus of deserialize_fuzz.cpp: small indexes of every kind and metric, with
// removed labels, serialized (scripts/fuzz-native.sh runs it into .cache/fuzz/corpus/).
#include <cstdio>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "common/format.h"
#include "common/index.h"

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s CORPUS_DIR\n", argv[0]);
    return 2;
  }
  const uint32_t dim = 5;
  const size_t n = 40;
  std::vector<float> v(n * dim);
  uint32_t s = 7;
  for (float& x : v) x = static_cast<float>((s = s * 1664525u + 1013904223u) >> 8) / 16777216.0f - 0.5f;
  std::vector<uint32_t> labels(n);
  for (size_t i = 0; i < n; ++i) labels[i] = static_cast<uint32_t>(3 * i);
  const uint32_t gone[] = {3, 9};
  const std::map<std::string, std::map<std::string, double>> kinds = {
      {"flat", {}}, {"hnsw", {{"m", 4}, {"efConstruction", 16}, {"seed", 1}}}, {"ivfpq", {{"nlist", 2}, {"m", 1}, {"refine", 2}}}};
  int written = 0;
  for (const auto& [kind, num] : kinds) {
    for (qv::Metric metric : {qv::Metric::L2, qv::Metric::IP, qv::Metric::Cosine}) {
      qv::IndexOptions o;
      o.dim = dim;
      o.metric = metric;
      o.num = num;
      std::unique_ptr<qv::Index> ix;
      qv::Status st = qv::create_index(kind, o, &ix);
      if (st.is_ok() && !ix->trained()) st = ix->train(v.data(), n, 1, nullptr);
      if (st.is_ok()) st = ix->add(labels.data(), v.data(), n, 1);
      if (st.is_ok()) st = ix->remove(gone, 2);
      qv::Bytes b;
      if (st.is_ok()) st = ix->serialize(&b);
      if (!st.is_ok()) {
        std::fprintf(stderr, "seeds: %s/%s: %s\n", kind.c_str(), qv::metric_name(metric), st.message().c_str());
        return 1;
      }
      const std::string file = std::string(argv[1]) + "/" + kind + "-" + qv::metric_name(metric) + ".qvi";
      FILE* f = std::fopen(file.c_str(), "wb");
      if (!f || std::fwrite(b.data(), 1, b.size(), f) != b.size() || std::fclose(f) != 0) {
        std::perror(file.c_str());
        return 1;
      }
      ++written;
    }
  }
  {
    // An IVF-PQ index saved before training: a valid file whose index refuses searches.
    qv::IndexOptions o;
    o.dim = dim;
    o.metric = qv::Metric::L2;
    o.num = kinds.at("ivfpq");
    std::unique_ptr<qv::Index> ix;
    qv::Bytes b;
    qv::Status st = qv::create_index("ivfpq", o, &ix);
    if (st.is_ok()) st = ix->serialize(&b);
    const std::string file = std::string(argv[1]) + "/ivfpq-untrained.qvi";
    FILE* f = st.is_ok() ? std::fopen(file.c_str(), "wb") : nullptr;
    if (!f || std::fwrite(b.data(), 1, b.size(), f) != b.size() || std::fclose(f) != 0) {
      std::fprintf(stderr, "seeds: ivfpq untrained: %s\n", st.is_ok() ? file.c_str() : st.message().c_str());
      return 1;
    }
    ++written;
  }
  std::printf("seeds: %d files in %s\n", written, argv[1]);
  return 0;
}
