// AVX-512 kernels (F + BW + VL + DQ: Skylake-X, Ice Lake, Zen 4 and later). Compiled for that
// target by the pragma below only; chosen at run time when the CPU and the OS (XCR0 zmm state)
// support it. Tails use mask registers: no scalar loop, no read past the end.
#include <cmath>

#include "distance/distance.h"

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>

// clang (the libFuzzer build, scripts/fuzz-native.sh) has its own form of the target pragma.
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma"))), apply_to = function)
#else
#pragma GCC push_options
// GCC 12 warns inside its own _mm512_reduce_* helpers (_mm256_undefined_*); not our code.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma")
#endif

namespace qv {
namespace {

static inline __mmask16 mask16(size_t r) { return static_cast<__mmask16>((1u << r) - 1u); }

float l2_f32(const float* a, const float* b, size_t d) {
  __m512 s0 = _mm512_setzero_ps(), s1 = _mm512_setzero_ps();
  size_t i = 0;
  for (; i + 32 <= d; i += 32) {
    __m512 t0 = _mm512_sub_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i));
    __m512 t1 = _mm512_sub_ps(_mm512_loadu_ps(a + i + 16), _mm512_loadu_ps(b + i + 16));
    s0 = _mm512_fmadd_ps(t0, t0, s0);
    s1 = _mm512_fmadd_ps(t1, t1, s1);
  }
  if (i + 16 <= d) {
    __m512 t = _mm512_sub_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i));
    s0 = _mm512_fmadd_ps(t, t, s0);
    i += 16;
  }
  if (i < d) {
    __mmask16 m = mask16(d - i);
    __m512 t = _mm512_sub_ps(_mm512_maskz_loadu_ps(m, a + i), _mm512_maskz_loadu_ps(m, b + i));
    s1 = _mm512_fmadd_ps(t, t, s1);
  }
  return _mm512_reduce_add_ps(_mm512_add_ps(s0, s1));
}

float ip_f32(const float* a, const float* b, size_t d) {
  __m512 s0 = _mm512_setzero_ps(), s1 = _mm512_setzero_ps();
  size_t i = 0;
  for (; i + 32 <= d; i += 32) {
    s0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), s0);
    s1 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 16), _mm512_loadu_ps(b + i + 16), s1);
  }
  if (i + 16 <= d) {
    s0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), s0);
    i += 16;
  }
  if (i < d) {
    __mmask16 m = mask16(d - i);
    s1 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, a + i), _mm512_maskz_loadu_ps(m, b + i), s1);
  }
  return _mm512_reduce_add_ps(_mm512_add_ps(s0, s1));
}

float cos_f32(const float* a, const float* b, size_t d) {
  __m512 ab = _mm512_setzero_ps(), aa = _mm512_setzero_ps(), bb = _mm512_setzero_ps();
  for (size_t i = 0; i < d; i += 16) {
    __mmask16 m = d - i >= 16 ? __mmask16(0xFFFF) : mask16(d - i);
    __m512 x = _mm512_maskz_loadu_ps(m, a + i), y = _mm512_maskz_loadu_ps(m, b + i);
    ab = _mm512_fmadd_ps(x, y, ab);
    aa = _mm512_fmadd_ps(x, x, aa);
    bb = _mm512_fmadd_ps(y, y, bb);
  }
  float sab = _mm512_reduce_add_ps(ab), saa = _mm512_reduce_add_ps(aa), sbb = _mm512_reduce_add_ps(bb);
  if (saa == 0 || sbb == 0) return 1.0f;
  return 1.0f - sab / std::sqrt(saa * sbb);
}

// 32 bytes at a time widened to 32 x i16, then vpmaddwd into 16 x i32 (see the AVX2 file for the
// overflow bound). The tail is a byte-masked load.
template <bool kSigned, bool kL2>
static inline __m512i int8_step(__m512i acc, __m256i x8, __m256i y8) {
  __m512i x = kSigned ? _mm512_cvtepi8_epi16(x8) : _mm512_cvtepu8_epi16(x8);
  __m512i y = kSigned ? _mm512_cvtepi8_epi16(y8) : _mm512_cvtepu8_epi16(y8);
  if (kL2) {
    __m512i t = _mm512_sub_epi16(x, y);
    return _mm512_add_epi32(acc, _mm512_madd_epi16(t, t));
  }
  return _mm512_add_epi32(acc, _mm512_madd_epi16(x, y));
}

template <bool kSigned, bool kL2>
static inline int32_t int8_kernel(const void* a, const void* b, size_t d) {
  const uint8_t* pa = static_cast<const uint8_t*>(a);
  const uint8_t* pb = static_cast<const uint8_t*>(b);
  __m512i s0 = _mm512_setzero_si512(), s1 = _mm512_setzero_si512();
  size_t i = 0;
  for (; i + 64 <= d; i += 64) {  // two independent chains hide the madd latency
    s0 = int8_step<kSigned, kL2>(s0, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(pa + i)),
                                 _mm256_loadu_si256(reinterpret_cast<const __m256i*>(pb + i)));
    s1 = int8_step<kSigned, kL2>(s1, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(pa + i + 32)),
                                 _mm256_loadu_si256(reinterpret_cast<const __m256i*>(pb + i + 32)));
  }
  for (; i < d; i += 32) {
    size_t r = d - i;
    __mmask32 m = r >= 32 ? __mmask32(0xFFFFFFFFu) : static_cast<__mmask32>((1u << r) - 1u);
    s0 = int8_step<kSigned, kL2>(s0, _mm256_maskz_loadu_epi8(m, pa + i), _mm256_maskz_loadu_epi8(m, pb + i));
  }
  return _mm512_reduce_add_epi32(_mm512_add_epi32(s0, s1));
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
  __m512 s0 = _mm512_setzero_ps(), s1 = _mm512_setzero_ps(), s2 = _mm512_setzero_ps(), s3 = _mm512_setzero_ps();
  for (size_t i = 0; i < d; i += 16) {
    __mmask16 m = d - i >= 16 ? __mmask16(0xFFFF) : mask16(d - i);
    __m512 x = _mm512_maskz_loadu_ps(m, q + i);
    s0 = _mm512_fmadd_ps(x, _mm512_maskz_loadu_ps(m, r[0] + i), s0);
    s1 = _mm512_fmadd_ps(x, _mm512_maskz_loadu_ps(m, r[1] + i), s1);
    s2 = _mm512_fmadd_ps(x, _mm512_maskz_loadu_ps(m, r[2] + i), s2);
    s3 = _mm512_fmadd_ps(x, _mm512_maskz_loadu_ps(m, r[3] + i), s3);
  }
  out[0] = _mm512_reduce_add_ps(s0);
  out[1] = _mm512_reduce_add_ps(s1);
  out[2] = _mm512_reduce_add_ps(s2);
  out[3] = _mm512_reduce_add_ps(s3);
}

// 4 queries x 4 rows: 16 accumulators + 8 operands = 24 of the 32 zmm registers; each step does
// 8 loads and 16 FMAs, so the loop is FMA-bound rather than load-bound.
void ip_f32_4x4(const float* const q[4], const float* const r[4], size_t d, float out[16]) {
  __m512 acc[16];
  for (int j = 0; j < 16; ++j) acc[j] = _mm512_setzero_ps();
  size_t i = 0;
  for (; i + 16 <= d; i += 16) {
    __m512 y0 = _mm512_loadu_ps(r[0] + i), y1 = _mm512_loadu_ps(r[1] + i);
    __m512 y2 = _mm512_loadu_ps(r[2] + i), y3 = _mm512_loadu_ps(r[3] + i);
    for (int a = 0; a < 4; ++a) {
      __m512 x = _mm512_loadu_ps(q[a] + i);
      acc[a * 4 + 0] = _mm512_fmadd_ps(x, y0, acc[a * 4 + 0]);
      acc[a * 4 + 1] = _mm512_fmadd_ps(x, y1, acc[a * 4 + 1]);
      acc[a * 4 + 2] = _mm512_fmadd_ps(x, y2, acc[a * 4 + 2]);
      acc[a * 4 + 3] = _mm512_fmadd_ps(x, y3, acc[a * 4 + 3]);
    }
  }
  if (i < d) {
    __mmask16 m = mask16(d - i);
    __m512 y0 = _mm512_maskz_loadu_ps(m, r[0] + i), y1 = _mm512_maskz_loadu_ps(m, r[1] + i);
    __m512 y2 = _mm512_maskz_loadu_ps(m, r[2] + i), y3 = _mm512_maskz_loadu_ps(m, r[3] + i);
    for (int a = 0; a < 4; ++a) {
      __m512 x = _mm512_maskz_loadu_ps(m, q[a] + i);
      acc[a * 4 + 0] = _mm512_fmadd_ps(x, y0, acc[a * 4 + 0]);
      acc[a * 4 + 1] = _mm512_fmadd_ps(x, y1, acc[a * 4 + 1]);
      acc[a * 4 + 2] = _mm512_fmadd_ps(x, y2, acc[a * 4 + 2]);
      acc[a * 4 + 3] = _mm512_fmadd_ps(x, y3, acc[a * 4 + 3]);
    }
  }
  for (int j = 0; j < 16; ++j) out[j] = _mm512_reduce_add_ps(acc[j]);
}

float sum_f32(const float* a, size_t n) {
  __m512 s0 = _mm512_setzero_ps(), s1 = _mm512_setzero_ps(), s2 = _mm512_setzero_ps(), s3 = _mm512_setzero_ps();
  size_t i = 0;
  for (; i + 64 <= n; i += 64) {
    s0 = _mm512_add_ps(s0, _mm512_loadu_ps(a + i));
    s1 = _mm512_add_ps(s1, _mm512_loadu_ps(a + i + 16));
    s2 = _mm512_add_ps(s2, _mm512_loadu_ps(a + i + 32));
    s3 = _mm512_add_ps(s3, _mm512_loadu_ps(a + i + 48));
  }
  for (; i < n; i += 16) {
    __mmask16 m = n - i >= 16 ? __mmask16(0xFFFF) : mask16(n - i);
    s0 = _mm512_add_ps(s0, _mm512_maskz_loadu_ps(m, a + i));
  }
  return _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(s0, s1), _mm512_add_ps(s2, s3)));
}

float ip_f32_fixed(const float* a, const float* b, size_t d) {
  __m512 acc16 = _mm512_setzero_ps();  // lanes 0..15
  size_t i = 0;
  for (; i + 16 <= d; i += 16) acc16 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), acc16);
  alignas(64) float acc[16];
  _mm512_store_ps(acc, acc16);
  return fixed_lanes_finish(acc, a + i, b + i, d - i);
}

// The loop sits in this file so that l2_u8 is inlined into it (no call per row).
void l2_u8_many(const uint8_t* q, const uint8_t* const* rows, size_t n, size_t d, uint32_t* out) {
  for (size_t i = 0; i < n; ++i) out[i] = l2_u8(q, rows[i], d);
}

const Kernels kTable = {SimdLevel::Avx512, l2_f32, ip_f32, cos_f32, l2_u8, ip_u8, l2_i8, ip_i8,
                        l2_f32_rows, ip_f32_x4, ip_f32_4x4, sum_f32, ip_f32_fixed, l2_u8_many};

}  // namespace

const Kernels* avx512_kernels() { return &kTable; }

}  // namespace qv

#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC diagnostic pop
#pragma GCC pop_options
#endif

#else
namespace qv {
const Kernels* avx512_kernels() { return nullptr; }
}  // namespace qv
#endif
