#include "ivfpq/scan.h"

#include "distance/distance.h"

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#define QV_IVFPQ_X86 1
#endif

namespace qv {
namespace ivfpq {

// The two arithmetic loops are written once and compiled per ISA; the compiler vectorizes them
// with the instruction set of the function's target attribute.
#define QV_IVFPQ_SIMPLE_LOOPS(SUFFIX, ATTR)                                                         \
  ATTR static void lut_add_##SUFFIX(const float* a, const float* b, float scale, size_t n, float* out) { \
    for (size_t i = 0; i < n; ++i) out[i] = a[i] + scale * b[i];                                    \
  }                                                                                                 \
  ATTR static void ip_table_##SUFFIX(const float* q, const float* cbt, size_t m, size_t dsub, float* out) { \
    for (size_t j = 0; j < m; ++j) {                                                                \
      float* o = out + j * kCodebookSize;                                                           \
      for (size_t c = 0; c < kCodebookSize; ++c) o[c] = 0.0f;                                       \
      for (size_t t = 0; t < dsub; ++t) {                                                           \
        const float qv = q[j * dsub + t];                                                           \
        const float* row = cbt + (j * dsub + t) * kCodebookSize;                                    \
        for (size_t c = 0; c < kCodebookSize; ++c) o[c] += qv * row[c];                             \
      }                                                                                             \
    }                                                                                               \
  }

QV_IVFPQ_SIMPLE_LOOPS(serial, )

static void scan_block_serial(const uint8_t* codes, size_t m, const float* lut, float* out) {
  float acc[kScanBlock] = {};
  for (size_t j = 0; j < m; ++j) {
    const uint8_t* row = codes + j * kScanBlock;
    const float* t = lut + j * kCodebookSize;
    for (size_t l = 0; l < kScanBlock; ++l) acc[l] += t[row[l]];
  }
  for (size_t l = 0; l < kScanBlock; ++l) out[l] = acc[l];
}

static const ScanKernels kSerial = {"serial", lut_add_serial, ip_table_serial, scan_block_serial};

#ifdef QV_IVFPQ_X86
#define QV_AVX2 __attribute__((target("avx2,fma")))
#define QV_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx2,fma")))

QV_IVFPQ_SIMPLE_LOOPS(avx2, QV_AVX2)
QV_IVFPQ_SIMPLE_LOOPS(avx512, QV_AVX512)

// Per sub-quantizer: 16 code bytes -> two vectors of 8 indexes -> two gathers from its table.
QV_AVX2 static void scan_block_avx2(const uint8_t* codes, size_t m, const float* lut, float* out) {
  __m256 lo = _mm256_setzero_ps(), hi = _mm256_setzero_ps();
  for (size_t j = 0; j < m; ++j) {
    __m128i c = _mm_loadu_si128(reinterpret_cast<const __m128i*>(codes + j * kScanBlock));
    const float* t = lut + j * kCodebookSize;
    lo = _mm256_add_ps(lo, _mm256_i32gather_ps(t, _mm256_cvtepu8_epi32(c), 4));
    hi = _mm256_add_ps(hi, _mm256_i32gather_ps(t, _mm256_cvtepu8_epi32(_mm_srli_si128(c, 8)), 4));
  }
  _mm256_storeu_ps(out, lo);
  _mm256_storeu_ps(out + 8, hi);
}

// 16 code bytes -> 16 indexes -> one gather from a 256-entry table (the masked form with a zero
// source: the plain one leaves its pass-through operand undefined, which GCC 12 warns about).
QV_AVX512 static inline __m512 gather16(__m128i codes, const float* table) {
  return _mm512_mask_i32gather_ps(_mm512_setzero_ps(), 0xFFFF, _mm512_maskz_cvtepu8_epi32(0xFFFF, codes), table, 4);
}

// Per sub-quantizer: 16 code bytes -> one vector of 16 indexes -> one gather.
QV_AVX512 static void scan_block_avx512(const uint8_t* codes, size_t m, const float* lut, float* out) {
  __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
  size_t j = 0;
  for (; j + 2 <= m; j += 2) {  // two independent chains hide the gather latency
    __m128i c0 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(codes + j * kScanBlock));
    __m128i c1 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(codes + (j + 1) * kScanBlock));
    acc0 = _mm512_add_ps(acc0, gather16(c0, lut + j * kCodebookSize));
    acc1 = _mm512_add_ps(acc1, gather16(c1, lut + (j + 1) * kCodebookSize));
  }
  if (j < m) {
    __m128i c0 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(codes + j * kScanBlock));
    acc0 = _mm512_add_ps(acc0, gather16(c0, lut + j * kCodebookSize));
  }
  _mm512_storeu_ps(out, _mm512_add_ps(acc0, acc1));
}

static const ScanKernels kAvx2 = {"avx2", lut_add_avx2, ip_table_avx2, scan_block_avx2};
static const ScanKernels kAvx512 = {"avx512", lut_add_avx512, ip_table_avx512, scan_block_avx512};
#endif

const ScanKernels& scan_kernels_serial() { return kSerial; }

const ScanKernels& scan_kernels() {
  static const ScanKernels* chosen = [] {
#ifdef QV_IVFPQ_X86
    switch (kernels().level) {
      case SimdLevel::Avx512: return &kAvx512;
      case SimdLevel::Avx2: return &kAvx2;
      default: break;
    }
#endif
    return &kSerial;
  }();
  return *chosen;
}

}  // namespace ivfpq
}  // namespace qv
