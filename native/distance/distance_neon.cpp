// NEON kernels (arm64). NEON is part of the arm64 baseline, so no target attribute is needed.
// Only f32 kernels have NEON bodies; the integer and blocked entries reuse the serial reference.
#include <cmath>

#include "distance/distance.h"

#if defined(__aarch64__)
#include <arm_neon.h>

namespace qv {
namespace {

float l2_f32(const float* a, const float* b, size_t d) {
  float32x4_t s0 = vdupq_n_f32(0), s1 = vdupq_n_f32(0);
  size_t i = 0;
  for (; i + 8 <= d; i += 8) {
    float32x4_t t0 = vsubq_f32(vld1q_f32(a + i), vld1q_f32(b + i));
    float32x4_t t1 = vsubq_f32(vld1q_f32(a + i + 4), vld1q_f32(b + i + 4));
    s0 = vfmaq_f32(s0, t0, t0);
    s1 = vfmaq_f32(s1, t1, t1);
  }
  float s = vaddvq_f32(vaddq_f32(s0, s1));
  for (; i < d; ++i) {
    float t = a[i] - b[i];
    s += t * t;
  }
  return s;
}

float ip_f32(const float* a, const float* b, size_t d) {
  float32x4_t s0 = vdupq_n_f32(0), s1 = vdupq_n_f32(0);
  size_t i = 0;
  for (; i + 8 <= d; i += 8) {
    s0 = vfmaq_f32(s0, vld1q_f32(a + i), vld1q_f32(b + i));
    s1 = vfmaq_f32(s1, vld1q_f32(a + i + 4), vld1q_f32(b + i + 4));
  }
  float s = vaddvq_f32(vaddq_f32(s0, s1));
  for (; i < d; ++i) s += a[i] * b[i];
  return s;
}

float cos_f32(const float* a, const float* b, size_t d) {
  float ab = ip_f32(a, b, d), aa = ip_f32(a, a, d), bb = ip_f32(b, b, d);
  if (aa == 0 || bb == 0) return 1.0f;
  return 1.0f - ab / std::sqrt(aa * bb);
}

void l2_f32_rows(const float* q, const float* base, size_t n, size_t d, float* out) {
  for (size_t i = 0; i < n; ++i) out[i] = l2_f32(q, base + i * d, d);
}

void ip_f32_x4(const float* q, const float* const r[4], size_t d, float out[4]) {
  for (int j = 0; j < 4; ++j) out[j] = ip_f32(q, r[j], d);
}

void ip_f32_4x4(const float* const q[4], const float* const r[4], size_t d, float out[16]) {
  for (int i = 0; i < 4; ++i)
    for (int j = 0; j < 4; ++j) out[i * 4 + j] = ip_f32(q[i], r[j], d);
}

float ip_f32_fixed(const float* a, const float* b, size_t d) {
  float32x4_t l0 = vdupq_n_f32(0), l1 = vdupq_n_f32(0), l2 = vdupq_n_f32(0), l3 = vdupq_n_f32(0);
  size_t i = 0;
  for (; i + 16 <= d; i += 16) {
    l0 = vfmaq_f32(l0, vld1q_f32(a + i), vld1q_f32(b + i));
    l1 = vfmaq_f32(l1, vld1q_f32(a + i + 4), vld1q_f32(b + i + 4));
    l2 = vfmaq_f32(l2, vld1q_f32(a + i + 8), vld1q_f32(b + i + 8));
    l3 = vfmaq_f32(l3, vld1q_f32(a + i + 12), vld1q_f32(b + i + 12));
  }
  float acc[16];
  vst1q_f32(acc, l0);
  vst1q_f32(acc + 4, l1);
  vst1q_f32(acc + 8, l2);
  vst1q_f32(acc + 12, l3);
  return fixed_lanes_finish(acc, a + i, b + i, d - i);
}

Kernels make_table() {
  Kernels k = *serial_kernels();
  k.level = SimdLevel::Neon;
  k.l2_f32 = l2_f32;
  k.ip_f32 = ip_f32;
  k.cos_f32 = cos_f32;
  k.l2_f32_rows = l2_f32_rows;
  k.ip_f32_x4 = ip_f32_x4;
  k.ip_f32_4x4 = ip_f32_4x4;
  k.ip_f32_fixed = ip_f32_fixed;
  return k;
}

}  // namespace

const Kernels* neon_kernels() {
  static const Kernels table = make_table();
  return &table;
}

}  // namespace qv
#else
namespace qv {
const Kernels* neon_kernels() { return nullptr; }
}  // namespace qv
#endif
