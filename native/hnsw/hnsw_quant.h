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
// does not re-fit every time) and the stored codes are re-encoded. Everything is a function of
// the data added, in order, so replicas that add the same batches hold the same codes.
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

namespace qv {
namespace hnsw {

// The walk's code distance is kernels().l2_u8 (native/distance): sum (a_d - b_d)^2 over d bytes,
// exact for d <= 66,051 (255^2 * d < 2^32); dims are <= 65,536.
using L2U8Fn = uint32_t (*)(const uint8_t* a, const uint8_t* b, size_t d);

class ScalarQuantizer {
 public:
  bool trained() const { return trained_; }
  float step() const { return step_; }
  const std::vector<float>& lo() const { return lo_; }
  const std::vector<float>& hi() const { return hi_; }

  // Widens the range to cover n vectors; true if the range changed (stored codes must then be
  // re-encoded).
  bool fit(const float* v, size_t n, uint32_t dim);
  // Writes dim bytes; returns true if the code decodes back to v exactly.
  bool encode(const float* v, uint8_t* code) const;
  // Restores a fitted state (deserialize). False if the values are not a valid state.
  bool restore(std::vector<float> lo, std::vector<float> hi);

 private:
  void set_step();
  bool trained_ = false;
  float step_ = 1.0f, inv_step_ = 1.0f;
  std::vector<float> lo_, hi_;
};

}  // namespace hnsw
}  // namespace qv
