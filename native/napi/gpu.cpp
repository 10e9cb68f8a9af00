#include "napi/gpu.h"

#ifndef QUIVER_CUDA
namespace qv {
namespace napi {
void init_gpu(Napi::Env, Napi::Object) {}
}  // namespace napi
}  // namespace qv
#endif
