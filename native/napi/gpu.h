// GPU entry points of the addon. The CPU build (node-gyp) registers nothing, so `gpuInfo` is absent
// and the TypeScript loader reports the CPU build. The CUDA build (cmake-js, QUIVER_CUDA defined)
// registers gpuInfo and the GPU search functions.
#pragma once
#include <napi.h>

namespace qv {
namespace napi {

void init_gpu(Napi::Env env, Napi::Object exports);

}  // namespace napi
}  // namespace qv
