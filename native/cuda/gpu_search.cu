// Exact and IVF-PQ batch search on the GPU (see gpu_search.h). Every CUDA error becomes a Status
// (out of device memory: RESOURCE_EXHAUSTED; anything else: INTERNAL); nothing here throws.
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "cuda/gpu_search.h"
#include "distance/distance.h"
#include "cuda/kernels.cuh"

namespace qv {
namespace cuda {

namespace {

Status cuda_status(cudaError_t e, const char* what) {
  if (e == cudaSuccess) return Status::ok();
  cudaGetLastError();  // clear the sticky-free error state
  Code c = e == cudaErrorMemoryAllocation ? Code::ResourceExhausted : Code::Internal;
  return Status(c, std::string("CUDA ") + what + ": " + cudaGetErrorString(e));
}
#define QV_CUDA(expr, what) QV_RETURN_IF_ERROR(cuda_status((expr), (what)))

// A device buffer freed on scope exit (temporaries of one search call).
template <typename T>
struct DeviceBuffer {
  T* p = nullptr;
  DeviceBuffer() = default;
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  ~DeviceBuffer() {
    if (p) cudaFree(p);
  }
  Status alloc(size_t n) {
    return cuda_status(cudaMalloc(reinterpret_cast<void**>(&p), std::max<size_t>(n, 1) * sizeof(T)), "cudaMalloc");
  }
};

template <typename T>
Status upload(T** dst, const T* src, size_t n) {
  QV_CUDA(cudaMalloc(reinterpret_cast<void**>(dst), std::max<size_t>(n, 1) * sizeof(T)), "cudaMalloc");
  if (n) QV_CUDA(cudaMemcpy(*dst, src, n * sizeof(T), cudaMemcpyHostToDevice), "cudaMemcpy to device");
  return Status::ok();
}

template <typename T>
void release(T*& p) {
  if (p) cudaFree(p);
  p = nullptr;
}

Status launched(const char* what) {
  QV_CUDA(cudaGetLastError(), what);
  QV_CUDA(cudaDeviceSynchronize(), what);
  return Status::ok();
}

void normalize_host(std::vector<float>* v, size_t n, uint32_t dim) {
  for (size_t i = 0; i < n; ++i) normalize_f32(v->data() + i * dim, v->data() + i * dim, dim);
}

std::vector<float> norms_host(const float* v, size_t n, uint32_t dim) {
  std::vector<float> out(n);
  for (size_t i = 0; i < n; ++i) {
    double s = 0;
    for (uint32_t t = 0; t < dim; ++t) s += double(v[i * dim + t]) * v[i * dim + t];
    out[i] = float(s);
  }
  return out;
}

// Copies cnt query rows to the device (normalized for cosine) with their squared norms.
Status upload_queries(const float* queries, size_t cnt, uint32_t dim, Metric metric, float* dq, float* dqn) {
  std::vector<float> q(queries, queries + cnt * dim);
  if (metric == Metric::Cosine) normalize_host(&q, cnt, dim);
  std::vector<float> qn = norms_host(q.data(), cnt, dim);
  QV_CUDA(cudaMemcpy(dq, q.data(), q.size() * sizeof(float), cudaMemcpyHostToDevice), "cudaMemcpy queries");
  QV_CUDA(cudaMemcpy(dqn, qn.data(), cnt * sizeof(float), cudaMemcpyHostToDevice), "cudaMemcpy norms");
  return Status::ok();
}

// ---------------------------------------------------------------------------------------------
// Kernels

constexpr int kTile = 64;  // 64 x 64 outputs per block of 16 x 16 threads (4 x 4 per thread)
constexpr int kChunk = 16;  // coordinates per shared-memory stage

// out[q * n + i] = distance of query q (rows of Q, nq of them) to row i of B (n rows), dimension d.
// l2: |q|^2 + |b|^2 - 2 q.b (clamped at 0); otherwise 1 - q.b (ip, and cosine on unit vectors).
__global__ void distance_tiles(const float* __restrict__ Q, const float* __restrict__ qn, int nq,
                               const float* __restrict__ B, const float* __restrict__ bn, int n, int d, int l2,
                               float* __restrict__ out) {
  __shared__ float As[kChunk][kTile + 1];
  __shared__ float Bs[kChunk][kTile + 1];
  const int tx = threadIdx.x, ty = threadIdx.y, tid = ty * 16 + tx;
  const int q0 = blockIdx.y * kTile, i0 = blockIdx.x * kTile;
  float acc[4][4];
#pragma unroll
  for (int u = 0; u < 4; ++u)
#pragma unroll
    for (int v = 0; v < 4; ++v) acc[u][v] = 0.0f;
  for (int t0 = 0; t0 < d; t0 += kChunk) {
    for (int e = tid; e < kTile * kChunk; e += 256) {
      const int row = e / kChunk, kk = e % kChunk, t = t0 + kk;
      As[kk][row] = (q0 + row < nq && t < d) ? Q[size_t(q0 + row) * d + t] : 0.0f;
      Bs[kk][row] = (i0 + row < n && t < d) ? B[size_t(i0 + row) * d + t] : 0.0f;
    }
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < kChunk; ++kk) {
      float a[4], b[4];
#pragma unroll
      for (int u = 0; u < 4; ++u) {
        a[u] = As[kk][ty + 16 * u];
        b[u] = Bs[kk][tx + 16 * u];
      }
#pragma unroll
      for (int u = 0; u < 4; ++u)
#pragma unroll
        for (int v = 0; v < 4; ++v) acc[u][v] = fmaf(a[u], b[v], acc[u][v]);
    }
    __syncthreads();
  }
#pragma unroll
  for (int u = 0; u < 4; ++u) {
#pragma unroll
    for (int v = 0; v < 4; ++v) {
      const int q = q0 + ty + 16 * u, i = i0 + tx + 16 * v;
      if (q < nq && i < n) out[size_t(q) * n + i] = l2 ? fmaxf(0.0f, qn[q] + bn[i] - 2.0f * acc[u][v]) : 1.0f - acc[u][v];
    }
  }
}

// Per row (one block each) of D (rows x n): the k smallest. Labels: labels[i] when label_stride
// is 0 (one label array for every row), labels[row * n + i] when it is n, or i when labels is
// null. Entries labelled kNoLabel are skipped. Output rows of k, nearest first, INFINITY/kNoLabel
// where fewer than k exist.
__global__ void select_rows(const float* __restrict__ D, int n, const uint32_t* __restrict__ labels, int label_stride,
                            int k, uint32_t* __restrict__ out_l, float* __restrict__ out_d) {
  __shared__ TopKShared s;
  BlockTopK top;
  top.init(s.d, s.l, &s.count, &s.thresh, k);
  const size_t row = blockIdx.x;
  const float* drow = D + row * n;
  const uint32_t* lrow = labels ? labels + row * size_t(label_stride) : nullptr;
  for (int b = 0; b < n; b += blockDim.x) {
    const int i = b + threadIdx.x;
    bool valid = i < n;
    float dist = valid ? drow[i] : 0.0f;
    uint32_t lab = valid ? (lrow ? lrow[i] : uint32_t(i)) : kNoLabel;
    valid = valid && lab != kNoLabel;
    top.offer(valid, dist, lab);
  }
  top.finish();
  for (int j = threadIdx.x; j < k; j += blockDim.x) {
    out_l[row * k + j] = s.l[j];
    out_d[row * k + j] = s.l[j] == kNoLabel ? INFINITY : s.d[j];
  }
}

// One block per (probed list p, query q): residual of q against the list's centroid, the list's
// look-up table (m x 256) in shared memory, a scan of its codes, the list's top-k into cand.
//   l2:  LUT[j][c] = |r_j - p_jc|^2 with r = q - y_C, so |q - y_C - y_R|^2 = sum_j LUT[j][k_j]
//   ip:  LUT[j][c] = -<q_j, p_jc>, and 1 - <q, x> ~ (1 - <q, y_C>) + sum_j LUT[j][k_j]
// Dynamic shared memory: m * 256 floats (LUT) then dpad floats (residual).
__global__ void scan_lists(const float* __restrict__ Q, int dim, int dpad, int m, int dsub, int l2,
                           const float* __restrict__ centroids, const float* __restrict__ codebooks,
                           const uint32_t* __restrict__ offsets, const uint32_t* __restrict__ labels,
                           const uint8_t* __restrict__ codes, const uint32_t* __restrict__ probes,
                           const float* __restrict__ probe_d, int nprobe, int k, uint32_t* __restrict__ cand_l,
                           float* __restrict__ cand_d) {
  extern __shared__ float dyn[];
  float* lut = dyn;
  float* r = dyn + m * 256;
  __shared__ TopKShared s;
  const int p = blockIdx.x, q = blockIdx.y;
  const size_t slot = size_t(q) * nprobe + p;
  const uint32_t list = probes[slot];
  BlockTopK top;
  top.init(s.d, s.l, &s.count, &s.thresh, k);
  if (list != kNoLabel) {
    const float* qv = Q + size_t(q) * dim;
    const float* c = centroids + size_t(list) * dim;
    for (int t = threadIdx.x; t < dpad; t += blockDim.x) r[t] = t < dim ? (l2 ? qv[t] - c[t] : qv[t]) : 0.0f;
    __syncthreads();
    for (int idx = threadIdx.x; idx < m * 256; idx += blockDim.x) {
      const int j = idx >> 8;
      const float* cw = codebooks + size_t(idx) * dsub;
      const float* rj = r + j * dsub;
      float acc = 0.0f;
      for (int t = 0; t < dsub; ++t) acc = l2 ? fmaf(rj[t] - cw[t], rj[t] - cw[t], acc) : fmaf(rj[t], cw[t], acc);
      lut[idx] = l2 ? acc : -acc;
    }
    __syncthreads();
  }
  // Block-uniform loop bounds (list is the same for every thread of the block).
  const uint32_t begin = list != kNoLabel ? offsets[list] : 0, end = list != kNoLabel ? offsets[list + 1] : 0;
  const float offset = l2 ? 0.0f : probe_d[slot];
  for (uint32_t b = begin; b < end; b += blockDim.x) {
    const uint32_t e = b + threadIdx.x;
    const bool valid = e < end;
    float dist = offset;
    if (valid) {
      const uint8_t* code = codes + size_t(e) * m;
      for (int j = 0; j < m; ++j) dist += lut[j * 256 + code[j]];
    }
    top.offer(valid, dist, valid ? labels[e] : kNoLabel);
  }
  top.finish();
  for (int j = threadIdx.x; j < k; j += blockDim.x) {
    cand_l[slot * k + j] = s.l[j];
    cand_d[slot * k + j] = s.d[j];
  }
}

}  // namespace

// ---------------------------------------------------------------------------------------------

DeviceInfo device_info() {
  DeviceInfo info;
  int count = 0;
  cudaError_t e = cudaGetDeviceCount(&count);
  if (e != cudaSuccess) {
    cudaGetLastError();
    info.reason = std::string("no CUDA device: ") + cudaGetErrorString(e);
    return info;
  }
  if (count == 0) {
    info.reason = "no CUDA device found";
    return info;
  }
  cudaDeviceProp prop;
  e = cudaGetDeviceProperties(&prop, 0);
  if (e != cudaSuccess) {
    cudaGetLastError();
    info.reason = std::string("cannot query device 0: ") + cudaGetErrorString(e);
    return info;
  }
  info.available = true;
  info.name = prop.name;
  info.memory_bytes = prop.totalGlobalMem;
  return info;
}

// ----- exact --------------------------------------------------------------------------------

Status FlatGpu::create(uint32_t dim, Metric metric, const float* vectors, size_t n, const uint32_t* labels,
                       std::unique_ptr<FlatGpu>* out) {
  if (n == 0 || n > size_t(std::numeric_limits<int>::max())) return invalid_argument("GPU flat index needs 1..2^31-1 vectors");
  std::unique_ptr<FlatGpu> g(new FlatGpu());
  g->dim_ = dim;
  g->metric_ = metric;
  g->n_ = n;
  std::vector<float> v(vectors, vectors + n * dim);
  if (metric == Metric::Cosine) normalize_host(&v, n, dim);
  std::vector<float> norms = norms_host(v.data(), n, dim);
  std::vector<uint32_t> lab(n);
  for (size_t i = 0; i < n; ++i) lab[i] = labels ? labels[i] : uint32_t(i);
  QV_RETURN_IF_ERROR(upload(&g->vectors_, v.data(), v.size()));
  QV_RETURN_IF_ERROR(upload(&g->norms_, norms.data(), n));
  QV_RETURN_IF_ERROR(upload(&g->labels_, lab.data(), n));
  *out = std::move(g);
  return Status::ok();
}

FlatGpu::~FlatGpu() {
  release(vectors_);
  release(norms_);
  release(labels_);
}

Status FlatGpu::search(const float* queries, size_t nq, uint32_t k, uint32_t* out_labels, float* out_distances) {
  if (k == 0 || k > kGpuTopKMax) return invalid_argument("GPU search: k must be in 1..1024");
  // Queries per pass: the distance matrix of one pass stays under 512 MiB.
  const size_t per = std::max<size_t>(1, std::min<size_t>(8192, (size_t(512) << 20) / (n_ * sizeof(float))));
  const size_t qb = std::min(per, nq);
  DeviceBuffer<float> dq, dqn, dd, od;
  DeviceBuffer<uint32_t> ol;
  QV_RETURN_IF_ERROR(dq.alloc(qb * dim_));
  QV_RETURN_IF_ERROR(dqn.alloc(qb));
  QV_RETURN_IF_ERROR(dd.alloc(qb * n_));
  QV_RETURN_IF_ERROR(ol.alloc(qb * k));
  QV_RETURN_IF_ERROR(od.alloc(qb * k));
  const int l2 = metric_ == Metric::L2;
  for (size_t b = 0; b < nq; b += qb) {
    const size_t cnt = std::min(qb, nq - b);
    QV_RETURN_IF_ERROR(upload_queries(queries + b * dim_, cnt, dim_, metric_, dq.p, dqn.p));
    dim3 grid(unsigned((n_ + kTile - 1) / kTile), unsigned((cnt + kTile - 1) / kTile));
    distance_tiles<<<grid, dim3(16, 16)>>>(dq.p, dqn.p, int(cnt), vectors_, norms_, int(n_), int(dim_), l2, dd.p);
    QV_RETURN_IF_ERROR(launched("distance kernel"));
    select_rows<<<unsigned(cnt), kSelectThreads>>>(dd.p, int(n_), labels_, 0, int(k), ol.p, od.p);
    QV_RETURN_IF_ERROR(launched("top-k kernel"));
    QV_CUDA(cudaMemcpy(out_labels + b * k, ol.p, cnt * k * sizeof(uint32_t), cudaMemcpyDeviceToHost), "cudaMemcpy labels");
    QV_CUDA(cudaMemcpy(out_distances + b * k, od.p, cnt * k * sizeof(float), cudaMemcpyDeviceToHost), "cudaMemcpy distances");
  }
  return Status::ok();
}

// ----- IVF-PQ -------------------------------------------------------------------------------

Status IvfPqGpu::create(const IvfPqSnapshot& snap, std::unique_ptr<IvfPqGpu>* out) {
  std::unique_ptr<IvfPqGpu> g(new IvfPqGpu());
  g->dim_ = snap.dim;
  g->nlist_ = snap.nlist;
  g->m_ = snap.m;
  g->dsub_ = snap.dsub;
  g->metric_ = snap.metric;
  g->entries_ = snap.labels.size();
  // The scan keeps the LUT and the residual in shared memory.
  int dev = 0, optin = 0;
  QV_CUDA(cudaGetDevice(&dev), "cudaGetDevice");
  QV_CUDA(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev), "cudaDeviceGetAttribute");
  const size_t dyn = (size_t(snap.m) * 256 + size_t(snap.m) * snap.dsub) * sizeof(float);
  if (dyn + sizeof(TopKShared) > size_t(optin))
    return invalid_argument("GPU ivfpq: m = " + std::to_string(snap.m) + " needs more shared memory than the device has");
  QV_CUDA(cudaFuncSetAttribute(scan_lists, cudaFuncAttributeMaxDynamicSharedMemorySize, int(dyn)), "cudaFuncSetAttribute");
  std::vector<float> cn = norms_host(snap.centroids.data(), snap.nlist, snap.dim);
  QV_RETURN_IF_ERROR(upload(&g->centroids_, snap.centroids.data(), snap.centroids.size()));
  QV_RETURN_IF_ERROR(upload(&g->cnorms_, cn.data(), cn.size()));
  QV_RETURN_IF_ERROR(upload(&g->codebooks_, snap.codebooks.data(), snap.codebooks.size()));
  QV_RETURN_IF_ERROR(upload(&g->offsets_, snap.list_offsets.data(), snap.list_offsets.size()));
  QV_RETURN_IF_ERROR(upload(&g->labels_, snap.labels.data(), snap.labels.size()));
  QV_RETURN_IF_ERROR(upload(&g->codes_, snap.codes.data(), snap.codes.size()));
  *out = std::move(g);
  return Status::ok();
}

IvfPqGpu::~IvfPqGpu() {
  release(centroids_);
  release(cnorms_);
  release(codebooks_);
  release(offsets_);
  release(labels_);
  release(codes_);
}

Status IvfPqGpu::search(const float* queries, size_t nq, uint32_t k, uint32_t nprobe, uint32_t* out_labels,
                        float* out_distances) {
  if (k == 0 || k > kGpuTopKMax) return invalid_argument("GPU search: k must be in 1..1024");
  if (nprobe == 0) return invalid_argument("GPU search: nprobe must be at least 1");
  nprobe = std::min({nprobe, nlist_, kGpuTopKMax});
  const int l2 = metric_ != Metric::IP;  // cosine: L2 on unit vectors, halved at the end
  const uint32_t dpad = m_ * dsub_;
  const size_t dyn = (size_t(m_) * 256 + dpad) * sizeof(float);
  // Queries per pass: coarse matrix + candidates under 256 MiB.
  const size_t per_query = size_t(nlist_) * 4 + size_t(nprobe) * (8 + size_t(k) * 8);
  const size_t qb = std::min(nq, std::max<size_t>(1, std::min<size_t>(8192, (size_t(256) << 20) / per_query)));
  DeviceBuffer<float> dq, dqn, dcoarse, dprobe_d, dcand_d, od;
  DeviceBuffer<uint32_t> dprobes, dcand_l, ol;
  QV_RETURN_IF_ERROR(dq.alloc(qb * dim_));
  QV_RETURN_IF_ERROR(dqn.alloc(qb));
  QV_RETURN_IF_ERROR(dcoarse.alloc(qb * nlist_));
  QV_RETURN_IF_ERROR(dprobes.alloc(qb * nprobe));
  QV_RETURN_IF_ERROR(dprobe_d.alloc(qb * nprobe));
  QV_RETURN_IF_ERROR(dcand_l.alloc(qb * nprobe * k));
  QV_RETURN_IF_ERROR(dcand_d.alloc(qb * nprobe * k));
  QV_RETURN_IF_ERROR(ol.alloc(qb * k));
  QV_RETURN_IF_ERROR(od.alloc(qb * k));
  for (size_t b = 0; b < nq; b += qb) {
    const size_t cnt = std::min(qb, nq - b);
    QV_RETURN_IF_ERROR(upload_queries(queries + b * dim_, cnt, dim_, metric_, dq.p, dqn.p));
    // 1. coarse distances and the nprobe nearest lists of each query
    dim3 grid(unsigned((nlist_ + kTile - 1) / kTile), unsigned((cnt + kTile - 1) / kTile));
    distance_tiles<<<grid, dim3(16, 16)>>>(dq.p, dqn.p, int(cnt), centroids_, cnorms_, int(nlist_), int(dim_), l2, dcoarse.p);
    QV_RETURN_IF_ERROR(launched("coarse distance kernel"));
    select_rows<<<unsigned(cnt), kSelectThreads>>>(dcoarse.p, int(nlist_), nullptr, 0, int(nprobe), dprobes.p, dprobe_d.p);
    QV_RETURN_IF_ERROR(launched("probe selection kernel"));
    // 2. LUT + scan + top-k per (query, list)
    scan_lists<<<dim3(nprobe, unsigned(cnt)), kSelectThreads, dyn>>>(
        dq.p, int(dim_), int(dpad), int(m_), int(dsub_), l2, centroids_, codebooks_, offsets_, labels_, codes_, dprobes.p,
        dprobe_d.p, int(nprobe), int(k), dcand_l.p, dcand_d.p);
    QV_RETURN_IF_ERROR(launched("list scan kernel"));
    // 3. top-k of each query's nprobe * k candidates
    select_rows<<<unsigned(cnt), kSelectThreads>>>(dcand_d.p, int(nprobe * k), dcand_l.p, int(nprobe * k), int(k), ol.p, od.p);
    QV_RETURN_IF_ERROR(launched("merge kernel"));
    QV_CUDA(cudaMemcpy(out_labels + b * k, ol.p, cnt * k * sizeof(uint32_t), cudaMemcpyDeviceToHost), "cudaMemcpy labels");
    QV_CUDA(cudaMemcpy(out_distances + b * k, od.p, cnt * k * sizeof(float), cudaMemcpyDeviceToHost), "cudaMemcpy distances");
  }
  if (metric_ == Metric::Cosine)
    for (size_t i = 0; i < nq * k; ++i) out_distances[i] *= 0.5f;  // |x - y|^2 / 2 = 1 - cos
  return Status::ok();
}

}  // namespace cuda
}  // namespace qv
