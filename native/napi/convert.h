// Conversions at the JS boundary shared by the CPU and GPU bindings: typed arrays in (copied, so JS
// may reuse its buffers at once), integers checked, {labels, distances} out.
#pragma once
#include <napi.h>

#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "napi/errors.h"

namespace qv {
namespace napi {

template <typename T>
std::vector<T> copy_typed(Napi::Env env, Napi::Value v, napi_typedarray_type type, const char* what) {
  if (!v.IsTypedArray() || v.As<Napi::TypedArray>().TypedArrayType() != type)
    throw_invalid(env, std::string(what) + " has the wrong type");
  auto ta = v.As<Napi::TypedArrayOf<T>>();
  return std::vector<T>(ta.Data(), ta.Data() + ta.ElementLength());
}

inline uint32_t to_u32(Napi::Env env, Napi::Value v, const char* what) {
  if (!v.IsNumber()) throw_invalid(env, std::string(what) + " must be a number");
  double d = v.As<Napi::Number>().DoubleValue();
  if (!(d >= 0) || d > 4294967295.0 || d != std::floor(d))
    throw_invalid(env, std::string(what) + " must be a non-negative integer");
  return static_cast<uint32_t>(d);
}

// {labels: Uint32Array, distances: Float32Array}, both views of one ArrayBuffer (labels, then
// distances): one buffer instead of two is a whole V8 backing store less per answer.
inline Napi::Object search_results(Napi::Env env, const std::vector<uint32_t>& labels, const std::vector<float>& distances) {
  const size_t nl = labels.size(), nd = distances.size();
  auto buf = Napi::ArrayBuffer::New(env, (nl + nd) * 4);
  auto l = Napi::Uint32Array::New(env, nl, buf, 0);
  auto d = Napi::Float32Array::New(env, nd, buf, nl * 4);
  if (nl != 0) std::memcpy(l.Data(), labels.data(), nl * 4);
  if (nd != 0) std::memcpy(d.Data(), distances.data(), nd * 4);
  Napi::Object o = Napi::Object::New(env);
  o.Set("labels", l);
  o.Set("distances", d);
  return o;
}

}  // namespace napi
}  // namespace qv
