#include "napi/errors.h"

namespace qv {
namespace napi {

namespace {
struct AddonData {
  Napi::FunctionReference error_class;
};
AddonData* data(Napi::Env env) {
  AddonData* d = env.GetInstanceData<AddonData>();
  if (!d) {
    d = new AddonData();
    env.SetInstanceData(d);
  }
  return d;
}
}  // namespace

void set_error_class(Napi::Env env, Napi::Function cls) { data(env)->error_class = Napi::Persistent(cls); }

Napi::Value make_error(Napi::Env env, const Status& st) {
  AddonData* d = data(env);
  Napi::String code = Napi::String::New(env, code_name(st.code()));
  Napi::String message = Napi::String::New(env, st.message());
  if (!d->error_class.IsEmpty()) return d->error_class.New({code, message});
  Napi::Error e = Napi::Error::New(env, st.message());
  e.Set("code", code);
  return e.Value();
}

void throw_status(Napi::Env env, const Status& st) { throw Napi::Error(env, make_error(env, st)); }

}  // namespace napi
}  // namespace qv
