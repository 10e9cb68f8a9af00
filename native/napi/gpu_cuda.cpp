// GPU entry points of the CUDA build (QUIVER_CUDA, built by cmake-js from native/CMakeLists.txt).
// The CPU build compiles this file to nothing; native/napi/gpu.cpp then registers no GPU function.
//
//   gpuInfo() -> {available, name?, memoryBytes?, reason?}
//   gpuFlatCreate(dim, metric, vectors: Float32Array, labels: Uint32Array | null) -> Promise<handle>
//   gpuFlatSearch(handle, queries: Float32Array, k) -> Promise<{labels, distances}>
//   gpuIvfPqCreate(nativeIndex) -> Promise<handle>    (a copy of a trained CPU IvfPqIndex)
//   gpuIvfPqSearch(handle, queries, k, nprobe) -> Promise<{labels, distances}>
//   gpuFree(handle)                                    (device memory is also freed by GC)
// src/native/gpu.ts is the typed face (GpuFlatIndex, GpuIvfPqIndex).
#ifdef QUIVER_CUDA
#include <cmath>
#include <memory>
#include <mutex>

#include "common/limits.h"
#include "cuda/gpu_search.h"
#include "ivfpq/ivfpq_index.h"
#include "napi/convert.h"
#include "napi/errors.h"
#include "napi/gpu.h"
#include "napi/index_wrap.h"

namespace qv {
namespace napi {

namespace {

// One GPU index; searches on it are serialized, gpuFree may run at any time.
struct GpuHandle {
  std::mutex mu;
  std::unique_ptr<cuda::FlatGpu> flat;
  std::unique_ptr<cuda::IvfPqGpu> ivf;
};

constexpr uint64_t kHandleTag = 0x5155495645524755ull;  // "QUIVERGU"
struct HandleBox {
  uint64_t tag = kHandleTag;
  std::shared_ptr<GpuHandle> h;
};

Napi::Value wrap_handle(Napi::Env env, std::shared_ptr<GpuHandle> h) {
  auto* box = new HandleBox();
  box->h = std::move(h);
  return Napi::External<HandleBox>::New(env, box, [](Napi::Env, HandleBox* b) { delete b; });
}

std::shared_ptr<GpuHandle> unwrap_handle(Napi::Env env, Napi::Value v) {
  if (!v.IsExternal()) throw_invalid(env, "not a GPU index handle");
  HandleBox* box = v.As<Napi::External<HandleBox>>().Data();
  if (box == nullptr || box->tag != kHandleTag) throw_invalid(env, "not a GPU index handle");
  return box->h;
}


class CreateWorker : public PromiseWorker {
 public:
  // Flat: vectors (+ labels); IVF-PQ: index.
  CreateWorker(Napi::Env env, uint32_t dim, Metric metric, std::vector<float> vectors, std::vector<uint32_t> labels,
               std::shared_ptr<Index> index)
      : PromiseWorker(env), dim_(dim), metric_(metric), vectors_(std::move(vectors)), labels_(std::move(labels)),
        index_(std::move(index)), h_(std::make_shared<GpuHandle>()) {}
  Status Run() override {
    if (index_) {
      auto* ivf = dynamic_cast<IvfPqIndex*>(index_.get());
      if (ivf == nullptr) return invalid_argument("gpuIvfPqCreate needs an ivfpq index");
      IvfPqSnapshot snap;
      QV_RETURN_IF_ERROR(ivf->snapshot(&snap));
      return cuda::IvfPqGpu::create(snap, &h_->ivf);
    }
    const size_t n = vectors_.size() / dim_;
    QV_RETURN_IF_ERROR(check_vectors(vectors_.data(), n, dim_, "vectors"));
    return cuda::FlatGpu::create(dim_, metric_, vectors_.data(), n, labels_.empty() ? nullptr : labels_.data(), &h_->flat);
  }
  Napi::Value Resolve(Napi::Env env) override { return wrap_handle(env, h_); }

 private:
  uint32_t dim_;
  Metric metric_;
  std::vector<float> vectors_;
  std::vector<uint32_t> labels_;
  std::shared_ptr<Index> index_;
  std::shared_ptr<GpuHandle> h_;
};

class SearchWorker : public PromiseWorker {
 public:
  SearchWorker(Napi::Env env, std::shared_ptr<GpuHandle> h, std::vector<float> queries, uint32_t k, uint32_t nprobe)
      : PromiseWorker(env), h_(std::move(h)), queries_(std::move(queries)), k_(k), nprobe_(nprobe) {}
  Status Run() override {
    std::lock_guard<std::mutex> lock(h_->mu);
    QV_RETURN_IF_ERROR(check_k(k_));
    uint32_t dim = h_->flat ? h_->flat->dim() : h_->ivf ? h_->ivf->dim() : 0;
    if (dim == 0) return failed_precondition("this GPU index was freed");
    if (queries_.empty() || queries_.size() % dim != 0) return invalid_argument("queries length is not a multiple of dim");
    const size_t nq = queries_.size() / dim;
    QV_RETURN_IF_ERROR(check_vectors(queries_.data(), nq, dim, "queries"));
    labels_.resize(nq * k_);
    distances_.resize(nq * k_);
    if (h_->flat) return h_->flat->search(queries_.data(), nq, k_, labels_.data(), distances_.data());
    return h_->ivf->search(queries_.data(), nq, k_, nprobe_, labels_.data(), distances_.data());
  }
  Napi::Value Resolve(Napi::Env env) override { return search_results(env, labels_, distances_); }

 private:
  std::shared_ptr<GpuHandle> h_;
  std::vector<float> queries_;
  uint32_t k_, nprobe_;
  std::vector<uint32_t> labels_;
  std::vector<float> distances_;
};

Napi::Value GpuInfo(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  cuda::DeviceInfo d = cuda::device_info();
  Napi::Object o = Napi::Object::New(env);
  o.Set("available", Napi::Boolean::New(env, d.available));
  if (d.available) {
    o.Set("name", Napi::String::New(env, d.name));
    o.Set("memoryBytes", Napi::Number::New(env, static_cast<double>(d.memory_bytes)));
  } else {
    o.Set("reason", Napi::String::New(env, d.reason));
  }
  return o;
}

Napi::Value GpuFlatCreate(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  uint32_t dim = to_u32(env, info[0], "dim");
  Status st = check_dim(dim);
  if (!st.is_ok()) throw_status(env, st);
  if (!info[1].IsString()) throw_invalid(env, "metric must be a string");
  Metric metric;
  st = parse_metric(info[1].As<Napi::String>().Utf8Value(), &metric);
  if (!st.is_ok()) throw_status(env, st);
  std::vector<float> vectors = copy_typed<float>(env, info[2], napi_float32_array, "vectors");
  if (vectors.empty() || vectors.size() % dim != 0) throw_invalid(env, "vectors must hold n * dim floats, n >= 1");
  std::vector<uint32_t> labels;
  if (info.Length() > 3 && !info[3].IsNull() && !info[3].IsUndefined()) {
    labels = copy_typed<uint32_t>(env, info[3], napi_uint32_array, "labels");
    if (labels.size() != vectors.size() / dim) throw_invalid(env, "labels must hold one label per vector");
  }
  auto* w = new CreateWorker(env, dim, metric, std::move(vectors), std::move(labels), nullptr);
  auto p = w->promise();
  w->Queue();
  return p;
}

Napi::Value GpuIvfPqCreate(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::shared_ptr<Index> index = unwrap_index(env, info[0]);
  if (!index) return env.Undefined();  // unwrap_index has thrown
  auto* w = new CreateWorker(env, index->dim(), index->metric(), {}, {}, index);
  auto p = w->promise();
  w->Queue();
  return p;
}

Napi::Value GpuSearch(const Napi::CallbackInfo& info, bool ivf) {
  Napi::Env env = info.Env();
  std::shared_ptr<GpuHandle> h = unwrap_handle(env, info[0]);
  std::vector<float> queries = copy_typed<float>(env, info[1], napi_float32_array, "queries");
  uint32_t k = to_u32(env, info[2], "k");
  uint32_t nprobe = ivf ? to_u32(env, info[3], "nprobe") : 0;
  auto* w = new SearchWorker(env, std::move(h), std::move(queries), k, nprobe);
  auto p = w->promise();
  w->Queue();
  return p;
}

Napi::Value GpuFree(const Napi::CallbackInfo& info) {
  std::shared_ptr<GpuHandle> h = unwrap_handle(info.Env(), info[0]);
  std::lock_guard<std::mutex> lock(h->mu);  // waits for a search in flight on this index
  h->flat.reset();
  h->ivf.reset();
  return info.Env().Undefined();
}

}  // namespace

void init_gpu(Napi::Env env, Napi::Object exports) {
  exports.Set("gpuInfo", Napi::Function::New(env, GpuInfo, "gpuInfo"));
  exports.Set("gpuFlatCreate", Napi::Function::New(env, GpuFlatCreate, "gpuFlatCreate"));
  exports.Set("gpuFlatSearch", Napi::Function::New(env, [](const Napi::CallbackInfo& i) { return GpuSearch(i, false); }, "gpuFlatSearch"));
  exports.Set("gpuIvfPqCreate", Napi::Function::New(env, GpuIvfPqCreate, "gpuIvfPqCreate"));
  exports.Set("gpuIvfPqSearch", Napi::Function::New(env, [](const Napi::CallbackInfo& i) { return GpuSearch(i, true); }, "gpuIvfPqSearch"));
  exports.Set("gpuFree", Napi::Function::New(env, GpuFree, "gpuFree"));
}

}  // namespace napi
}  // namespace qv
#endif  // QUIVER_CUDA
