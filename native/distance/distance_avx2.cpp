// AVX2 + FMA kernels (Haswell / Zen and later). Compiled for that target by the pragma below, not
// by a global -march: the rest of the binary stays baseline x86-64. Tails: masked loads for f32
// (vmaskmovps), a zero-padded copy of the last < 16 bytes for u8/i8 (AVX2 has no byte mask load).
#include <cmath>
#include <cstring>

#include "distance/distance.h"

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>

// clang (the libFuzzer build, scripts/fuzz-native.sh) has its own form of the target pragma.
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx2,fma")
#endif

namespace qv {
namespace {

// Lane mask with the first r (0..8) lanes on.
static inline __m256i tail_mask(size_t r) {
  alignas(32) static const int32_t m[16] = {-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0};
  return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(m + 8 - r));
}

static inline float hsum(__m256 v) {
  __m128 lo = _mm256_castps256_ps128(v), hi = _mm256_extractf128_ps(v, 1);
  lo = _mm_add_ps(lo, hi);
  __m128 sh = _mm_movehdup_ps(lo);
  lo = _mm_add_ps(lo, sh);
  sh = _mm_movehl_ps(sh, lo);
  return _mm_cvtss_f32(_mm_add_ss(lo, sh));
}

static inline int32_t hsum_i32(__m256i v) {
  __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4E));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xB1));
  return _mm_cvtsi128_si32(s);
}

float l2_f32(const float* a, const float* b, size_t d) {
  __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
  size_t i = 0;
  for (; i + 16 <= d; i += 16) {
    __m256 t0 = _mm256_sub_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i));
    __m256 t1 = _mm256_sub_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8));
    s0 = _mm256_fmadd_ps(t0, t0, s0);
    s1 = _mm256_fmadd_ps(t1, t1, s1);
  }
  if (i + 8 <= d) {
    __m256 t = _mm256_sub_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i));
    s0 = _mm256_fmadd_ps(t, t, s0);
    i += 8;
  }
  if (i < d) {
    __m256i m = tail_mask(d - i);
    __m256 t = _mm256_sub_ps(_mm256_maskload_ps(a + i, m), _mm256_maskload_ps(b + i, m));
    s1 = _mm256_fmadd_ps(t, t, s1);
  }
  return hsum(_mm256_add_ps(s0, s1));
}

float ip_f32(const float* a, const float* b, size_t d) {
  __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
  size_t i = 0;
  for (; i + 16 <= d; i += 16) {
    s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
    s1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), s1);
  }
  if (i + 8 <= d) {
    s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
    i += 8;
  }
  if (i < d) {
    __m256i m = tail_mask(d - i);
    s1 = _mm256_fmadd_ps(_mm256_maskload_ps(a + i, m), _mm256_maskload_ps(b + i, m), s1);
  }
  return hsum(_mm256_add_ps(s0, s1));
}

float cos_f32(const float* a, const float* b, size_t d) {
  __m256 ab = _mm256_setzero_ps(), aa = _mm256_setzero_ps(), bb = _mm256_setzero_ps();
  size_t i = 0;
  for (; i + 8 <= d; i += 8) {
    __m256 x = _mm256_loadu_ps(a + i), y = _mm256_loadu_ps(b + i);
    ab = _mm256_fmadd_ps(x, y, ab);
    aa = _mm256_fmadd_ps(x, x, aa);
    bb = _mm256_fmadd_ps(y, y, bb);
  }
  if (i < d) {
    __m256i m = tail_mask(d - i);
    __m256 x = _mm256_maskload_ps(a + i, m), y = _mm256_maskload_ps(b + i, m);
    ab = _mm256_fmadd_ps(x, y, ab);
    aa = _mm256_fmadd_ps(x, x, aa);
    bb = _mm256_fmadd_ps(y, y, bb);
  }
  float sab = hsum(ab), saa = hsum(aa), sbb = hsum(bb);
  if (saa == 0 || sbb == 0) return 1.0f;
  return 1.0f - sab / std::sqrt(saa * sbb);
}

// Loads 16 bytes, or the last r < 16 bytes zero-padded.
static inline __m128i load16(const void* p, size_t r) {
  if (r >= 16) return _mm_loadu_si128(static_cast<const __m128i*>(p));
  alignas(16) uint8_t buf[16] = {0};
  std::memcpy(buf, p, r);
  return _mm_load_si128(reinterpret_cast<const __m128i*>(buf));
}

// u8/i8: widen 16 bytes to 16 x i16, then vpmaddwd: pairs of i16 products summed into i32.
// |diff| <= 255, diff^2 <= 65025, a pair <= 130050: no i32 overflow for any d <= 2^15 per lane.
template <bool kSigned, bool kL2>
static inline __m256i int8_step(__m256i acc, __m128i x8, __m128i y8) {
  __m256i x = kSigned ? _mm256_cvtepi8_epi16(x8) : _mm256_cvtepu8_epi16(x8);
  __m256i y = kSigned ? _mm256_cvtepi8_epi16(y8) : _mm256_cvtepu8_epi16(y8);
  if (kL2) {
    __m256i t = _mm256_sub_epi16(x, y);
    return _mm256_add_epi32(acc, _mm256_madd_epi16(t, t));
  }
  return _mm256_add_epi32(acc, _mm256_madd_epi16(x, y));
}

template <bool kSigned, bool kL2>
static inline int32_t int8_kernel(const void* a, const void* b, size_t d) {
  const uint8_t* pa = static_cast<const uint8_t*>(a);
  const uint8_t* pb = static_cast<const uint8_t*>(b);
  __m256i s0 = _mm256_setzero_si256(), s1 = _mm256_setzero_si256();
  size_t i = 0;
  for (; i + 32 <= d; i += 32) {  // two independent chains hide the madd latency
    s0 = int8_step<kSigned, kL2>(s0, _mm_loadu_si128(reinterpret_cast<const __m128i*>(pa + i)),
                                 _mm_loadu_si128(reinterpret_cast<const __m128i*>(pb + i)));
    s1 = int8_step<kSigned, kL2>(s1, _mm_loadu_si128(reinterpret_cast<const __m128i*>(pa + i + 16)),
                                 _mm_loadu_si128(reinterpret_cast<const __m128i*>(pb + i + 16)));
  }
  for (; i < d; i += 16) s0 = int8_step<kSigned, kL2>(s0, load16(pa + i, d - i), load16(pb + i, d - i));
  return hsum_i32(_mm256_add_epi32(s0, s1));
}

uint32_t l2_u8(const uint8_t* a, const uint8_t* b, size_t d) { return uint32_t(int8_kernel<false, true>(a, b, d)); }
uint32_t ip_u8(const uint8_t* a, const uint8_t* b, size_t d) { return uint32_t(int8_kernel<false, false>(a, b, d)); }
uint32_t l2_i8(const int8_t* a, const int8_t* b, size_t d) { return uint32_t(int8_kernel<true, true>(a, b, d)); }
int32_t ip_i8(const int8_t* a, const int8_t* b, size_t d) { return int8_kernel<true, false>(a, b, d); }

void l2_f32_rows(const float* q, const float* base, size_t n, size_t d, float* out) {
  for (size_t i = 0; i < n; ++i) {
    if (i + 2 < n) {
      const char* nx = reinterpret_cast<const char*>(base + (i + 2) * d);
      for (size_t off = 0; off < d * 4; off += 64) _mm_prefetch(nx + off, _MM_HINT_T0);
    }
    out[i] = l2_f32(q, base + i * d, d);
  }
}

void ip_f32_x4(const float* q, const float* const r[4], size_t d, float out[4]) {
  __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps(), s2 = _mm256_setzero_ps(), s3 = _mm256_setzero_ps();
  size_t i = 0;
  for (; i + 8 <= d; i += 8) {
    __m256 x = _mm256_loadu_ps(q + i);
    s0 = _mm256_fmadd_ps(x, _mm256_loadu_ps(r[0] + i), s0);
    s1 = _mm256_fmadd_ps(x, _mm256_loadu_ps(r[1] + i), s1);
    s2 = _mm256_fmadd_ps(x, _mm256_loadu_ps(r[2] + i), s2);
    s3 = _mm256_fmadd_ps(x, _mm256_loadu_ps(r[3] + i), s3);
  }
  if (i < d) {
    __m256i m = tail_mask(d - i);
    __m256 x = _mm256_maskload_ps(q + i, m);
    s0 = _mm256_fmadd_ps(x, _mm256_maskload_ps(r[0] + i, m), s0);
    s1 = _mm256_fmadd_ps(x, _mm256_maskload_ps(r[1] + i, m), s1);
    s2 = _mm256_fmadd_ps(x, _mm256_maskload_ps(r[2] + i, m), s2);
    s3 = _mm256_fmadd_ps(x, _mm256_maskload_ps(r[3] + i, m), s3);
  }
  out[0] = hsum(s0);
  out[1] = hsum(s1);
  out[2] = hsum(s2);
  out[3] = hsum(s3);
}

// 4x4 tile as two 2x4 passes: 8 accumulators + 2 query + 4 row registers fit in 16 ymm.
void ip_f32_4x4(const float* const q[4], const float* const r[4], size_t d, float out[16]) {
  for (int h = 0; h < 4; h += 2) {
    const float* q0 = q[h];
    const float* q1 = q[h + 1];
    __m256 a00 = _mm256_setzero_ps(), a01 = _mm256_setzero_ps(), a02 = _mm256_setzero_ps(), a03 = _mm256_setzero_ps();
    __m256 a10 = _mm256_setzero_ps(), a11 = _mm256_setzero_ps(), a12 = _mm256_setzero_ps(), a13 = _mm256_setzero_ps();
    size_t i = 0;
    auto step = [&](__m256 x0, __m256 x1, __m256 y0, __m256 y1, __m256 y2, __m256 y3) {
      a00 = _mm256_fmadd_ps(x0, y0, a00);
      a01 = _mm256_fmadd_ps(x0, y1, a01);
      a02 = _mm256_fmadd_ps(x0, y2, a02);
      a03 = _mm256_fmadd_ps(x0, y3, a03);
      a10 = _mm256_fmadd_ps(x1, y0, a10);
      a11 = _mm256_fmadd_ps(x1, y1, a11);
      a12 = _mm256_fmadd_ps(x1, y2, a12);
      a13 = _mm256_fmadd_ps(x1, y3, a13);
    };
    for (; i + 8 <= d; i += 8)
      step(_mm256_loadu_ps(q0 + i), _mm256_loadu_ps(q1 + i), _mm256_loadu_ps(r[0] + i), _mm256_loadu_ps(r[1] + i),
           _mm256_loadu_ps(r[2] + i), _mm256_loadu_ps(r[3] + i));
    if (i < d) {
      __m256i m = tail_mask(d - i);
      step(_mm256_maskload_ps(q0 + i, m), _mm256_maskload_ps(q1 + i, m), _mm256_maskload_ps(r[0] + i, m),
           _mm256_maskload_ps(r[1] + i, m), _mm256_maskload_ps(r[2] + i, m), _mm256_maskload_ps(r[3] + i, m));
    }
    float* o = out + h * 4;
    o[0] = hsum(a00); o[1] = hsum(a01); o[2] = hsum(a02); o[3] = hsum(a03);
    o[4] = hsum(a10); o[5] = hsum(a11); o[6] = hsum(a12); o[7] = hsum(a13);
  }
}

float sum_f32(const float* a, size_t n) {
  __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps(), s2 = _mm256_setzero_ps(), s3 = _mm256_setzero_ps();
  size_t i = 0;
  for (; i + 32 <= n; i += 32) {
    s0 = _mm256_add_ps(s0, _mm256_loadu_ps(a + i));
    s1 = _mm256_add_ps(s1, _mm256_loadu_ps(a + i + 8));
    s2 = _mm256_add_ps(s2, _mm256_loadu_ps(a + i + 16));
    s3 = _mm256_add_ps(s3, _mm256_loadu_ps(a + i + 24));
  }
  for (; i + 8 <= n; i += 8) s0 = _mm256_add_ps(s0, _mm256_loadu_ps(a + i));
  if (i < n) s1 = _mm256_add_ps(s1, _mm256_maskload_ps(a + i, tail_mask(n - i)));
  return hsum(_mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3)));
}

float ip_f32_fixed(const float* a, const float* b, size_t d) {
  __m256 lo = _mm256_setzero_ps(), hi = _mm256_setzero_ps();  // lanes 0..7 and 8..15
  size_t i = 0;
  for (; i + 16 <= d; i += 16) {
    lo = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), lo);
    hi = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), hi);
  }
  alignas(32) float acc[16];
  _mm256_store_ps(acc, lo);
  _mm256_store_ps(acc + 8, hi);
  return fixed_lanes_finish(acc, a + i, b + i, d - i);
}

// The loop sits in this file so that l2_u8 is inlined into it (no call per row).
void l2_u8_many(const uint8_t* q, const uint8_t* const* rows, size_t n, size_t d, uint32_t* out) {
  for (size_t i = 0; i < n; ++i) out[i] = l2_u8(q, rows[i], d);
}

const Kernels kTable = {SimdLevel::Avx2, l2_f32, ip_f32, cos_f32, l2_u8, ip_u8, l2_i8, ip_i8,
                        l2_f32_rows, ip_f32_x4, ip_f32_4x4, sum_f32, ip_f32_fixed, l2_u8_many};

}  // namespace

const Kernels* avx2_kernels() { return &kTable; }

}  // namespace qv

#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif

#else
namespace qv {
const Kernels* avx2_kernels() { return nullptr; }
}  // namespace qv
#endif
