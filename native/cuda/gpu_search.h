// GPU search for the CUDA build (QUIVER_CUDA): plain C++ interface over the kernels in
// native/cuda/*.cu, so that native/napi/gpu_cuda.cpp needs no CUDA headers. Device copies are
// read-only: built once from host data, then searched by batches of queries.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "common/format.h"
#include "common/status.h"
#include "ivfpq/ivfpq_index.h"

namespace qv {
namespace cuda {

struct DeviceInfo {
  bool available = false;
  std::string name;
  size_t memory_bytes = 0;
  std::string reason;  // why not available
};
DeviceInfo device_info();

// The largest k the GPU selection supports (one block-wide bitonic buffer per query).
constexpr uint32_t kGpuTopKMax = 1024;

// Exact k-NN: tiled distances (64 x 64 register-blocked tiles) and a block-wide top-k per query.
class FlatGpu {
 public:
  static Status create(uint32_t dim, Metric metric, const float* vectors, size_t n, const uint32_t* labels,
                       std::unique_ptr<FlatGpu>* out);
  ~FlatGpu();
  Status search(const float* queries, size_t nq, uint32_t k, uint32_t* out_labels, float* out_distances);
  uint32_t dim() const { return dim_; }

 private:
  FlatGpu() = default;
  uint32_t dim_ = 0;
  Metric metric_ = Metric::L2;
  size_t n_ = 0;
  float* vectors_ = nullptr;  // device: n x dim (normalized for cosine)
  float* norms_ = nullptr;    // device: |v|^2
  uint32_t* labels_ = nullptr;
};

// IVF-PQ on a copy of a CPU-trained index: coarse distances + top-nprobe, then one block per
// (query, probed list) that builds the list's LUT in shared memory, scans its codes and keeps a
// top-k, then a final top-k per query over its nprobe * k candidates.
class IvfPqGpu {
 public:
  static Status create(const IvfPqSnapshot& snap, std::unique_ptr<IvfPqGpu>* out);
  ~IvfPqGpu();
  Status search(const float* queries, size_t nq, uint32_t k, uint32_t nprobe, uint32_t* out_labels,
                float* out_distances);
  uint32_t dim() const { return dim_; }

 private:
  IvfPqGpu() = default;
  uint32_t dim_ = 0, nlist_ = 0, m_ = 0, dsub_ = 0;
  Metric metric_ = Metric::L2;
  size_t entries_ = 0;
  float* centroids_ = nullptr;   // nlist x dim
  float* cnorms_ = nullptr;      // nlist
  float* codebooks_ = nullptr;   // m x 256 x dsub
  uint32_t* offsets_ = nullptr;  // nlist + 1
  uint32_t* labels_ = nullptr;   // entries
  uint8_t* codes_ = nullptr;     // entries x m
};

}  // namespace cuda
}  // namespace qv
