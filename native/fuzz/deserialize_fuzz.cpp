// libFuzzer target: the index file parsers (common/format.cpp's envelope, then each kind's
// deserialize) under AddressSanitizer and UBSan. Built and run by scripts/fuzz-native.sh.
//
// The input is an index file. The envelope's body length and CRC are made to match the input
// before it is parsed, so every input reaches a body parser (a checksum mismatch is refused before
// anything is read, and test/fuzz/native.test.ts checks that); LLVMFuzzerCustomMutator fixes them
// the same way, so that the corpus holds files the parsers read. Every file must be refused with
// a status, or give an index that searches and serializes to a file that loads to the same bytes.
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <vector>

#include "common/format.h"
#include "common/index.h"

namespace {

// The input with the envelope's body length and CRC made to match its size and bytes.
std::vector<uint8_t> fixed(const uint8_t* data, size_t size) {
  std::vector<uint8_t> b(data, data + size);
  if (b.size() < qv::kEnvelopeHeader + 4) return b;
  const uint64_t body = b.size() - qv::kEnvelopeHeader - 4;
  std::memcpy(b.data() + 24, &body, 8);
  const uint32_t crc = qv::crc32c(b.data(), b.size() - 4);
  std::memcpy(b.data() + b.size() - 4, &crc, 4);
  return b;
}

[[noreturn]] void fail(const char* what, const qv::Status& st) {
  std::fprintf(stderr, "deserialize_fuzz: %s: %s\n", what, st.message().c_str());
  std::abort();
}

}  // namespace

extern "C" size_t LLVMFuzzerMutate(uint8_t* data, size_t size, size_t max_size);

extern "C" size_t LLVMFuzzerCustomMutator(uint8_t* data, size_t size, size_t max_size, unsigned int seed) {
  (void)seed;
  size = LLVMFuzzerMutate(data, size, max_size);
  const std::vector<uint8_t> b = fixed(data, size);
  std::memcpy(data, b.data(), b.size());
  return b.size();
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::vector<uint8_t> b = fixed(data, size);
  std::unique_ptr<qv::Index> ix;
  if (!qv::deserialize_index(b.data(), b.size(), &ix).is_ok()) return 0;
  // Whatever loaded must search (k slots filled or kLabelNone; an untrained index refuses) and write itself back.
  const uint32_t k = 4;
  std::vector<float> q(ix->dim(), 0.25f);
  std::vector<uint32_t> labels(k);
  std::vector<float> dists(k);
  qv::SearchParams p;
  p.k = k;
  p.threads = 1;
  qv::Status st = ix->search(q.data(), 1, p, labels.data(), dists.data());
  // An untrained IVF-PQ index (a valid, empty file) refuses searches until trained.
  const bool untrained = !ix->trained() && st.code() == qv::Code::FailedPrecondition;
  if (!st.is_ok() && st.code() != qv::Code::ResourceExhausted && !untrained) fail("search of a loaded index", st);
  qv::Bytes once;
  st = ix->serialize(&once);
  if (!st.is_ok()) fail("serialize of a loaded index", st);
  std::unique_ptr<qv::Index> back;
  st = qv::deserialize_index(once.data(), once.size(), &back);
  if (!st.is_ok()) fail("a loaded index's own file does not load", st);
  qv::Bytes twice;
  st = back->serialize(&twice);
  if (!st.is_ok() || twice.size() != once.size() || std::memcmp(twice.data(), once.data(), once.size()) != 0) {
    fail("a loaded index's file loads to other bytes", st);
  }
  return 0;
}
