// NativeIndex: JS class over qv::Index. Inputs are copied out of the typed arrays on the event
// loop (so JS may reuse its buffers at once), the work runs in a PromiseWorker, results come back
// as typed arrays.
#include "napi/index_wrap.h"

#include <cmath>
#include <cstring>

#include "common/alloc.h"
#include "common/limits.h"
#include "napi/convert.h"
#include "napi/errors.h"
#include "napi/search_lane.h"

namespace qv {
namespace napi {

namespace {

// Starts a worker and hands back its promise.
template <typename W>
Napi::Value queue(W* w) {
  Napi::Promise p = w->promise();
  w->Queue();
  return p;
}

// One addon instance per process (tests run in forked processes, not worker threads).
Napi::FunctionReference* constructor_persist = nullptr;

class AddWorker : public PromiseWorker {
 public:
  AddWorker(Napi::Env env, std::shared_ptr<Index> index, std::vector<uint32_t> labels, std::vector<float> vectors, int threads)
      : PromiseWorker(env), index_(std::move(index)), labels_(std::move(labels)), vectors_(std::move(vectors)), threads_(threads) {}
  Status Run() override {
    if (vectors_.size() != labels_.size() * size_t(index_->dim()))
      return invalid_argument("vectors length does not match labels * dim");
    return index_->add(labels_.data(), vectors_.data(), labels_.size(), threads_);
  }

 private:
  std::shared_ptr<Index> index_;
  std::vector<uint32_t> labels_;
  std::vector<float> vectors_;
  int threads_;
};

class RemoveWorker : public PromiseWorker {
 public:
  RemoveWorker(Napi::Env env, std::shared_ptr<Index> index, std::vector<uint32_t> labels)
      : PromiseWorker(env), index_(std::move(index)), labels_(std::move(labels)) {}
  Status Run() override { return index_->remove(labels_.data(), labels_.size()); }

 private:
  std::shared_ptr<Index> index_;
  std::vector<uint32_t> labels_;
};

// One search call's inputs and outputs; runs on the search lane or in a PromiseWorker.
class SearchTask : public LaneTask {
 public:
  SearchTask(std::shared_ptr<Index> index, std::vector<float> queries, SearchParams params, bool has_filter,
             std::vector<uint32_t> filter_labels)
      : index_(std::move(index)), queries_(std::move(queries)), params_(params), has_filter_(has_filter),
        filter_labels_(std::move(filter_labels)) {}
  Status run() override {
    const size_t dim = index_->dim();
    if (queries_.empty() || queries_.size() % dim != 0) return invalid_argument("queries length is not a multiple of dim");
    nq_ = queries_.size() / dim;
    QV_RETURN_IF_ERROR(check_k(params_.k));
    if (has_filter_) {
      filter_ = Filter(filter_labels_.data(), filter_labels_.size());
      params_.filter = &filter_;
    }
    allocation_point();
    labels_.resize(nq_ * params_.k);
    distances_.resize(nq_ * params_.k);
    return index_->search(queries_.data(), nq_, params_, labels_.data(), distances_.data());
  }
  Napi::Value resolve(Napi::Env env) override { return search_results(env, labels_, distances_); }

 private:
  std::shared_ptr<Index> index_;
  std::vector<float> queries_;
  SearchParams params_;
  bool has_filter_;
  std::vector<uint32_t> filter_labels_;
  Filter filter_;
  size_t nq_ = 0;
  std::vector<uint32_t> labels_;
  std::vector<float> distances_;
};

// A LaneTask on the libuv thread pool.
class TaskWorker : public PromiseWorker {
 public:
  TaskWorker(Napi::Env env, std::unique_ptr<LaneTask> task) : PromiseWorker(env), task_(std::move(task)) {}
  Status Run() override { return task_->run(); }
  Napi::Value Resolve(Napi::Env env) override { return task_->resolve(env); }

 private:
  std::unique_ptr<LaneTask> task_;
};

// Searches of up to this many query floats (a few queries) try the search lane first.
constexpr size_t kLaneMaxQueryFloats = 4 * 1024;

class GetVectorsWorker : public PromiseWorker {
 public:
  GetVectorsWorker(Napi::Env env, std::shared_ptr<Index> index, std::vector<uint32_t> labels)
      : PromiseWorker(env), index_(std::move(index)), labels_(std::move(labels)) {}
  Status Run() override {
    out_.resize(labels_.size() * size_t(index_->dim()));
    return index_->get_vectors(labels_.data(), labels_.size(), out_.data());
  }
  Napi::Value Resolve(Napi::Env env) override {
    auto arr = Napi::Float32Array::New(env, out_.size());
    std::memcpy(arr.Data(), out_.data(), out_.size() * 4);
    return arr;
  }

 private:
  std::shared_ptr<Index> index_;
  std::vector<uint32_t> labels_;
  std::vector<float> out_;
};

// Serializes the index into `spare` (a buffer from reserveSerialize, or null: a new one) and resolves
// with the bytes as a Buffer; given `holder` (serializeHeld), keeps them in that NativeIndex (held_)
// instead and resolves with their length. V8 counts a Buffer's memory against its old generation's
// limit, so a serialized index handed over at every snapshot started a full collection beside the
// writes; readHeld copies held bytes out a step at a time.
class SerializeWorker : public PromiseWorker {
 public:
  SerializeWorker(Napi::Env env, std::shared_ptr<Index> index, std::unique_ptr<Bytes> spare, Napi::Object holder = Napi::Object())
      : PromiseWorker(env), index_(std::move(index)), bytes_(std::move(spare)) {
    if (!holder.IsEmpty()) holder_ = Napi::Persistent(holder);
  }
  Status Run() override {
    if (bytes_ == nullptr) bytes_ = std::make_unique<Bytes>();
    return index_->serialize(bytes_.get());
  }
  Napi::Value Resolve(Napi::Env env) override {
    if (!holder_.IsEmpty()) {
      const double length = double(bytes_->size());
      NativeIndex::Unwrap(holder_.Value())->set_held(std::move(bytes_));
      return Napi::Number::New(env, length);
    }
    Bytes* v = bytes_.release();
    return Napi::Buffer<uint8_t>::New(env, v->data(), v->size(), [](Napi::Env, uint8_t*, Bytes* p) { delete p; }, v);
  }

 private:
  std::shared_ptr<Index> index_;
  std::unique_ptr<Bytes> bytes_;
  Napi::ObjectReference holder_;
};

// Makes room of `bytes` for the next serialize, touched, so that its page faults (and any compaction
// for huge pages) come before the caller takes its lock, not under it: the buffer kept by
// releaseHeld(true) when it holds `bytes` and not twice as many (written over, which takes back any
// page the kernel reclaimed), else a new one mapped.
class ReserveSerializeWorker : public PromiseWorker {
 public:
  ReserveSerializeWorker(Napi::Env env, Napi::Object self, size_t bytes, std::unique_ptr<Bytes> kept)
      : PromiseWorker(env), self_(Napi::Persistent(self)), bytes_(bytes), spare_(std::move(kept)) {}
  Status Run() override {
    // Kept memory is used again only while it is at most twice what is asked: an index that shrank gets a smaller buffer.
    if (spare_ != nullptr && spare_->capacity() >= bytes_ && spare_->capacity() / 2 <= bytes_) {
      spare_->resize(spare_->capacity());
    } else {
      spare_ = std::make_unique<Bytes>();
      spare_->resize(bytes_);
    }
    spare_->clear();
    return Status::ok();
  }
  Napi::Value Resolve(Napi::Env env) override {
    NativeIndex::Unwrap(self_.Value())->set_spare(std::move(spare_));
    return env.Undefined();
  }

 private:
  Napi::ObjectReference self_;
  size_t bytes_;
  std::unique_ptr<Bytes> spare_;
};

class DeserializeWorker : public PromiseWorker {
 public:
  DeserializeWorker(Napi::Env env, Napi::Uint8Array bytes)
      : PromiseWorker(env), ref_(Napi::Persistent(bytes)), data_(bytes.Data()), size_(bytes.ByteLength()) {}
  Status Run() override {
    std::unique_ptr<Index> index;
    QV_RETURN_IF_ERROR(deserialize_index(data_, size_, &index));
    index_ = std::shared_ptr<Index>(std::move(index));
    return Status::ok();
  }
  Napi::Value Resolve(Napi::Env env) override { return NativeIndex::Wrap(env, index_); }

 private:
  Napi::Reference<Napi::Uint8Array> ref_;  // keeps the bytes alive while Run() reads them
  const uint8_t* data_;
  size_t size_;
  std::shared_ptr<Index> index_;
};

class TrainWorker : public PromiseWorker {
 public:
  TrainWorker(Napi::Env env, std::shared_ptr<Index> index, std::vector<float> sample, int threads, Napi::Value progress)
      : PromiseWorker(env), index_(std::move(index)), sample_(std::move(sample)), threads_(threads) {
    if (progress.IsFunction()) {
      tsfn_ = Napi::ThreadSafeFunction::New(env, progress.As<Napi::Function>(), "quiver-train-progress", 16, 1);
      has_tsfn_ = true;
    }
  }
  Status Run() override {
    const size_t dim = index_->dim();
    if (sample_.empty() || sample_.size() % dim != 0) return invalid_argument("sample length is not a multiple of dim");
    ProgressFn fn;
    if (has_tsfn_) {
      fn = [this](double fraction, const char* phase) {
        auto* msg = new std::pair<double, std::string>(fraction, phase);
        if (tsfn_.NonBlockingCall(msg, [](Napi::Env env, Napi::Function cb, std::pair<double, std::string>* m) {
              cb.Call({Napi::Number::New(env, m->first), Napi::String::New(env, m->second)});
              delete m;
            }) != napi_ok)
          delete msg;  // queue full: progress is advisory, drop it
      };
    }
    Status st = index_->train(sample_.data(), sample_.size() / dim, threads_, fn);
    if (has_tsfn_) tsfn_.Release();
    has_tsfn_ = false;
    return st;
  }
  ~TrainWorker() override {
    if (has_tsfn_) tsfn_.Release();
  }

 private:
  std::shared_ptr<Index> index_;
  std::vector<float> sample_;
  int threads_;
  Napi::ThreadSafeFunction tsfn_;
  bool has_tsfn_ = false;
};

// k, ef, nprobe, refine of a search call (info[1..4]); 0 (refine: -1) = index default.
SearchParams search_params(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  SearchParams p;
  p.k = to_u32(env, info[1], "k");
  p.ef = to_u32(env, info[2], "ef");
  p.nprobe = to_u32(env, info[3], "nprobe");
  double refine = info[4].IsNumber() ? info[4].As<Napi::Number>().DoubleValue() : -1;
  p.refine = refine < 0 ? 0 : static_cast<uint32_t>(refine);
  p.refine_set = refine >= 0;
  return p;
}

}  // namespace

Napi::Function NativeIndex::Init(Napi::Env env) {
  Napi::Function cls = DefineClass(
      env, "NativeIndex",
      {InstanceMethod("add", &NativeIndex::Guarded<&NativeIndex::Add>),
       InstanceMethod("remove", &NativeIndex::Guarded<&NativeIndex::Remove>),
       InstanceMethod("search", &NativeIndex::Guarded<&NativeIndex::Search>),
       InstanceMethod("searchSync", &NativeIndex::Guarded<&NativeIndex::SearchSync>),
       InstanceMethod("train", &NativeIndex::Guarded<&NativeIndex::Train>),
       InstanceMethod("serialize", &NativeIndex::Guarded<&NativeIndex::Serialize>),
       InstanceMethod("reserveSerialize", &NativeIndex::Guarded<&NativeIndex::ReserveSerialize>),
       InstanceMethod("serializeHeld", &NativeIndex::Guarded<&NativeIndex::SerializeHeld>),
       InstanceMethod("readHeld", &NativeIndex::Guarded<&NativeIndex::ReadHeld>),
       InstanceMethod("releaseHeld", &NativeIndex::Guarded<&NativeIndex::ReleaseHeld>),
       InstanceMethod("releaseSpare", &NativeIndex::Guarded<&NativeIndex::ReleaseSpare>),
       InstanceMethod("getVectors", &NativeIndex::Guarded<&NativeIndex::GetVectors>),
       StaticMethod("deserialize", &guarded<&NativeIndex::Deserialize>), InstanceAccessor("size", &NativeIndex::GetSize, nullptr),
       InstanceAccessor("dim", &NativeIndex::GetDim, nullptr), InstanceAccessor("metric", &NativeIndex::GetMetric, nullptr),
       InstanceAccessor("kind", &NativeIndex::GetKind, nullptr), InstanceAccessor("trained", &NativeIndex::GetTrained, nullptr),
       InstanceAccessor("memoryBytes", &NativeIndex::GetMemoryBytes, nullptr),
       InstanceAccessor("spareBytes", &NativeIndex::GetSpareBytes, nullptr)});
  constructor_persist = new Napi::FunctionReference(Napi::Persistent(cls));
  return cls;
}

// new NativeIndex(kind: string, dim: number, metric: string, params: {[name]: number})
// or, from C++ only, new NativeIndex(External<shared_ptr<Index>>).
NativeIndex::NativeIndex(const Napi::CallbackInfo& info) : Napi::ObjectWrap<NativeIndex>(info) {
  Napi::Env env = info.Env();
  if (info.Length() == 1 && info[0].IsExternal()) {
    index_ = *info[0].As<Napi::External<std::shared_ptr<Index>>>().Data();
    return;
  }
  if (info.Length() < 4 || !info[0].IsString() || !info[2].IsString() || !info[3].IsObject())
    throw_invalid(env, "NativeIndex(kind, dim, metric, params)");
  IndexOptions opts;
  opts.dim = to_u32(env, info[1], "dim");
  Status st = parse_metric(info[2].As<Napi::String>().Utf8Value(), &opts.metric);
  if (!st.is_ok()) throw_status(env, st);
  Napi::Object params = info[3].As<Napi::Object>();
  Napi::Array keys = params.GetPropertyNames();
  for (uint32_t i = 0; i < keys.Length(); ++i) {
    std::string key = keys.Get(i).As<Napi::String>().Utf8Value();
    Napi::Value v = params.Get(key);
    if (!v.IsNumber()) throw_invalid(env, "index parameter " + key + " must be a number");
    opts.num[key] = v.As<Napi::Number>().DoubleValue();
  }
  std::unique_ptr<Index> index;
  st = on_loop(env, [&] { return create_index(info[0].As<Napi::String>().Utf8Value(), opts, &index); });
  if (!st.is_ok()) throw_status(env, st);
  index_ = std::shared_ptr<Index>(std::move(index));
}

Napi::Object NativeIndex::Wrap(Napi::Env env, std::shared_ptr<Index> index) {
  auto holder = Napi::External<std::shared_ptr<Index>>::New(env, new std::shared_ptr<Index>(std::move(index)),
                                                            [](Napi::Env, std::shared_ptr<Index>* p) { delete p; });
  return constructor_persist->New({holder});
}

std::shared_ptr<Index> unwrap_index(Napi::Env env, Napi::Value v) {
  if (!v.IsObject() || !constructor_persist || !v.As<Napi::Object>().InstanceOf(constructor_persist->Value())) {
    throw_invalid(env, "not a NativeIndex");
  }
  return NativeIndex::Unwrap(v.As<Napi::Object>())->index();
}

Napi::Value NativeIndex::Add(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  auto labels = copy_typed<uint32_t>(env, info[0], napi_uint32_array, "labels");
  auto vectors = copy_typed<float>(env, info[1], napi_float32_array, "vectors");
  int threads = info.Length() > 2 && info[2].IsNumber() ? info[2].As<Napi::Number>().Int32Value() : 0;
  return queue(new AddWorker(env, index_, std::move(labels), std::move(vectors), threads));
}

Napi::Value NativeIndex::Remove(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  auto labels = copy_typed<uint32_t>(env, info[0], napi_uint32_array, "labels");
  return queue(new RemoveWorker(env, index_, std::move(labels)));
}

// search(queries, k, ef, nprobe, refine, threads, filter|null)
Napi::Value NativeIndex::Search(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  auto queries = copy_typed<float>(env, info[0], napi_float32_array, "queries");
  SearchParams p = search_params(info);
  p.threads = static_cast<int>(to_u32(env, info[5], "threads"));
  bool has_filter = !info[6].IsNull() && !info[6].IsUndefined();
  std::vector<uint32_t> filter;
  if (has_filter) filter = copy_typed<uint32_t>(env, info[6], napi_uint32_array, "filter");
  const size_t floats = queries.size();
  std::unique_ptr<LaneTask> task(new SearchTask(index_, std::move(queries), p, has_filter, std::move(filter)));
  if (floats <= kLaneMaxQueryFloats && !has_filter) {
    napi_value promise;
    if (lane_try_run(env, task, &promise)) return Napi::Value(env, promise);
    lane_count_fallback();
  }
  return queue(new TaskWorker(env, std::move(task)));
}

// searchSync(query, k, ef, nprobe, refine, filter|null): one query, run here on the calling thread
// (the event loop) by the same Index::search as search(), on one thread, and refused
// (RESOURCE_EXHAUSTED) before any work when the index estimates it above kSearchSyncTermsMax. The
// typed arrays are read in place: no JavaScript runs until this returns.
Napi::Value NativeIndex::SearchSync(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[0].IsTypedArray() || info[0].As<Napi::TypedArray>().TypedArrayType() != napi_float32_array)
    throw_invalid(env, "query has the wrong type");
  auto query = info[0].As<Napi::Float32Array>();
  if (query.ElementLength() != index_->dim())
    throw_invalid(env, "searchSync takes one query of " + std::to_string(index_->dim()) + " floats, got " +
                           std::to_string(query.ElementLength()));
  SearchParams p = search_params(info);
  p.threads = 1;
  p.terms_max = kSearchSyncTermsMax;
  Status st = check_k(p.k);
  if (!st.is_ok()) throw_status(env, st);
  Filter filter;
  if (!info[5].IsNull() && !info[5].IsUndefined()) {
    if (!info[5].IsTypedArray() || info[5].As<Napi::TypedArray>().TypedArrayType() != napi_uint32_array)
      throw_invalid(env, "filter has the wrong type");
    auto f = info[5].As<Napi::Uint32Array>();
    filter = Filter(f.Data(), f.ElementLength());
    p.filter = &filter;
  }
  // Out of memory (the results, the index's scratch) is RESOURCE_EXHAUSTED through Guarded.
  allocation_point();
  std::vector<uint32_t> labels(p.k);
  std::vector<float> distances(p.k);
  st = index_->search(query.Data(), 1, p, labels.data(), distances.data());
  if (!st.is_ok()) throw_status(env, st);
  return search_results(env, labels, distances);
}

Napi::Value NativeIndex::Train(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  auto sample = copy_typed<float>(env, info[0], napi_float32_array, "sample");
  int threads = info.Length() > 1 && info[1].IsNumber() ? info[1].As<Napi::Number>().Int32Value() : 0;
  return queue(new TrainWorker(env, index_, std::move(sample), threads, info.Length() > 2 ? info[2] : env.Undefined()));
}

Napi::Value NativeIndex::Serialize(const Napi::CallbackInfo& info) {
  return queue(new SerializeWorker(info.Env(), index_, spare_.take()));
}

Napi::Value NativeIndex::SerializeHeld(const Napi::CallbackInfo& info) {
  held_.reset();
  return queue(new SerializeWorker(info.Env(), index_, spare_.take(), info.This().As<Napi::Object>()));
}

// readHeld(offset, into: Uint8Array): copies the held bytes from `offset` into `into`, as many as
// fit or are left; returns how many. INVALID_ARGUMENT without held bytes or past their end.
Napi::Value NativeIndex::ReadHeld(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (held_ == nullptr) throw_invalid(env, "readHeld: nothing is held (serializeHeld first)");
  const double offset = info[0].IsNumber() ? info[0].As<Napi::Number>().DoubleValue() : -1;
  if (!(offset >= 0 && offset <= double(held_->size())) || offset != double(size_t(offset))) throw_invalid(env, "readHeld(offset, into): offset must be a whole number within the held bytes");
  if (!info[1].IsTypedArray() || info[1].As<Napi::TypedArray>().TypedArrayType() != napi_uint8_array) throw_invalid(env, "readHeld(offset, into: Uint8Array)");
  auto into = info[1].As<Napi::Uint8Array>();
  const size_t n = std::min(into.ByteLength(), held_->size() - size_t(offset));
  if (n > 0) std::memcpy(into.Data(), held_->data() + size_t(offset), n);
  return Napi::Number::New(env, double(n));
}

// releaseHeld(keep = false): frees the held bytes (nothing if none). With `keep`, bytes of huge pages
// (half a huge page or more: LargeAllocator) stay mapped as the next serialize's buffer, their
// contents given up (lazy_free_huge_pages): the next snapshot neither maps them again nor faults.
Napi::Value NativeIndex::ReleaseHeld(const Napi::CallbackInfo& info) {
  const bool keep = info.Length() > 0 && info[0].IsBoolean() && info[0].As<Napi::Boolean>().Value();
  if (keep && held_ != nullptr && large_allocation(held_->capacity())) {
    held_->clear();
    lazy_free_huge_pages(held_->data(), held_->capacity());
    spare_.set(std::move(held_));
  }
  held_.reset();
  return info.Env().Undefined();
}

// releaseSpare(): frees the buffer kept for the next serialize (nothing if none).
Napi::Value NativeIndex::ReleaseSpare(const Napi::CallbackInfo& info) {
  spare_.reset();
  return info.Env().Undefined();
}

// spareBytes: the room of the buffer kept for the next serialize (0 if none).
Napi::Value NativeIndex::GetSpareBytes(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), double(spare_.bytes()));
}

// reserveSerialize(bytes): see ReserveSerializeWorker. The buffer is held until the next serialize.
Napi::Value NativeIndex::ReserveSerialize(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const double bytes = info[0].IsNumber() ? info[0].As<Napi::Number>().DoubleValue() : -1;
  if (!(bytes >= 0 && bytes <= double(kSerializeReserveMax))) throw_invalid(env, "reserveSerialize(bytes): bytes must be a number from 0 to 2^40");
  return queue(new ReserveSerializeWorker(env, info.This().As<Napi::Object>(), size_t(bytes), spare_.take()));
}

Napi::Value NativeIndex::GetVectors(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  auto labels = copy_typed<uint32_t>(env, info[0], napi_uint32_array, "labels");
  return queue(new GetVectorsWorker(env, index_, std::move(labels)));
}

Napi::Value NativeIndex::Deserialize(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[0].IsTypedArray() || info[0].As<Napi::TypedArray>().TypedArrayType() != napi_uint8_array)
    throw_invalid(env, "deserialize needs a Buffer or Uint8Array");
  return queue(new DeserializeWorker(env, info[0].As<Napi::Uint8Array>()));
}

Napi::Value NativeIndex::GetSize(const Napi::CallbackInfo& info) { return Napi::Number::New(info.Env(), double(index_->size())); }
Napi::Value NativeIndex::GetDim(const Napi::CallbackInfo& info) { return Napi::Number::New(info.Env(), index_->dim()); }
Napi::Value NativeIndex::GetMetric(const Napi::CallbackInfo& info) {
  return Napi::String::New(info.Env(), metric_name(index_->metric()));
}
Napi::Value NativeIndex::GetKind(const Napi::CallbackInfo& info) {
  switch (index_->kind()) {
    case IndexKind::Flat: return Napi::String::New(info.Env(), "flat");
    case IndexKind::Hnsw: return Napi::String::New(info.Env(), "hnsw");
    case IndexKind::IvfPq: return Napi::String::New(info.Env(), "ivfpq");
  }
  return info.Env().Undefined();
}
Napi::Value NativeIndex::GetTrained(const Napi::CallbackInfo& info) { return Napi::Boolean::New(info.Env(), index_->trained()); }
Napi::Value NativeIndex::GetMemoryBytes(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), double(index_->memory_bytes()));
}

}  // namespace napi
}  // namespace qv
