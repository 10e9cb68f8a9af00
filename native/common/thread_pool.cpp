#include "common/thread_pool.h"

#include <cstdlib>

namespace qv {

int default_threads() {
  static const int n = [] {
    if (const char* env = std::getenv("QUIVER_THREADS")) {
      int v = std::atoi(env);
      if (v > 0) return v;
    }
    unsigned hc = std::thread::hardware_concurrency();
    return hc == 0 ? 1 : static_cast<int>(hc);
  }();
  return n;
}

}  // namespace qv
