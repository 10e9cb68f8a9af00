// Module entry: registers NativeIndex, the SIMD functions and (CUDA build only) the GPU ones.
#include <napi.h>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <vector>

#if defined(__GLIBC__)
#include <malloc.h>
#endif

#include "common/alloc.h"
#include "common/format.h"
#include "common/limits.h"
#include "distance/distance.h"
#include "napi/errors.h"
#include "napi/gpu.h"
#include "napi/index_wrap.h"
#include "napi/search_lane.h"

namespace qv {
namespace napi {
namespace {

Napi::Value SetErrorClass(const Napi::CallbackInfo& info) {
  if (!info[0].IsFunction()) throw Napi::TypeError::New(info.Env(), "setErrorClass(QuiverError)");
  set_error_class(info.Env(), info[0].As<Napi::Function>());
  return info.Env().Undefined();
}

// The active level; throws the QUIVER_SIMD problem (if any) so the loader refuses to start.
Napi::Value SimdLevelFn(const Napi::CallbackInfo& info) {
  if (!dispatch_status().is_ok()) throw_status(info.Env(), dispatch_status());
  return Napi::String::New(info.Env(), simd_level_name(kernels().level));
}

// crc32c(bytes: Uint8Array, crc = 0): CRC-32C of the bytes, continuing from crc (the WAL's
// checksum; synchronous: several GB/s, so even a 3 MB entry is well under a millisecond).
Napi::Value Crc32cFn(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[0].IsTypedArray() || info[0].As<Napi::TypedArray>().TypedArrayType() != napi_uint8_array)
    throw_invalid(env, "crc32c(bytes: Uint8Array, crc?: number)");
  auto bytes = info[0].As<Napi::Uint8Array>();
  uint32_t crc = info.Length() > 1 && info[1].IsNumber() ? info[1].As<Napi::Number>().Uint32Value() : 0;
  return Napi::Number::New(env, crc32c(bytes.Data(), bytes.ByteLength(), crc));
}

// allocRows(floats): a zeroed Float32Array for bulk row storage (the shard's vector chunks).
// From 1 MB up it is whole huge pages (map_huge_pages, common/alloc.h): filling a fresh 3 MB array
// then takes 2 page faults instead of ~800 (measured ~10 ms -> well under 1 ms per 3.2 MB on the
// paravirtualized VMs here, where a fault costs ~12 us).
// tuneAllocator(trimBytes, mmapBytes): glibc malloc keeps up to trimBytes of freed memory at the top
// of a heap instead of returning it to the system, and serves blocks under mmapBytes from its heaps
// instead of fresh mappings. A server that takes 3 MB batches otherwise maps, faults in (a page
// fault is ~12 us on the VMs measured) and unmaps the same memory batch after batch. Returns
// whether both settings took (false off glibc).
Napi::Value TuneAllocator(const Napi::CallbackInfo& info) {
  if (!info[0].IsNumber() || !info[1].IsNumber()) throw_invalid(info.Env(), "tuneAllocator(trimBytes: number, mmapBytes: number)");
  const double trim = info[0].As<Napi::Number>().DoubleValue();
  const double map = info[1].As<Napi::Number>().DoubleValue();
  if (!(trim >= 0 && trim <= 1 << 30) || !(map >= 0 && map <= 1 << 30)) throw_invalid(info.Env(), "tuneAllocator: sizes in bytes, at most 1 GiB");
#if defined(__GLIBC__)
  const bool ok = mallopt(M_TRIM_THRESHOLD, static_cast<int>(trim)) == 1 && mallopt(M_MMAP_THRESHOLD, static_cast<int>(map)) == 1;
  return Napi::Boolean::New(info.Env(), ok);
#else
  return Napi::Boolean::New(info.Env(), false);
#endif
}

// trimAllocator(): glibc malloc returns the free memory of every arena to the system (malloc_trim:
// the free top of each heap and the free pages inside them), whatever the trim threshold above.
// For a server gone quiet: the batches' peaks stay cached in the arenas of the threads that ran
// them otherwise. Returns whether memory was returned (false off glibc).
Napi::Value TrimAllocator(const Napi::CallbackInfo& info) {
#if defined(__GLIBC__)
  return Napi::Boolean::New(info.Env(), malloc_trim(0) == 1);
#else
  return Napi::Boolean::New(info.Env(), false);
#endif
}

// releaseBuffer(bytes): detaches the ArrayBuffer that `bytes` views whole, so that the memory
// behind it goes now rather than at a garbage collection (which may come much later: V8 does not
// count an addon's memory). Every view of it then reads as empty. Refused for a view of part of an
// ArrayBuffer (a Buffer from Node's pool shares one with others).
Napi::Value ReleaseBuffer(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[0].IsTypedArray() || info[0].As<Napi::TypedArray>().TypedArrayType() != napi_uint8_array) throw_invalid(env, "releaseBuffer(bytes: Uint8Array)");
  auto bytes = info[0].As<Napi::Uint8Array>();
  Napi::ArrayBuffer buffer = bytes.ArrayBuffer();
  if (buffer.IsDetached()) return env.Undefined();
  if (bytes.ByteOffset() != 0 || bytes.ByteLength() != buffer.ByteLength()) throw_invalid(env, "releaseBuffer: bytes must view the whole of its ArrayBuffer");
  buffer.Detach();
  return env.Undefined();
}

Napi::Value AllocRows(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[0].IsNumber()) throw_invalid(env, "allocRows(floats: number)");
  const double f = info[0].As<Napi::Number>().DoubleValue();
  if (!(f >= 0) || f > 1e10 || f != static_cast<double>(static_cast<size_t>(f))) throw_invalid(env, "allocRows: floats must be a whole number");
  const size_t floats = static_cast<size_t>(f);
  const size_t bytes = floats * sizeof(float);
  allocation_point();
  if (!large_allocation(bytes)) return Napi::Float32Array::New(env, floats);
  void* p = map_huge_pages(bytes);  // std::bad_alloc: RESOURCE_EXHAUSTED through guarded
  const size_t size = huge_pages_bytes(bytes);
  Napi::MemoryManagement::AdjustExternalMemory(env, static_cast<int64_t>(size));
  auto ab = Napi::ArrayBuffer::New(env, p, bytes, [bytes, size](Napi::Env e, void* data) {
    unmap_huge_pages(data, bytes);
    Napi::MemoryManagement::AdjustExternalMemory(e, -static_cast<int64_t>(size));
  });
  return Napi::Float32Array::New(env, floats, ab, 0);
}

// failNextAllocations(n): test hook; the next n reservations of memory (an index write's, a
// search's results, allocRows) fail as if memory had run out (common/alloc.h). 0 turns it off.
Napi::Value FailNextAllocations(const Napi::CallbackInfo& info) {
  if (!info[0].IsNumber()) throw_invalid(info.Env(), "failNextAllocations(n: number)");
  fail_next_allocations(info[0].As<Napi::Number>().Uint32Value());
  return info.Env().Undefined();
}

Napi::Value SimdLevels(const Napi::CallbackInfo& info) {
  Napi::Array out = Napi::Array::New(info.Env());
  uint32_t i = 0;
  for (SimdLevel l : {SimdLevel::Serial, SimdLevel::Neon, SimdLevel::Avx2, SimdLevel::Avx512})
    if (kernels_for(l)) out.Set(i++, Napi::String::New(info.Env(), simd_level_name(l)));
  return out;
}

const Kernels& level_arg(Napi::Env env, Napi::Value v) {
  SimdLevel l;
  if (!v.IsString() || !parse_simd_level(v.As<Napi::String>().Utf8Value().c_str(), &l))
    throw_invalid(env, "level must be one of serial, avx2, avx512, neon");
  const Kernels* k = kernels_for(l);
  if (!k) throw_status(env, failed_precondition(std::string("this CPU does not support ") + simd_level_name(l)));
  return *k;
}

template <typename T>
const T* typed(Napi::Env env, Napi::Value v, napi_typedarray_type type, size_t* n) {
  if (!v.IsTypedArray() || v.As<Napi::TypedArray>().TypedArrayType() != type) throw_invalid(env, "wrong typed array type");
  auto ta = v.As<Napi::TypedArrayOf<T>>();
  *n = ta.ElementLength();
  return ta.Data();
}

// kernel(name, level, a, b): one kernel at one level, for tests. Synchronous (a and b are small).
// Names: l2_f32 ip_f32 ip_f32_fixed cos_f32 (Float32Array), l2_u8 ip_u8 (Uint8Array), l2_i8 ip_i8 (Int8Array).
Napi::Value KernelFn(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string name = info[0].IsString() ? info[0].As<Napi::String>().Utf8Value() : "";
  const Kernels& K = level_arg(env, info[1]);
  size_t na = 0, nb = 0;
  double r = 0;
  if (name == "l2_f32" || name == "ip_f32" || name == "cos_f32" || name == "ip_f32_fixed") {
    const float* a = typed<float>(env, info[2], napi_float32_array, &na);
    const float* b = typed<float>(env, info[3], napi_float32_array, &nb);
    if (na != nb) throw_invalid(env, "a and b differ in length");
    r = name == "l2_f32"         ? K.l2_f32(a, b, na)
        : name == "ip_f32"       ? K.ip_f32(a, b, na)
        : name == "ip_f32_fixed" ? K.ip_f32_fixed(a, b, na)
                                 : K.cos_f32(a, b, na);
  } else if (name == "l2_u8" || name == "ip_u8") {
    const uint8_t* a = typed<uint8_t>(env, info[2], napi_uint8_array, &na);
    const uint8_t* b = typed<uint8_t>(env, info[3], napi_uint8_array, &nb);
    if (na != nb) throw_invalid(env, "a and b differ in length");
    r = name == "l2_u8" ? K.l2_u8(a, b, na) : K.ip_u8(a, b, na);
  } else if (name == "l2_i8" || name == "ip_i8") {
    const int8_t* a = typed<int8_t>(env, info[2], napi_int8_array, &na);
    const int8_t* b = typed<int8_t>(env, info[3], napi_int8_array, &nb);
    if (na != nb) throw_invalid(env, "a and b differ in length");
    r = name == "l2_i8" ? double(K.l2_i8(a, b, na)) : double(K.ip_i8(a, b, na));
  } else if (name == "ip_f32_4x4" || name == "ip_f32_x4") {
    // a: 4 rows of d (queries), b: 4 rows of d; returns the (0,0) entry only; the test calls the
    // other entries through kernelMatrix below.
    throw_invalid(env, "use kernelMatrix for blocked kernels");
  } else {
    throw_invalid(env, "unknown kernel '" + name + "'");
  }
  return Napi::Number::New(env, r);
}

// kernelMatrix(name, level, q (4*d), r (4*d), d): Float32Array of the 4x4 dots (ip_f32_4x4), the 4
// dots of q row 0 against r (ip_f32_x4), or n L2 distances of q row 0 against n rows (l2_f32_rows).
// l2_u8_many takes Uint8Arrays (q: d bytes, r: n rows of d) and returns the Uint32Array of
// l2_u8(q, row) for the rows in reverse order (so that the rows' addresses, not their order in
// memory, are what the kernel follows).
Napi::Value KernelMatrix(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string name = info[0].IsString() ? info[0].As<Napi::String>().Utf8Value() : "";
  const Kernels& K = level_arg(env, info[1]);
  if (name == "l2_u8_many") {
    size_t nq8 = 0, nr8 = 0;
    const uint8_t* q8 = typed<uint8_t>(env, info[2], napi_uint8_array, &nq8);
    const uint8_t* r8 = typed<uint8_t>(env, info[3], napi_uint8_array, &nr8);
    const size_t d8 = info[4].As<Napi::Number>().Uint32Value();
    if (d8 == 0 || nq8 < d8 || nr8 % d8 != 0) throw_invalid(env, "q needs d bytes and r whole rows of d");
    const size_t n = nr8 / d8;
    std::vector<const uint8_t*> rows(n);
    for (size_t i = 0; i < n; ++i) rows[i] = r8 + (n - 1 - i) * d8;
    auto out = Napi::Uint32Array::New(env, n);
    K.l2_u8_many(q8, rows.data(), n, d8, out.Data());
    return out;
  }
  size_t nq = 0, nr = 0;
  const float* q = typed<float>(env, info[2], napi_float32_array, &nq);
  const float* r = typed<float>(env, info[3], napi_float32_array, &nr);
  size_t d = info[4].As<Napi::Number>().Uint32Value();
  if (d == 0) throw_invalid(env, "d must be positive");
  if (name == "ip_f32_4x4") {
    if (nq < 4 * d || nr < 4 * d) throw_invalid(env, "need 4 rows each");
    const float* qp[4] = {q, q + d, q + 2 * d, q + 3 * d};
    const float* rp[4] = {r, r + d, r + 2 * d, r + 3 * d};
    auto out = Napi::Float32Array::New(env, 16);
    K.ip_f32_4x4(qp, rp, d, out.Data());
    return out;
  }
  if (name == "ip_f32_x4") {
    if (nq < d || nr < 4 * d) throw_invalid(env, "need 1 query row and 4 rows");
    const float* rp[4] = {r, r + d, r + 2 * d, r + 3 * d};
    auto out = Napi::Float32Array::New(env, 4);
    K.ip_f32_x4(q, rp, d, out.Data());
    return out;
  }
  if (name == "l2_f32_rows") {
    if (nq < d || nr % d != 0) throw_invalid(env, "rows length must be a multiple of d");
    auto out = Napi::Float32Array::New(env, nr / d);
    K.l2_f32_rows(q, r, nr / d, d, out.Data());
    return out;
  }
  throw_invalid(env, "unknown blocked kernel '" + name + "'");
  return env.Undefined();
}

double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// scanBench(level, base, dim, query, repeats): seconds of each one-query L2 scan over all rows
// (Float64Array of `repeats`). A benchmark helper: it blocks the calling thread by design.
Napi::Value ScanBench(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const Kernels& K = level_arg(env, info[0]);
  size_t nb = 0, nq = 0;
  const float* base = typed<float>(env, info[1], napi_float32_array, &nb);
  size_t d = info[2].As<Napi::Number>().Uint32Value();
  const float* q = typed<float>(env, info[3], napi_float32_array, &nq);
  uint32_t reps = info[4].As<Napi::Number>().Uint32Value();
  if (d == 0 || nb % d != 0 || nq < d) throw_invalid(env, "bad sizes");
  size_t n = nb / d;
  std::vector<float> out(1024);
  auto times = Napi::Float64Array::New(env, reps);
  volatile float sink = 0;
  for (uint32_t rep = 0; rep < reps; ++rep) {
    double t0 = now_s();
    for (size_t i = 0; i < n; i += 1024) {
      size_t m = std::min<size_t>(1024, n - i);
      K.l2_f32_rows(q, base + i * d, m, d, out.data());
      sink = sink + out[0];
    }
    times[rep] = now_s() - t0;
  }
  return times;
}

// sumBench(level, data, repeats): seconds of each plain sum over the buffer (Float64Array).
Napi::Value SumBench(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const Kernels& K = level_arg(env, info[0]);
  size_t n = 0;
  const float* a = typed<float>(env, info[1], napi_float32_array, &n);
  uint32_t reps = info[2].As<Napi::Number>().Uint32Value();
  auto times = Napi::Float64Array::New(env, reps);
  volatile float sink = 0;
  for (uint32_t rep = 0; rep < reps; ++rep) {
    double t0 = now_s();
    sink = sink + K.sum_f32(a, n);
    times[rep] = now_s() - t0;
  }
  return times;
}

// limits: the core's limits (common/limits.h), frozen; src/native/limits.ts reads them from here.
Napi::Object LimitsObject(Napi::Env env) {
  Napi::Object o = Napi::Object::New(env);
  o.Set("dimMax", Napi::Number::New(env, kDimMax));
  o.Set("topKMax", Napi::Number::New(env, kTopKMax));
  o.Set("efMax", Napi::Number::New(env, kEfMax));
  o.Set("labelNone", Napi::Number::New(env, kLabelNone));
  o.Set("batchVectorsMax", Napi::Number::New(env, static_cast<double>(kBatchVectorsMax)));
  o.Set("searchSyncTermsMax", Napi::Number::New(env, static_cast<double>(kSearchSyncTermsMax)));
  o.Freeze();
  return o;
}

// snapshotBufferBytes(): what every NativeIndex holds for its next serialize (SpareSlot::total).
Napi::Value SnapshotBufferBytes(const Napi::CallbackInfo& info) { return Napi::Number::New(info.Env(), double(SpareSlot::total())); }

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  exports.Set("setErrorClass", Napi::Function::New(env, SetErrorClass));
  exports.Set("simdLevel", Napi::Function::New(env, SimdLevelFn));
  exports.Set("simdLevels", Napi::Function::New(env, SimdLevels));
  exports.Set("crc32c", Napi::Function::New(env, Crc32cFn));
  exports.Set("allocRows", Napi::Function::New(env, guarded<AllocRows>));
  exports.Set("failNextAllocations", Napi::Function::New(env, FailNextAllocations));
  exports.Set("tuneAllocator", Napi::Function::New(env, TuneAllocator));
  exports.Set("trimAllocator", Napi::Function::New(env, TrimAllocator));
  exports.Set("releaseBuffer", Napi::Function::New(env, ReleaseBuffer));
  exports.Set("kernel", Napi::Function::New(env, KernelFn));
  exports.Set("kernelMatrix", Napi::Function::New(env, KernelMatrix));
  exports.Set("scanBench", Napi::Function::New(env, ScanBench));
  exports.Set("sumBench", Napi::Function::New(env, SumBench));
  exports.Set("searchLaneStats", Napi::Function::New(env, lane_stats));
  exports.Set("snapshotBufferBytes", Napi::Function::New(env, SnapshotBufferBytes));
  exports.Set("searchLaneHold", Napi::Function::New(env, lane_hold));
  exports.Set("setSearchLaneDefaults", Napi::Function::New(env, lane_defaults));
  exports.Set("limits", LimitsObject(env));
  exports.Set("NativeIndex", NativeIndex::Init(env));
  init_gpu(env, exports);
  return exports;
}

}  // namespace
}  // namespace napi
}  // namespace qv

static Napi::Object InitQuiver(Napi::Env env, Napi::Object exports) { return qv::napi::Init(env, exports); }

NODE_API_MODULE(quiver, InitQuiver)
