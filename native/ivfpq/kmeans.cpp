#include "ivfpq/kmeans.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "common/assert.h"
#include "common/thread_pool.h"
#include "distance/distance.h"
#include "ivfpq/scan.h"

namespace qv {
namespace ivfpq {

namespace {
constexpr size_t kPointBlock = 128;   // rows of x kept hot while centroid blocks stream past
constexpr size_t kCentroidBlock = 16;  // rows of c per inner block (4 register tiles of 4)

// Calls tile(i0, j0, dots[16]) for every 4x4 tile of rows [xb, xe) of x against rows [cb, ce) of c.
// Rows past the end are clamped to the last row; the caller ignores their results.
template <typename Tile>
inline void for_tiles(const float* x, size_t xb, size_t xe, const float* c, size_t cb, size_t ce, size_t d,
                      const Kernels& kern, Tile&& tile) {
  float dots[16];
  for (size_t i = xb; i < xe; i += 4) {
    const float* xr[4];
    for (int a = 0; a < 4; ++a) xr[a] = x + std::min(i + a, xe - 1) * d;
    for (size_t j = cb; j < ce; j += 4) {
      const float* cr[4];
      for (int b = 0; b < 4; ++b) cr[b] = c + std::min(j + b, ce - 1) * d;
      kern.ip_f32_4x4(xr, cr, d, dots);
      tile(i, j, dots);
    }
  }
}
}  // namespace

void row_norms(const float* x, size_t n, size_t d, float* out) {
  const Kernels& kern = kernels();
  for (size_t i = 0; i < n; ++i) out[i] = kern.ip_f32(x + i * d, x + i * d, d);
}

namespace {
// Short rows against exactly 256 centroids (the PQ codebooks): one register-resident pass per row
// (ScanKernels::nearest_256); a 4x4 tile of 16-float rows would spend more on horizontal sums.
void assign_nearest_256(const float* x, size_t n, size_t d, const float* c, const float* c_norms, int threads,
                        uint32_t* out_idx, float* out_dist) {
  const ScanKernels& sk = scan_kernels();
  std::vector<float> ct(d * kCodebookSize);
  for (size_t j = 0; j < kCodebookSize; ++j)
    for (size_t t = 0; t < d; ++t) ct[t * kCodebookSize + j] = c[j * d + t];
  const Kernels& kern = kernels();
  parallel_for(n, threads, 1024, [&](size_t b, size_t e, int) {
    for (size_t i = b; i < e; ++i) {
      float score;
      out_idx[i] = sk.nearest_256(x + i * d, ct.data(), c_norms, d, &score);
      if (out_dist) out_dist[i] = std::max(0.0f, score + kern.ip_f32(x + i * d, x + i * d, d));
    }
  });
}
}  // namespace

void assign_nearest(const float* x, size_t n, size_t d, const float* c, const float* c_norms, size_t k,
                    int threads, uint32_t* out_idx, float* out_dist) {
  QV_ASSERT(k > 0);
  if (k == kCodebookSize && d <= 64) return assign_nearest_256(x, n, d, c, c_norms, threads, out_idx, out_dist);
  const Kernels& kern = kernels();
  // parallel_for runs the whole range in one call when it uses one thread: split it here.
  parallel_for(n, threads, kPointBlock, [&](size_t rb, size_t re, int) {
   for (size_t xb = rb; xb < re; xb += kPointBlock) {
    const size_t xe = std::min(re, xb + kPointBlock);
    float best[kPointBlock];
    uint32_t arg[kPointBlock];
    for (size_t i = 0; i < xe - xb; ++i) {
      best[i] = std::numeric_limits<float>::infinity();
      arg[i] = 0;
    }
    for (size_t cb = 0; cb < k; cb += kCentroidBlock) {
      size_t ce = std::min(k, cb + kCentroidBlock);
      for_tiles(x, xb, xe, c, cb, ce, d, kern, [&](size_t i, size_t j, const float* dots) {
        for (size_t a = 0; a < 4 && i + a < xe; ++a) {
          for (size_t b = 0; b < 4 && j + b < ce; ++b) {
            // |x|^2 is the same for every centroid: compare |c|^2 - 2 x.c only.
            float v = c_norms[j + b] - 2.0f * dots[a * 4 + b];
            size_t r = i + a - xb;
            if (v < best[r]) {
              best[r] = v;
              arg[r] = static_cast<uint32_t>(j + b);
            }
          }
        }
      });
    }
    for (size_t i = xb; i < xe; ++i) {
      out_idx[i] = arg[i - xb];
      if (out_dist) out_dist[i] = std::max(0.0f, best[i - xb] + kern.ip_f32(x + i * d, x + i * d, d));
    }
   }
  });
}

void dot_matrix(const float* x, size_t n, size_t d, const float* c, size_t k, float* out) {
  const Kernels& kern = kernels();
  for (size_t xb = 0; xb < n; xb += kPointBlock) {
    size_t xe = std::min(n, xb + kPointBlock);
    for (size_t cb = 0; cb < k; cb += kCentroidBlock) {
      size_t ce = std::min(k, cb + kCentroidBlock);
      for_tiles(x, xb, xe, c, cb, ce, d, kern, [&](size_t i, size_t j, const float* dots) {
        for (size_t a = 0; a < 4 && i + a < xe; ++a)
          for (size_t b = 0; b < 4 && j + b < ce; ++b) out[(i + a) * k + j + b] = dots[a * 4 + b];
      });
    }
  }
}

namespace {

// k-means++ seeding on the rows `pick` of x: the first centre uniformly, each next one with
// probability proportional to its squared distance to the nearest centre chosen so far.
void kmeanspp(const float* x, const std::vector<size_t>& pick, size_t d, size_t k, Rng& rng, int threads,
              float* out) {
  const Kernels& kern = kernels();
  const size_t s = pick.size();
  std::vector<float> mind(s, std::numeric_limits<float>::infinity());
  size_t chosen = rng.below(s);
  for (size_t c = 0; c < k; ++c) {
    const float* cen = x + pick[chosen] * d;
    std::copy(cen, cen + d, out + c * d);
    if (c + 1 == k) break;
    parallel_for(s, s * d >= (1u << 18) ? threads : 1, 512, [&](size_t b, size_t e, int) {
      for (size_t i = b; i < e; ++i) mind[i] = std::min(mind[i], kern.l2_f32(x + pick[i] * d, cen, d));
    });
    double total = 0;
    for (float v : mind) total += v;
    if (!(total > 0)) {  // every point coincides with a centre: any point will do
      chosen = rng.below(s);
      continue;
    }
    double r = rng.uniform() * total, acc = 0;
    chosen = s - 1;
    for (size_t i = 0; i < s; ++i) {
      acc += mind[i];
      if (acc > r && mind[i] > 0) {
        chosen = i;
        break;
      }
    }
  }
}

}  // namespace

void kmeans(const float* x, size_t n, size_t d, size_t k, int iterations, uint64_t seed, int threads,
            const KmeansProgress& progress, float* out) {
  QV_ASSERT(k > 0 && n >= k);
  Rng rng(seed);
  // Seeding sample: enough points per centre for a good spread, few enough that the k sequential
  // passes of k-means++ stay cheap (they are memory-bound).
  size_t s = std::min(n, std::max<size_t>(4 * k, 1024));
  std::vector<size_t> pick(n);
  for (size_t i = 0; i < n; ++i) pick[i] = i;
  for (size_t i = 0; i < s; ++i) std::swap(pick[i], pick[i + rng.below(n - i)]);  // partial Fisher-Yates
  pick.resize(s);
  kmeanspp(x, pick, d, k, rng, threads, out);
  if (progress) progress(1.0 / (iterations + 1));

  std::vector<uint32_t> assign(n);
  std::vector<float> cn(k);
  std::vector<uint32_t> count(k), start(k + 1), order(n);
  for (int it = 0; it < iterations; ++it) {
    row_norms(out, k, d, cn.data());
    assign_nearest(x, n, d, out, cn.data(), k, threads, assign.data(), nullptr);
    // Counting sort of the points by centroid, then each centroid's mean in parallel.
    std::fill(count.begin(), count.end(), 0);
    for (size_t i = 0; i < n; ++i) ++count[assign[i]];
    start[0] = 0;
    for (size_t c = 0; c < k; ++c) start[c + 1] = start[c] + count[c];
    std::vector<uint32_t> fill(start.begin(), start.end() - 1);
    for (size_t i = 0; i < n; ++i) order[fill[assign[i]]++] = static_cast<uint32_t>(i);
    parallel_for(k, threads, 16, [&](size_t b, size_t e, int) {
      std::vector<double> sum(d);
      for (size_t c = b; c < e; ++c) {
        if (count[c] == 0) continue;
        std::fill(sum.begin(), sum.end(), 0.0);
        for (uint32_t p = start[c]; p < start[c + 1]; ++p) {
          const float* v = x + static_cast<size_t>(order[p]) * d;
          for (size_t t = 0; t < d; ++t) sum[t] += v[t];
        }
        for (size_t t = 0; t < d; ++t) out[c * d + t] = static_cast<float>(sum[t] / count[c]);
      }
    });
    // Empty clusters: split the largest cluster in two (deterministic: ties by lowest index).
    for (size_t c = 0; c < k; ++c) {
      if (count[c] != 0) continue;
      size_t big = 0;
      for (size_t j = 1; j < k; ++j)
        if (count[j] > count[big]) big = j;
      if (count[big] < 2) break;
      for (size_t t = 0; t < d; ++t) {
        float v = out[big * d + t];
        float eps = (t % 2 ? 1.0f : -1.0f) * (std::fabs(v) * 1e-3f + 1e-6f);
        out[c * d + t] = v + eps;
        out[big * d + t] = v - eps;
      }
      count[c] = count[big] / 2;
      count[big] -= count[c];
    }
    if (progress) progress(static_cast<double>(it + 2) / (iterations + 1));
  }
}

}  // namespace ivfpq
}  // namespace qv
