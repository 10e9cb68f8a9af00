#!/usr/bin/env bash
# Sanitizer builds of the native core and their drivers (test/native/), without node-gyp:
#   ThreadSanitizer:        test/native/stress.cpp     add/remove/search at once on every index kind
#   AddressSanitizer+UBSan: test/native/index_test.cpp round trips, truncated and corrupt files
#                           test/native/oom_test.cpp   each allocation of a write failing in turn
#   libFuzzer (clang):      native/fuzz/               scripts/fuzz-native.sh, QUIVER_FUZZ_SECONDS each
# Fails (non-zero) on any sanitizer report. A sanitizer whose runtime is missing (gcc's libtsan,
# libasan, libubsan) is skipped with a message saying so; the check compiles and runs a trivial
# program with the flag.
set -euo pipefail
cd "$(dirname "$0")/.."
CXX=${CXX:-g++}
JOBS=${JOBS:-$(nproc 2>/dev/null || echo 2)}

# Whether $CXX can build and run a program with these flags.
runtime_ok() {
  local dir rc=0
  dir=$(mktemp -d)
  printf '#include <thread>\nint main() { std::thread t([] {}); t.join(); return 0; }\n' >"$dir/t.cpp"
  "$CXX" -std=c++17 -pthread "$@" "$dir/t.cpp" -o "$dir/t" >/dev/null 2>&1 && "$dir/t" >/dev/null 2>&1 || rc=1
  rm -rf "$dir"
  return $rc
}

export TSAN_OPTIONS="halt_on_error=1 second_deadlock_stack=1 ${TSAN_OPTIONS:-}"
export ASAN_OPTIONS="detect_leaks=1 abort_on_error=0 ${ASAN_OPTIONS:-}"
export UBSAN_OPTIONS="print_stacktrace=1 ${UBSAN_OPTIONS:-}"

ran=0
if runtime_ok -fsanitize=thread; then
  echo "== ThreadSanitizer: building (.cache/sanitize/tsan) =="
  make -s -j"$JOBS" -f test/native/Makefile SAN=tsan CXX="$CXX"
  echo "== ThreadSanitizer: stress =="
  .cache/sanitize/tsan/bin/stress
  ran=$((ran + 1))
else
  echo "== ThreadSanitizer: SKIPPED: $CXX cannot build and run with -fsanitize=thread here (libtsan missing?) =="
fi
if runtime_ok -fsanitize=address,undefined; then
  echo "== AddressSanitizer + UBSan: building (.cache/sanitize/asan) =="
  make -s -j"$JOBS" -f test/native/Makefile SAN=asan CXX="$CXX"
  echo "== AddressSanitizer + UBSan: index_test =="
  .cache/sanitize/asan/bin/index_test
  echo "== AddressSanitizer + UBSan: oom_test =="
  .cache/sanitize/asan/bin/oom_test
  ran=$((ran + 1))
else
  echo "== AddressSanitizer + UBSan: SKIPPED: $CXX cannot build and run with -fsanitize=address,undefined here (libasan/libubsan missing?) =="
fi
echo "sanitizers: $ran of 2 ran"
# libFuzzer targets of the index file parsers (clang; skipped, saying so, without it).
bash scripts/fuzz-native.sh
