// Seeded k-means (k-means++ initialisation, Lloyd iterations) and the blocked nearest-centroid
// assignment that both training and encoding use. Pure computation: no locks, no I/O.
#pragma once
#include <cstddef>
#include <cstdint>
#include <functional>

namespace qv {
namespace ivfpq {

// SplitMix64: a tiny, portable, seeded generator (std:: distributions differ between libraries,
// and the same seed must give the same centroids everywhere).
class Rng {
 public:
  explicit Rng(uint64_t seed) : s_(seed) {}
  uint64_t next() {
    uint64_t z = (s_ += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  double uniform() { return (next() >> 11) * (1.0 / 9007199254740992.0); }  // [0, 1)
  size_t below(size_t n) { return static_cast<size_t>(uniform() * static_cast<double>(n)) % n; }

 private:
  uint64_t s_;
};

// Squared norms of n rows of dimension d.
void row_norms(const float* x, size_t n, size_t d, float* out);

// For each of the n rows of x, the nearest of the k rows of c (squared L2) and its distance.
// c_norms holds the squared norms of c. Blocked so that a block of centroids is reused across a
// block of points while both sit in cache: dist = |x|^2 - 2 x.c + |c|^2, dot products by 4x4
// register tiles. out_dist may be null.
void assign_nearest(const float* x, size_t n, size_t d, const float* c, const float* c_norms, size_t k,
                    int threads, uint32_t* out_idx, float* out_dist);

// All n x k dot products x_i . c_j into out (row-major, n x k). Same blocking as assign_nearest.
void dot_matrix(const float* x, size_t n, size_t d, const float* c, size_t k, float* out);

// Progress of one k-means run: fraction of this run in [0, 1].
using KmeansProgress = std::function<void(double)>;

// k-means of n >= k points of dimension d into k centroids (out: k x d). k-means++ seeds on a
// seeded subsample, then `iterations` Lloyd steps on all points. An emptied cluster takes half of
// the largest one (its centroid is split by a small symmetric perturbation), so no centroid is lost.
void kmeans(const float* x, size_t n, size_t d, size_t k, int iterations, uint64_t seed, int threads,
            const KmeansProgress& progress, float* out);

}  // namespace ivfpq
}  // namespace qv
