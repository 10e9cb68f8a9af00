#include <cmath>
#include <limits>

#include "distance/distance.h"

namespace qv {

// The norm is summed in double, in index order, in baseline code (not through the dispatched
// kernels, whose f32 sums differ between AVX2, AVX-512 and serial in the last bits). So a
// normalized vector, and everything built from it (HNSW codes and links for cosine), is the same
// on every host whatever its SIMD level: replicas on mixed hardware build identical indexes.
//
// A vector whose 1/|x| is not a float (|x| under 1/FLT_MAX, about 2.9e-39: all zeros, or nothing
// but the smallest denormals) has no direction float32 can carry: its inverse norm is 0, so it
// normalizes to the zero vector (cosine distance 1 from everything in flat and HNSW), never to an
// infinite scale (which made distances infinite or NaN, and crashed IVF-PQ).
float inv_norm_f32(const float* v, size_t d) {
  double n2 = 0.0;
  for (size_t i = 0; i < d; ++i) n2 = std::fma(static_cast<double>(v[i]), static_cast<double>(v[i]), n2);
  const double inv = n2 > 0.0 ? 1.0 / std::sqrt(n2) : 0.0;
  return inv <= static_cast<double>(std::numeric_limits<float>::max()) ? static_cast<float>(inv) : 0.0f;
}

void normalize_f32(const float* in, float* out, size_t d) {
  const float inv = inv_norm_f32(in, d);
  for (size_t i = 0; i < d; ++i) out[i] = in[i] * inv;
}

}  // namespace qv
