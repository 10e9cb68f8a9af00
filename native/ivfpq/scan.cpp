#include "ivfpq/scan.h"

#include <limits>

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

static uint32_t nearest_256_serial(const float* x, const float* ct, const float* norms, size_t d, float* score) {
  float acc[kCodebookSize] = {};
  for (size_t t = 0; t < d; ++t) {
    const float xv = x[t];
    const float* row = ct + t * kCodebookSize;
    for (size_t c = 0; c < kCodebookSize; ++c) acc[c] += xv * row[c];
  }
  float best = norms[0] - 2.0f * acc[0];
  uint32_t arg = 0;
  for (uint32_t c = 1; c < kCodebookSize; ++c) {
    const float v = norms[c] - 2.0f * acc[c];
    if (v < best) {
      best = v;
      arg = c;
    }
  }
  *score = best;
  return arg;
}

static const ScanKernels kSerial = {"serial", lut_add_serial, ip_table_serial, scan_block_serial, nearest_256_serial};

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

// GCC 12's reduce intrinsics pass an undefined pass-through operand to their masked extracts.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
// 256 accumulators = 16 zmm registers; a running per-lane minimum (first index wins per lane),
// then the smallest value across lanes and the lowest index holding it.
QV_AVX512 static uint32_t nearest_256_avx512(const float* x, const float* ct, const float* norms, size_t d,
                                             float* score) {
  __m512 acc[16];
  for (int u = 0; u < 16; ++u) acc[u] = _mm512_setzero_ps();
  for (size_t t = 0; t < d; ++t) {
    const __m512 xv = _mm512_set1_ps(x[t]);
    const float* row = ct + t * kCodebookSize;
    for (int u = 0; u < 16; ++u) acc[u] = _mm512_fmadd_ps(xv, _mm512_loadu_ps(row + 16 * u), acc[u]);
  }
  const __m512 m2 = _mm512_set1_ps(-2.0f);
  const __m512i lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  __m512 best = _mm512_fmadd_ps(m2, acc[0], _mm512_loadu_ps(norms));
  __m512i idx = lane;
  for (int u = 1; u < 16; ++u) {
    const __m512 v = _mm512_fmadd_ps(m2, acc[u], _mm512_loadu_ps(norms + 16 * u));
    const __mmask16 lt = _mm512_cmp_ps_mask(v, best, _CMP_LT_OQ);
    best = _mm512_mask_mov_ps(best, lt, v);
    idx = _mm512_mask_mov_epi32(idx, lt, _mm512_add_epi32(lane, _mm512_set1_epi32(16 * u)));
  }
  const float mn = _mm512_reduce_min_ps(best);
  const __mmask16 eq = _mm512_cmp_ps_mask(best, _mm512_set1_ps(mn), _CMP_EQ_OQ);
  *score = mn;
  return static_cast<uint32_t>(_mm512_mask_reduce_min_epi32(eq, idx));
}

#pragma GCC diagnostic pop

// Four passes of 64 centroids (8 ymm accumulators each, so nothing spills).
QV_AVX2 static uint32_t nearest_256_avx2(const float* x, const float* ct, const float* norms, size_t d,
                                         float* score) {
  const __m256 m2 = _mm256_set1_ps(-2.0f);
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  __m256 best = _mm256_set1_ps(std::numeric_limits<float>::infinity());
  __m256i idx = _mm256_setzero_si256();
  for (int quarter = 0; quarter < 4; ++quarter) {
    __m256 acc[8];
    for (int u = 0; u < 8; ++u) acc[u] = _mm256_setzero_ps();
    for (size_t t = 0; t < d; ++t) {
      const __m256 xv = _mm256_set1_ps(x[t]);
      const float* row = ct + t * kCodebookSize + 64 * quarter;
      for (int u = 0; u < 8; ++u) acc[u] = _mm256_fmadd_ps(xv, _mm256_loadu_ps(row + 8 * u), acc[u]);
    }
    for (int u = 0; u < 8; ++u) {
      const int base = 64 * quarter + 8 * u;
      const __m256 v = _mm256_fmadd_ps(m2, acc[u], _mm256_loadu_ps(norms + base));
      const __m256 lt = _mm256_cmp_ps(v, best, _CMP_LT_OQ);
      best = _mm256_blendv_ps(best, v, lt);
      idx = _mm256_blendv_epi8(idx, _mm256_add_epi32(lane, _mm256_set1_epi32(base)), _mm256_castps_si256(lt));
    }
  }
  alignas(32) float bv[8];
  alignas(32) int32_t bi[8];
  _mm256_store_ps(bv, best);
  _mm256_store_si256(reinterpret_cast<__m256i*>(bi), idx);
  float mn = bv[0];
  int32_t arg = bi[0];
  for (int l = 1; l < 8; ++l)
    if (bv[l] < mn || (bv[l] == mn && bi[l] < arg)) {
      mn = bv[l];
      arg = bi[l];
    }
  *score = mn;
  return static_cast<uint32_t>(arg);
}

static const ScanKernels kAvx2 = {"avx2", lut_add_avx2, ip_table_avx2, scan_block_avx2, nearest_256_avx2};
static const ScanKernels kAvx512 = {"avx512", lut_add_avx512, ip_table_avx512, scan_block_avx512, nearest_256_avx512};
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
