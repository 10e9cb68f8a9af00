// 8-bit scalar quantizer for the HNSW graph walk.
//
// Codes: c_d = clamp(round((x_d - lo_d) / s), 0, 255) with a per-dimension offset lo_d and ONE
// global step s (= max_d (hi_d - lo_d) / 255). One step for every dimension keeps the code
// distance a plain u8 L2:
//   sum_d (x_d - y_d)^2  ~=  sum_d (lo_d + s a_d - lo_d - s b_d)^2  =  s^2 * sum_d (a_d - b_d)^2
// so the walk ranks by the integer sum_d (a_d - b_d)^2 and never touches the f32 vectors.
// When every stored value and the query decode exactly (x_d == lo_d + s c_d; for example 0..255
// pixels, where lo_d is the column minimum and s = 1) the ranking is exact.
//
// The range is fitted to the data: the first batch sets it; a later batch that falls outside
// it widens it (with a margin of 1/8 of the widest dimension on each side so that slow drift
// does not re-fit every time). A code depends only on lo_d and the step, so only what changed
// is re-encoded: every stored code when the step changed, the codes of the dimensions whose lo_d
// moved otherwise, nothing when only some hi_d grew under the widest range (the common case:
// a rare large value in a narrow dimension). Everything is a function of the data added, in
// order, so replicas that add the same batches hold the same codes.
//
// A quantizer is read by searches (each encodes its query) while the index's writer may fit a wider
// one: HnswIndex installs the new one and re-encodes the codes with its search gate closed
// (common/read_gate.h), so a search sees the old quantizer with the old codes or the new one with the new.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <vector>

namespace qv {
namespace hnsw {

// The walk's code distance is kernels().l2_u8 (native/distance): sum (a_d - b_d)^2 over d bytes,
// exact for d <= 66,051 (255^2 * d < 2^32); dims are <= 65,536.
using L2U8Fn = uint32_t (*)(const uint8_t* a, const uint8_t* b, size_t d);
// kernels().l2_u8_many: the same distance of one query against n rows.
using L2U8ManyFn = void (*)(const uint8_t* q, const uint8_t* const* rows, size_t n, size_t d, uint32_t* out);

class ScalarQuantizer {
 public:
  bool trained() const { return trained_; }
  float step() const { return step_; }
  const std::vector<float>& lo() const { return lo_; }
  const std::vector<float>& hi() const { return hi_; }

  // What a fit changed for the stored codes.
  struct Refit {
    bool widened = false;         // the range grew: *next holds the new quantizer
    bool all = false;             // the step changed (or first fit): every code
    std::vector<uint32_t> dims;   // otherwise: the dimensions whose lo_d moved
  };
  // The range widened to cover n more vectors, into *next (only when it grows), and which stored
  // codes that changes. Allocates what it needs but changes nothing here: the caller installs
  // *next (a move, which cannot fail) where no search can see it half-done.
  Refit fit(const float* v, size_t n, uint32_t dim, ScalarQuantizer* next) const;
  // Writes dim bytes; returns true if the code decodes back to v exactly.
  bool encode(const float* v, uint8_t* code) const;
  // Re-encodes only code[d] for d in dims; true if those decode back exactly.
  bool encode_dims(const float* v, uint8_t* code, const std::vector<uint32_t>& dims) const;
  // Restores a fitted state (deserialize). False if the values are not a valid state.
  bool restore(std::vector<float> lo, std::vector<float> hi);

 private:
  void set_step();
  bool encode_one(float x, size_t d, uint8_t* c) const {
    float t = std::nearbyint((x - lo_[d]) * inv_step_);
    t = std::min(255.0f, std::max(0.0f, t));
    *c = static_cast<uint8_t>(t);
    return lo_[d] + t * step_ == x;
  }
  bool trained_ = false;
  float step_ = 1.0f, inv_step_ = 1.0f;
  std::vector<float> lo_, hi_;
};

}  // namespace hnsw
}  // namespace qv
