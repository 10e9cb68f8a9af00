#include <cmath>

#include "distance/distance.h"

namespace qv {

void normalize_f32(const float* in, float* out, size_t d) {
  const float n2 = kernels().ip_f32(in, in, d);
  const float inv = n2 > 0.0f ? 1.0f / std::sqrt(n2) : 0.0f;
  for (size_t i = 0; i < d; ++i) out[i] = in[i] * inv;
}

}  // namespace qv
