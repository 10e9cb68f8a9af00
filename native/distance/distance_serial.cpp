// Serial reference kernels: the ground truth the SIMD variants are tested against, and the
// fallback on CPUs without AVX2/NEON. Plain loops; the compiler may vectorize them with SSE2.
#include <cmath>

#include "distance/distance.h"

namespace qv {
namespace {

float l2_f32(const float* a, const float* b, size_t d) {
  float s = 0;
  for (size_t i = 0; i < d; ++i) {
    float t = a[i] - b[i];
    s += t * t;
  }
  return s;
}

float ip_f32(const float* a, const float* b, size_t d) {
  float s = 0;
  for (size_t i = 0; i < d; ++i) s += a[i] * b[i];
  return s;
}

float cos_f32(const float* a, const float* b, size_t d) {
  float ab = 0, aa = 0, bb = 0;
  for (size_t i = 0; i < d; ++i) {
    ab += a[i] * b[i];
    aa += a[i] * a[i];
    bb += b[i] * b[i];
  }
  if (aa == 0 || bb == 0) return 1.0f;
  return 1.0f - ab / std::sqrt(aa * bb);
}

uint32_t l2_u8(const uint8_t* a, const uint8_t* b, size_t d) {
  uint32_t s = 0;
  for (size_t i = 0; i < d; ++i) {
    int t = int(a[i]) - int(b[i]);
    s += uint32_t(t * t);
  }
  return s;
}

uint32_t ip_u8(const uint8_t* a, const uint8_t* b, size_t d) {
  uint32_t s = 0;
  for (size_t i = 0; i < d; ++i) s += uint32_t(a[i]) * uint32_t(b[i]);
  return s;
}

uint32_t l2_i8(const int8_t* a, const int8_t* b, size_t d) {
  uint32_t s = 0;
  for (size_t i = 0; i < d; ++i) {
    int t = int(a[i]) - int(b[i]);
    s += uint32_t(t * t);
  }
  return s;
}

int32_t ip_i8(const int8_t* a, const int8_t* b, size_t d) {
  int32_t s = 0;
  for (size_t i = 0; i < d; ++i) s += int32_t(a[i]) * int32_t(b[i]);
  return s;
}

void l2_f32_rows(const float* q, const float* base, size_t n, size_t d, float* out) {
  for (size_t i = 0; i < n; ++i) out[i] = l2_f32(q, base + i * d, d);
}

void ip_f32_x4(const float* q, const float* const rows[4], size_t d, float out[4]) {
  for (int j = 0; j < 4; ++j) out[j] = ip_f32(q, rows[j], d);
}

void ip_f32_4x4(const float* const q[4], const float* const r[4], size_t d, float out[16]) {
  for (int i = 0; i < 4; ++i)
    for (int j = 0; j < 4; ++j) out[i * 4 + j] = ip_f32(q[i], r[j], d);
}

float sum_f32(const float* a, size_t n) {
  float s0 = 0, s1 = 0, s2 = 0, s3 = 0;
  size_t i = 0;
  for (; i + 4 <= n; i += 4) {
    s0 += a[i];
    s1 += a[i + 1];
    s2 += a[i + 2];
    s3 += a[i + 3];
  }
  for (; i < n; ++i) s0 += a[i];
  return (s0 + s1) + (s2 + s3);
}

float ip_f32_fixed(const float* a, const float* b, size_t d) {
  float acc[16] = {0};
  size_t i = 0;
  for (; i + 16 <= d; i += 16)
    for (size_t j = 0; j < 16; ++j) acc[j] = std::fma(a[i + j], b[i + j], acc[j]);
  return fixed_lanes_finish(acc, a + i, b + i, d - i);
}

// The loop sits in this file so that l2_u8 is inlined into it (no call per row).
void l2_u8_many(const uint8_t* q, const uint8_t* const* rows, size_t n, size_t d, uint32_t* out) {
  for (size_t i = 0; i < n; ++i) out[i] = l2_u8(q, rows[i], d);
}

const Kernels kTable = {SimdLevel::Serial, l2_f32, ip_f32, cos_f32, l2_u8, ip_u8, l2_i8, ip_i8,
                        l2_f32_rows, ip_f32_x4, ip_f32_4x4, sum_f32, ip_f32_fixed, l2_u8_many};

}  // namespace

const Kernels* serial_kernels() { return &kTable; }

}  // namespace qv
