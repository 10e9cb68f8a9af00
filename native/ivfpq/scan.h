// IVF-PQ hot loops: look-up-table construction and the scan of PQ codes. One serial reference and
// AVX2 / AVX-512 variants (target attributes, never a global -march), picked once with the level
// of the distance kernels (kernels().level, so QUIVER_SIMD forces both).
//
// Code layout inside an inverted list: blocks of kScanBlock vectors, codes transposed per block,
//   block b, sub-quantizer j, lane l  ->  codes[(b * m + j) * kScanBlock + l]
// so the j-th codes of 16 vectors are one 16-byte row: a vector of indexes for one gather into
// the j-th 256-entry table. The last block of a list is padded with code 0 (its lanes ignored).
#pragma once
#include <cstddef>
#include <cstdint>

namespace qv {
namespace ivfpq {

constexpr size_t kScanBlock = 16;
constexpr size_t kCodebookSize = 256;  // 8-bit sub-quantizers

struct ScanKernels {
  const char* name;
  // out[i] = a[i] + scale * b[i], i < n
  void (*lut_add)(const float* a, const float* b, float scale, size_t n, float* out);
  // out[j*256 + c] = sum_t q[j*dsub + t] * cbt[(j*dsub + t)*256 + c]   (cbt: codebooks transposed)
  void (*ip_table)(const float* q, const float* cbt, size_t m, size_t dsub, float* out);
  // out[l] = sum_j lut[j*256 + codes[j*16 + l]], l < 16: one block of 16 vectors
  void (*scan_block)(const uint8_t* codes, size_t m, const float* lut, float* out);
  // The nearest of 256 centroids to x (dimension d): argmin_c norms[c] - 2 <x, c>, lowest index on
  // ties; ct holds the centroids transposed (d x 256). *score gets the minimum (|x - c|^2 - |x|^2).
  // Encoding and the codebook k-means: the 256 running dot products stay in registers.
  uint32_t (*nearest_256)(const float* x, const float* ct, const float* norms, size_t d, float* score);
};

const ScanKernels& scan_kernels();
// The serial reference (tests and QUIVER_SIMD=serial).
const ScanKernels& scan_kernels_serial();

}  // namespace ivfpq
}  // namespace qv
