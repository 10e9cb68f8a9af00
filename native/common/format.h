// Binary formats of the native core: little-endian writer and bounds-checked reader, CRC-32C,
// and the envelope every serialized index shares.
//
// Envelope (all integers little-endian):
//   offset  size  field
//   0       8     magic "QUIVERIX"
//   8       4     format version (kFormatVersion; 1 is read too)
//   12      4     index kind (IndexKind: 1 flat, 2 hnsw, 3 ivfpq)
//   16      4     dim
//   20      4     metric (0 l2, 1 ip, 2 cosine)
//   24      8     body length B
//   32      B     body (kind-specific, specified beside each index's serialize())
//   32+B    4     CRC-32C (Castagnoli) of bytes [0, 32+B)
// A reader refuses a wrong magic, an unknown version or kind, a length that does not match the
// buffer, or a checksum mismatch, with Code::DataLoss, before it builds anything.
// Versions: 2 = flat and HNSW keep cosine vectors as given (1: normalized). The bodies are laid
// out alike, so a version 1 file loads (its cosine indexes then hold, and return, normalized
// vectors); a reader of version 1 only refuses a version 2 file instead of taking the vectors
// it holds for normalized ones.
#pragma once
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "common/alloc.h"
#include "common/status.h"

namespace qv {

uint32_t crc32c(const void* data, size_t n, uint32_t crc = 0);

enum class Metric : uint32_t { L2 = 0, IP = 1, Cosine = 2 };
enum class IndexKind : uint32_t { Flat = 1, Hnsw = 2, IvfPq = 3 };

constexpr uint32_t kFormatVersion = 2;
constexpr size_t kEnvelopeHeader = 32;

// The bytes of a serialized index. A serializer reserves their exact size first, so they are written
// once, into huge pages when large (LargeAllocator): a serialization is then a copy at memory speed
// (20,000 x 128 HNSW on the 2-core VMs measured: 4-9 ms, against 200-700 ms growing a std::vector
// in 4 KB pages), short enough for the index's writers, and a shard's applies, to wait for.
using Bytes = std::vector<uint8_t, LargeAllocator<uint8_t>>;

class Writer {
 public:
  explicit Writer(Bytes* out) : out_(out) {}
  void bytes(const void* p, size_t n) {
    const uint8_t* b = static_cast<const uint8_t*>(p);
    out_->insert(out_->end(), b, b + n);
  }
  void u8(uint8_t v) { out_->push_back(v); }
  void u32(uint32_t v) { bytes(&v, 4); }  // hosts are little-endian (x86-64, arm64)
  void u64(uint64_t v) { bytes(&v, 8); }
  void f32(float v) { bytes(&v, 4); }
  template <typename T>
  void array(const T* p, size_t n) { bytes(p, n * sizeof(T)); }
  size_t size() const { return out_->size(); }
  Bytes& buffer() { return *out_; }

 private:
  Bytes* out_;
};

class Reader {
 public:
  Reader(const uint8_t* p, size_t n) : p_(p), n_(n) {}
  bool bytes(void* dst, size_t n) {
    if (n > n_ - pos_) return fail();
    if (n != 0) std::memcpy(dst, p_ + pos_, n);  // an empty vector has no data(): memcpy(nullptr, .., 0) is UB
    pos_ += n;
    return true;
  }
  bool u8(uint8_t* v) { return bytes(v, 1); }
  bool u32(uint32_t* v) { return bytes(v, 4); }
  bool u64(uint64_t* v) { return bytes(v, 8); }
  bool f32(float* v) { return bytes(v, 4); }
  template <typename T>
  bool array(std::vector<T>* v, uint64_t n) {
    if (n > (n_ - pos_) / sizeof(T)) return fail();
    v->resize(n);
    return bytes(v->data(), n * sizeof(T));
  }
  size_t remaining() const { return n_ - pos_; }
  bool ok() const { return ok_; }
  Status status(const char* what) const {
    return ok_ ? Status::ok() : data_loss(std::string("index file is truncated or corrupt: ") + what);
  }

 private:
  bool fail() {
    ok_ = false;
    pos_ = n_;
    return false;
  }
  const uint8_t* p_;
  size_t n_;
  size_t pos_ = 0;
  bool ok_ = true;
};

struct EnvelopeInfo {
  IndexKind kind;
  uint32_t dim;
  Metric metric;
  const uint8_t* body;
  size_t body_len;
};

// Clears out, reserves the whole envelope for a body of body_bytes, and writes the header with a
// placeholder length; finish_envelope() fills it and appends the CRC.
void begin_envelope(Bytes* out, IndexKind kind, uint32_t dim, Metric metric, size_t body_bytes);
void finish_envelope(Bytes* out);
Status open_envelope(const uint8_t* p, size_t n, EnvelopeInfo* info);

}  // namespace qv
