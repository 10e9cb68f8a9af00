// NativeIndex: the one JS class over qv::Index (flat, hnsw, ivfpq). The index lives in a
// shared_ptr so that a worker still running keeps it alive after the JS object is collected.
#pragma once
#include <napi.h>

#include <atomic>
#include <memory>

#include "common/format.h"
#include "common/index.h"
#include "napi/errors.h"

namespace qv {
namespace napi {

// The buffer a NativeIndex holds for its next serialize (reserved, or kept by releaseHeld(true));
// on the JS thread only. The bytes every slot holds are counted process-wide (total(): the
// quiver_snapshot_buffer_bytes metric), each buffer's capacity as it comes in.
class SpareSlot {
 public:
  SpareSlot() = default;
  SpareSlot(const SpareSlot&) = delete;
  SpareSlot& operator=(const SpareSlot&) = delete;
  ~SpareSlot() { reset(); }
  void set(std::unique_ptr<Bytes> b) {
    reset();
    counted_ = b == nullptr ? 0 : b->capacity();
    total_ += counted_;
    b_ = std::move(b);
  }
  std::unique_ptr<Bytes> take() {
    total_ -= counted_;
    counted_ = 0;
    return std::move(b_);
  }
  void reset() { take(); }
  size_t bytes() const { return counted_; }
  static size_t total() { return total_.load(std::memory_order_relaxed); }

 private:
  std::unique_ptr<Bytes> b_;
  size_t counted_ = 0;
  static inline std::atomic<size_t> total_{0};
};

class NativeIndex : public Napi::ObjectWrap<NativeIndex> {
 public:
  static Napi::Function Init(Napi::Env env);
  explicit NativeIndex(const Napi::CallbackInfo& info);
  std::shared_ptr<Index> index() const { return index_; }

  // Wraps an index built in C++ (deserialize) in a new JS object.
  static Napi::Object Wrap(Napi::Env env, std::shared_ptr<Index> index);
  // The buffer the next serialize writes into (reserveSerialize); on the JS thread only.
  void set_spare(std::unique_ptr<Bytes> spare) { spare_.set(std::move(spare)); }
  // The bytes of the last serializeHeld, read by readHeld until releaseHeld; on the JS thread only.
  void set_held(std::unique_ptr<Bytes> held) { held_ = std::move(held); }

 private:
  // Method M with a std::bad_alloc on the loop (copying a large input) thrown as RESOURCE_EXHAUSTED.
  template <Napi::Value (NativeIndex::*M)(const Napi::CallbackInfo&)>
  Napi::Value Guarded(const Napi::CallbackInfo& info) {
    return on_loop(info.Env(), [&] { return (this->*M)(info); });
  }
  Napi::Value Add(const Napi::CallbackInfo& info);
  Napi::Value Remove(const Napi::CallbackInfo& info);
  Napi::Value Search(const Napi::CallbackInfo& info);
  Napi::Value SearchSync(const Napi::CallbackInfo& info);
  Napi::Value Train(const Napi::CallbackInfo& info);
  Napi::Value Serialize(const Napi::CallbackInfo& info);
  Napi::Value ReserveSerialize(const Napi::CallbackInfo& info);
  Napi::Value SerializeHeld(const Napi::CallbackInfo& info);
  Napi::Value ReadHeld(const Napi::CallbackInfo& info);
  Napi::Value ReleaseHeld(const Napi::CallbackInfo& info);
  Napi::Value ReleaseSpare(const Napi::CallbackInfo& info);
  Napi::Value GetSpareBytes(const Napi::CallbackInfo& info);
  Napi::Value GetVectors(const Napi::CallbackInfo& info);
  static Napi::Value Deserialize(const Napi::CallbackInfo& info);
  Napi::Value GetSize(const Napi::CallbackInfo& info);
  Napi::Value GetDim(const Napi::CallbackInfo& info);
  Napi::Value GetMetric(const Napi::CallbackInfo& info);
  Napi::Value GetKind(const Napi::CallbackInfo& info);
  Napi::Value GetTrained(const Napi::CallbackInfo& info);
  Napi::Value GetMemoryBytes(const Napi::CallbackInfo& info);

  std::shared_ptr<Index> index_;
  SpareSlot spare_;
  std::unique_ptr<Bytes> held_;
};

// The index behind a NativeIndex JS object, or nullptr (with a JS error thrown) if it is not one.
std::shared_ptr<Index> unwrap_index(Napi::Env env, Napi::Value v);

}  // namespace napi
}  // namespace qv
