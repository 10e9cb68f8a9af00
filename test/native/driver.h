// What the native test drivers share: checks, a seeded generator, index construction, serialize.
#pragma once
#include <atomic>
#include <cstdint>
#include <cstdio>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "common/index.h"

namespace qvtest {

inline std::atomic<int>& failures() {
  static std::atomic<int> n{0};
  return n;
}

// Reports a failed condition with a printf-style message and counts it; the driver goes on.
#define CHECK(cond, ...)                                                   \
  do {                                                                     \
    if (!(cond)) {                                                         \
      std::fprintf(stderr, "%s:%d: %s: ", __FILE__, __LINE__, #cond);      \
      std::fprintf(stderr, __VA_ARGS__);                                   \
      std::fprintf(stderr, "\n");                                          \
      ++::qvtest::failures();                                              \
    }                                                                      \
  } while (0)

// The exit status of a driver: 1 if any check failed.
inline int finish(const char* driver) {
  if (failures() == 0) return 0;
  std::fprintf(stderr, "%s: %d failures\n", driver, failures().load());
  return 1;
}

struct Rng {
  uint64_t s;
  explicit Rng(uint64_t seed) : s(seed * 0x9E3779B97F4A7C15ull + 1) {}
  uint32_t next() {
    s ^= s << 13;
    s ^= s >> 7;
    s ^= s << 17;
    return static_cast<uint32_t>(s >> 11);
  }
  float uniform() { return static_cast<float>(next() & 0xFFFFFF) / 16777216.0f; }  // [0, 1)
  uint32_t below(uint32_t n) { return next() % n; }
};

// n vectors of dim values, uniform in [-scale, scale).
inline std::vector<float> vectors(size_t n, uint32_t dim, uint64_t seed, float scale) {
  Rng r(seed);
  std::vector<float> v(n * dim);
  for (float& x : v) x = scale * (2.0f * r.uniform() - 1.0f);
  return v;
}

inline std::vector<uint32_t> labels_from(uint32_t start, size_t n) {
  std::vector<uint32_t> l(n);
  for (size_t i = 0; i < n; ++i) l[i] = start + static_cast<uint32_t>(i);
  return l;
}

inline std::unique_ptr<qv::Index> make(const std::string& kind, uint32_t dim, qv::Metric metric,
                                       std::map<std::string, double> num) {
  qv::IndexOptions o;
  o.dim = dim;
  o.metric = metric;
  o.num = std::move(num);
  std::unique_ptr<qv::Index> ix;
  const qv::Status st = qv::create_index(kind, o, &ix);
  CHECK(st.is_ok(), "create %s: %s", kind.c_str(), st.message().c_str());
  return ix;
}

inline qv::Bytes bytes_of(const qv::Index& ix) {
  qv::Bytes b;
  const qv::Status st = ix.serialize(&b);
  CHECK(st.is_ok(), "serialize: %s", st.message().c_str());
  return b;
}

}  // namespace qvtest
