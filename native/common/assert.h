// QV_ASSERT: for broken invariants (bugs). Aborts with expression, file and line. Never for input.
#pragma once
#include <cstdio>
#include <cstdlib>

#define QV_ASSERT(cond)                                                                  \
  do {                                                                                   \
    if (!(cond)) {                                                                       \
      std::fprintf(stderr, "quiver: assertion failed: %s at %s:%d\n", #cond, __FILE__, \
                   __LINE__);                                                            \
      std::abort();                                                                      \
    }                                                                                    \
  } while (0)
