#include "hnsw/hnsw_quant.h"

#include <algorithm>
#include <cmath>

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#define QV_HNSW_X86 1
#endif

#include "distance/distance.h"

namespace qv {
namespace hnsw {

uint32_t l2_u8_serial(const uint8_t* a, const uint8_t* b, size_t d) {
  uint32_t s = 0;
  for (size_t i = 0; i < d; ++i) {
    int32_t t = static_cast<int32_t>(a[i]) - static_cast<int32_t>(b[i]);
    s += static_cast<uint32_t>(t * t);
  }
  return s;
}

#ifdef QV_HNSW_X86

// Widen 16 bytes to 16 x i16, subtract, and let vpmaddwd square and add pairs into 8 x i32.
__attribute__((target("avx2"))) uint32_t l2_u8_avx2(const uint8_t* a, const uint8_t* b, size_t d) {
  __m256i acc0 = _mm256_setzero_si256(), acc1 = _mm256_setzero_si256();
  size_t i = 0;
  for (; i + 32 <= d; i += 32) {
    __m256i a0 = _mm256_cvtepu8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(a + i)));
    __m256i b0 = _mm256_cvtepu8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(b + i)));
    __m256i a1 = _mm256_cvtepu8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(a + i + 16)));
    __m256i b1 = _mm256_cvtepu8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(b + i + 16)));
    __m256i d0 = _mm256_sub_epi16(a0, b0), d1 = _mm256_sub_epi16(a1, b1);
    acc0 = _mm256_add_epi32(acc0, _mm256_madd_epi16(d0, d0));
    acc1 = _mm256_add_epi32(acc1, _mm256_madd_epi16(d1, d1));
  }
  for (; i + 16 <= d; i += 16) {
    __m256i a0 = _mm256_cvtepu8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(a + i)));
    __m256i b0 = _mm256_cvtepu8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(b + i)));
    __m256i d0 = _mm256_sub_epi16(a0, b0);
    acc0 = _mm256_add_epi32(acc0, _mm256_madd_epi16(d0, d0));
  }
  acc0 = _mm256_add_epi32(acc0, acc1);
  __m128i s = _mm_add_epi32(_mm256_castsi256_si128(acc0), _mm256_extracti128_si256(acc0, 1));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4E));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xB1));
  uint32_t total = static_cast<uint32_t>(_mm_cvtsi128_si32(s));
  // Tail of at most 15 bytes: AVX2 has no byte-masked load.
  return total + l2_u8_serial(a + i, b + i, d - i);
}

// 32 bytes per step widened to 32 x i16 in one zmm; the tail is a masked load (zeros past d).
__attribute__((target("avx512f,avx512bw,avx512vl"))) uint32_t l2_u8_avx512(const uint8_t* a, const uint8_t* b,
                                                                          size_t d) {
  __m512i acc0 = _mm512_setzero_si512(), acc1 = _mm512_setzero_si512();
  size_t i = 0;
  for (; i + 64 <= d; i += 64) {
    __m512i a0 = _mm512_cvtepu8_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(a + i)));
    __m512i b0 = _mm512_cvtepu8_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + i)));
    __m512i a1 = _mm512_cvtepu8_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(a + i + 32)));
    __m512i b1 = _mm512_cvtepu8_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + i + 32)));
    __m512i d0 = _mm512_sub_epi16(a0, b0), d1 = _mm512_sub_epi16(a1, b1);
    acc0 = _mm512_add_epi32(acc0, _mm512_madd_epi16(d0, d0));
    acc1 = _mm512_add_epi32(acc1, _mm512_madd_epi16(d1, d1));
  }
  while (i < d) {
    size_t left = d - i;
    __mmask32 m = left >= 32 ? 0xFFFFFFFFu : ((1u << left) - 1u);
    __m512i a0 = _mm512_cvtepu8_epi16(_mm256_maskz_loadu_epi8(m, a + i));
    __m512i b0 = _mm512_cvtepu8_epi16(_mm256_maskz_loadu_epi8(m, b + i));
    __m512i d0 = _mm512_sub_epi16(a0, b0);
    acc0 = _mm512_add_epi32(acc0, _mm512_madd_epi16(d0, d0));
    i += left >= 32 ? 32 : left;
  }
  return static_cast<uint32_t>(_mm512_reduce_add_epi32(_mm512_add_epi32(acc0, acc1)));
}

#else
uint32_t l2_u8_avx2(const uint8_t* a, const uint8_t* b, size_t d) { return l2_u8_serial(a, b, d); }
uint32_t l2_u8_avx512(const uint8_t* a, const uint8_t* b, size_t d) { return l2_u8_serial(a, b, d); }
#endif

L2U8Fn l2_u8_kernel() {
  switch (kernels().level) {
#ifdef QV_HNSW_X86
    case SimdLevel::Avx512: return l2_u8_avx512;
    case SimdLevel::Avx2: return l2_u8_avx2;
#endif
    default: return l2_u8_serial;
  }
}

void ScalarQuantizer::set_step() {
  float width = 0.0f;
  for (size_t d = 0; d < lo_.size(); ++d) width = std::max(width, hi_[d] - lo_[d]);
  step_ = width > 0.0f ? width / 255.0f : 1.0f;
  inv_step_ = 1.0f / step_;
}

bool ScalarQuantizer::fit(const float* v, size_t n, uint32_t dim) {
  if (n == 0) return false;
  std::vector<float> mn(v, v + dim), mx(v, v + dim);
  for (size_t i = 1; i < n; ++i) {
    const float* x = v + i * dim;
    for (uint32_t d = 0; d < dim; ++d) {
      mn[d] = std::min(mn[d], x[d]);
      mx[d] = std::max(mx[d], x[d]);
    }
  }
  if (!trained_) {
    lo_ = std::move(mn);
    hi_ = std::move(mx);
    trained_ = true;
    set_step();
    return true;
  }
  bool grew = false;
  for (uint32_t d = 0; d < dim; ++d) grew = grew || mn[d] < lo_[d] || mx[d] > hi_[d];
  if (!grew) return false;
  float width = 0.0f;
  for (uint32_t d = 0; d < dim; ++d) width = std::max(width, std::max(hi_[d], mx[d]) - std::min(lo_[d], mn[d]));
  const float margin = width / 8.0f;
  for (uint32_t d = 0; d < dim; ++d) {
    if (mn[d] < lo_[d]) lo_[d] = mn[d] - margin;
    if (mx[d] > hi_[d]) hi_[d] = mx[d] + margin;
  }
  set_step();
  return true;
}

bool ScalarQuantizer::encode(const float* v, uint8_t* code) const {
  bool exact = true;
  const size_t dim = lo_.size();
  for (size_t d = 0; d < dim; ++d) {
    float t = std::nearbyint((v[d] - lo_[d]) * inv_step_);
    t = std::min(255.0f, std::max(0.0f, t));
    code[d] = static_cast<uint8_t>(t);
    exact = exact && (lo_[d] + t * step_ == v[d]);
  }
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
