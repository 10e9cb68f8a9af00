// Distance kernels: f32 L2-squared, inner product and cosine distance; u8 and i8 L2/IP.
// One serial reference plus one variant per ISA (distance_avx2.cpp, distance_avx512.cpp,
// distance_neon.cpp), each compiled with target attributes, never a global -march. The table of
// the best level the CPU has is chosen once, at load (QUIVER_SIMD=serial|avx2|avx512|neon forces
// one; a level the CPU lacks is refused with an error, see dispatch_status()).
#pragma once
#include <cmath>
#include <cstddef>
#include <cstdint>

#include "common/status.h"

namespace qv {

enum class SimdLevel : int { Serial = 0, Avx2 = 1, Avx512 = 2, Neon = 3 };
const char* simd_level_name(SimdLevel l);

struct Kernels {
  SimdLevel level;
  float (*l2_f32)(const float* a, const float* b, size_t d);   // sum (a-b)^2
  float (*ip_f32)(const float* a, const float* b, size_t d);   // sum a*b
  float (*cos_f32)(const float* a, const float* b, size_t d);  // 1 - a.b/(|a||b|); 1 if either is 0
  uint32_t (*l2_u8)(const uint8_t* a, const uint8_t* b, size_t d);
  uint32_t (*ip_u8)(const uint8_t* a, const uint8_t* b, size_t d);
  uint32_t (*l2_i8)(const int8_t* a, const int8_t* b, size_t d);
  int32_t (*ip_i8)(const int8_t* a, const int8_t* b, size_t d);
  // One query against n contiguous rows of dimension d: out[i] = l2(q, base + i*d).
  void (*l2_f32_rows)(const float* q, const float* base, size_t n, size_t d, float* out);
  // Four dot products at once: out[j] = q . rows[j] (register-blocked, shares the loads of q).
  void (*ip_f32_x4)(const float* q, const float* const rows[4], size_t d, float out[4]);
  // Dot products of a block of 4 queries against 4 rows (4x4 register tile): out[i*4+j] = q_i.r_j.
  void (*ip_f32_4x4)(const float* const q[4], const float* const r[4], size_t d, float out[16]);
  // Plain sum of n floats: the read-bandwidth reference of `quiver bench kernels`.
  float (*sum_f32)(const float* a, size_t n);
  // sum a*b with the same bits at every level: 16 lanes (lane j takes the elements i = j mod 16
  // of the whole 16-blocks, in order, each by a fused multiply-add), then the tail and a fixed
  // reduction (fixed_lanes_finish). Slower than ip_f32 (one chain per lane group); it is what
  // builds that replicas must agree on use (the HNSW ip graph).
  float (*ip_f32_fixed)(const float* a, const float* b, size_t d);
  // l2_u8 of one query against n rows anywhere in memory: out[i] = l2_u8(q, rows[i], d). One call
  // per graph expansion instead of one per neighbour (the HNSW walk); exact integers, so the same
  // at every level.
  void (*l2_u8_many)(const uint8_t* q, const uint8_t* const* rows, size_t n, size_t d, uint32_t* out);
};

// The end of every ip_f32_fixed: the r < 16 tail elements into lanes 0..r-1 (fused, in order),
// then lanes summed pairwise 8, 4, 2, 1 apart. std::fma is correctly rounded wherever it runs.
inline float fixed_lanes_finish(float acc[16], const float* a, const float* b, size_t r) {
  for (size_t j = 0; j < r; ++j) acc[j] = std::fma(a[j], b[j], acc[j]);
  for (int w = 8; w >= 1; w /= 2)
    for (int j = 0; j < w; ++j) acc[j] = acc[j] + acc[j + w];
  return acc[0];
}

bool cpu_has(SimdLevel l);
// The kernels of one level, or nullptr where the CPU (or the build) lacks it.
const Kernels* kernels_for(SimdLevel l);
// The active table, chosen once at first use (best level, or QUIVER_SIMD).
const Kernels& kernels();
// Ok, or the reason QUIVER_SIMD could not be honoured (then kernels() falls back to the best level).
const Status& dispatch_status();
bool parse_simd_level(const char* s, SimdLevel* out);

// out = in / |in| (out may be in); a zero vector stays zero, and so does one shorter than 1/FLT_MAX. The one normalization that cosine
// indexes (flat, hnsw, ivfpq, the GPU copies) apply to stored vectors and queries alike.
void normalize_f32(const float* in, float* out, size_t d);
// 1 / |v| as normalize_f32 computes it (0 where it is no float: a zero vector, |v| < 1/FLT_MAX), so that out[i] = in[i] * inv_norm_f32(in)
// is bit for bit normalize_f32's output: indexes that keep a cosine vector as given keep this beside it.
float inv_norm_f32(const float* v, size_t d);

// Per-ISA tables (nullptr-safe: a variant that did not compile returns nullptr).
const Kernels* serial_kernels();
const Kernels* avx2_kernels();
const Kernels* avx512_kernels();
const Kernels* neon_kernels();

}  // namespace qv
