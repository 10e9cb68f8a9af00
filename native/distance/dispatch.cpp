// Picks the kernel table once, at first use: the best level the CPU (and OS) supports, or the one
// QUIVER_SIMD names. A forced level the CPU lacks is recorded in dispatch_status(), which the
// binding turns into a QuiverError when the addon loads; kernels() then serves the best level.
#include <cstdlib>
#include <cstring>
#include <string>

#include "distance/distance.h"

namespace qv {

namespace {

#if defined(__x86_64__) || defined(_M_X64)
// XCR0: which register state the OS saves on context switch (bits 1-2 SSE/AVX, 5-7 AVX-512).
uint64_t xcr0() {
  uint32_t eax, edx;
  __asm__ volatile("xgetbv" : "=a"(eax), "=d"(edx) : "c"(0));
  return (uint64_t(edx) << 32) | eax;
}
bool os_avx() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx") && (xcr0() & 0x6) == 0x6;
}
bool os_avx512() { return os_avx() && (xcr0() & 0xE0) == 0xE0; }
#endif

struct Choice {
  const Kernels* table;
  Status status;
};

Choice choose() {
  SimdLevel best = SimdLevel::Serial;
  for (SimdLevel l : {SimdLevel::Avx512, SimdLevel::Avx2, SimdLevel::Neon}) {
    if (cpu_has(l) && kernels_for(l)) {
      best = l;
      break;
    }
  }
  const char* env = std::getenv("QUIVER_SIMD");
  if (env && *env) {
    SimdLevel forced;
    if (!parse_simd_level(env, &forced)) {
      return {kernels_for(best), invalid_argument(std::string("QUIVER_SIMD='") + env +
                                                  "' is not one of serial, avx2, avx512, neon")};
    }
    if (!kernels_for(forced)) {
      return {kernels_for(best), failed_precondition(std::string("QUIVER_SIMD=") + env + ": this CPU does not support " +
                                                     simd_level_name(forced) + " (best available: " +
                                                     simd_level_name(best) + ")")};
    }
    return {kernels_for(forced), Status::ok()};
  }
  return {kernels_for(best), Status::ok()};
}

const Choice& choice() {
  static const Choice c = choose();
  return c;
}

}  // namespace

const char* simd_level_name(SimdLevel l) {
  switch (l) {
    case SimdLevel::Serial: return "serial";
    case SimdLevel::Avx2: return "avx2";
    case SimdLevel::Avx512: return "avx512";
    case SimdLevel::Neon: return "neon";
  }
  return "serial";
}

bool parse_simd_level(const char* s, SimdLevel* out) {
  for (SimdLevel l : {SimdLevel::Serial, SimdLevel::Avx2, SimdLevel::Avx512, SimdLevel::Neon}) {
    if (std::strcmp(s, simd_level_name(l)) == 0) {
      *out = l;
      return true;
    }
  }
  return false;
}

bool cpu_has(SimdLevel l) {
  switch (l) {
    case SimdLevel::Serial: return true;
#if defined(__x86_64__) || defined(_M_X64)
    case SimdLevel::Avx2:
      return os_avx() && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    case SimdLevel::Avx512:
      return os_avx512() && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
             __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
             __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    case SimdLevel::Neon: return false;
#elif defined(__aarch64__)
    case SimdLevel::Neon: return true;
    default: return false;
#else
    default: return false;
#endif
  }
  return false;
}

const Kernels* kernels_for(SimdLevel l) {
  if (!cpu_has(l)) return nullptr;
  switch (l) {
    case SimdLevel::Serial: return serial_kernels();
    case SimdLevel::Avx2: return avx2_kernels();
    case SimdLevel::Avx512: return avx512_kernels();
    case SimdLevel::Neon: return neon_kernels();
  }
  return nullptr;
}

const Kernels& kernels() { return *choice().table; }
const Status& dispatch_status() { return choice().status; }

}  // namespace qv
