#include "hnsw/hnsw_quant.h"

#include <algorithm>
#include <cmath>

#include "distance/distance.h"

namespace qv {
namespace hnsw {

void ScalarQuantizer::set_step() {
  float width = 0.0f;
  for (size_t d = 0; d < lo_.size(); ++d) width = std::max(width, hi_[d] - lo_[d]);
  step_ = width > 0.0f ? width / 255.0f : 1.0f;
  inv_step_ = 1.0f / step_;
}

ScalarQuantizer::Refit ScalarQuantizer::fit(const float* v, size_t n, uint32_t dim, ScalarQuantizer* next) const {
  Refit out;
  if (n == 0) return out;
  std::vector<float> mn(v, v + dim), mx(v, v + dim);
  for (size_t i = 1; i < n; ++i) {
    const float* x = v + i * dim;
    for (uint32_t d = 0; d < dim; ++d) {
      mn[d] = std::min(mn[d], x[d]);
      mx[d] = std::max(mx[d], x[d]);
    }
  }
  if (!trained_) {
    next->lo_ = std::move(mn);
    next->hi_ = std::move(mx);
    next->trained_ = true;
    next->set_step();
    out.widened = true;
    out.all = true;
    return out;
  }
  bool grew = false;
  for (uint32_t d = 0; d < dim; ++d) grew = grew || mn[d] < lo_[d] || mx[d] > hi_[d];
  if (!grew) return out;
  float width = 0.0f;
  for (uint32_t d = 0; d < dim; ++d) width = std::max(width, std::max(hi_[d], mx[d]) - std::min(lo_[d], mn[d]));
  const float margin = width / 8.0f;
  *next = *this;
  for (uint32_t d = 0; d < dim; ++d) {
    if (mn[d] < lo_[d]) {
      next->lo_[d] = mn[d] - margin;
      out.dims.push_back(d);
    }
    if (mx[d] > hi_[d]) next->hi_[d] = mx[d] + margin;
  }
  next->set_step();
  out.widened = true;
  if (next->step_ != step_) {
    out.all = true;
    out.dims.clear();
  }
  return out;
}

bool ScalarQuantizer::encode(const float* v, uint8_t* code) const {
  bool exact = true;
  const size_t dim = lo_.size();
  for (size_t d = 0; d < dim; ++d) exact = encode_one(v[d], d, code + d) && exact;
  return exact;
}

bool ScalarQuantizer::encode_dims(const float* v, uint8_t* code, const std::vector<uint32_t>& dims) const {
  bool exact = true;
  for (uint32_t d : dims) exact = encode_one(v[d], d, code + d) && exact;
  return exact;
}

bool ScalarQuantizer::restore(std::vector<float> lo, std::vector<float> hi) {
  if (lo.size() != hi.size() || lo.empty()) return false;
  for (size_t d = 0; d < lo.size(); ++d)
    if (!std::isfinite(lo[d]) || !std::isfinite(hi[d]) || hi[d] < lo[d]) return false;
  lo_ = std::move(lo);
  hi_ = std::move(hi);
  trained_ = true;
  set_step();
  return true;
}

}  // namespace hnsw
}  // namespace qv
