#include <cmath>

#include "distance/distance.h"

namespace qv {

// The norm is summed in double, in index order, in baseline code (not through the dispatched
// kernels, whose f32 sums differ between AVX2, AVX-512 and serial in the last bits). So a
// normalized vector, and everything built from it (HNSW codes and links for cosine), is the same
// on every host whatever its SIMD level: replicas on mixed hardware build identical indexes.
float inv_norm_f32(const float* v, size_t d) {
  double n2 = 0.0;
  for (size_t i = 0; i < d; ++i) n2 = std::fma(static_cast<double>(v[i]), static_cast<double>(v[i]), n2);
  return n2 > 0.0 ? static_cast<float>(1.0 / std::sqrt(n2)) : 0.0f;
}

void normalize_f32(const float* in, float* out, size_t d) {
  const float inv = inv_norm_f32(in, d);
  for (size_t i = 0; i < d; ++i) out[i] = in[i] * inv;
}

}  // namespace qv
