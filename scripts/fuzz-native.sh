#!/usr/bin/env bash
# libFuzzer targets of the native core (native/fuzz/), built with clang++ -fsanitize=fuzzer,address,
# undefined (test/native/Makefile SAN=fuzz, objects in .cache/sanitize/fuzz/) and run for a bounded
# time each: QUIVER_FUZZ_SECONDS (default 30; scripts/sanitize.sh runs it), on a corpus in
# .cache/fuzz/corpus/<target>/ seeded by native/fuzz/seeds.cpp and kept between runs.
#   deserialize_fuzz   every index file parser (envelope, flat, HNSW, IVF-PQ)
# A crash, a sanitizer report, a leak, a run over 10 s (-timeout) or an allocation over 2 GiB
# (-malloc_limit_mb) fails the run: libFuzzer prints its seed (INFO: Seed: N; replay with
# -seed=N), and this script prints the input that did it in hex (also kept in .cache/fuzz/crashes/).
# Where clang++ or its libFuzzer runtime is missing (Debian: apt-get install clang), it skips,
# saying so.
set -euo pipefail
cd "$(dirname "$0")/.."
CXX=${FUZZ_CXX:-clang++}
SECONDS_EACH=${QUIVER_FUZZ_SECONDS:-30}
JOBS=${JOBS:-$(nproc 2>/dev/null || echo 2)}

dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
printf '#include <cstdint>\n#include <cstddef>\nextern "C" int LLVMFuzzerTestOneInput(const uint8_t*, size_t) { return 0; }\n' >"$dir/t.cpp"
if ! command -v "$CXX" >/dev/null 2>&1 || ! "$CXX" -fsanitize=fuzzer,address,undefined "$dir/t.cpp" -o "$dir/t" >/dev/null 2>&1 || ! "$dir/t" -runs=1 >/dev/null 2>&1; then
  echo "== libFuzzer: SKIPPED: $CXX cannot build and run with -fsanitize=fuzzer,address,undefined here (clang missing? apt-get install clang) =="
  exit 0
fi

echo "== libFuzzer: building (.cache/sanitize/fuzz) =="
make -s -j"$JOBS" -f test/native/Makefile SAN=fuzz CXX="$CXX"
bin=.cache/sanitize/fuzz/bin
mkdir -p .cache/fuzz/crashes
for target in deserialize_fuzz; do
  corpus=.cache/fuzz/corpus/$target
  mkdir -p "$corpus"
  "$bin/seeds" "$corpus" >/dev/null
  echo "== libFuzzer: $target for ${SECONDS_EACH} s =="
  rc=0
  ASAN_OPTIONS="detect_leaks=1 ${ASAN_OPTIONS:-}" UBSAN_OPTIONS="print_stacktrace=1 ${UBSAN_OPTIONS:-}" \
    "$bin/$target" -max_total_time="$SECONDS_EACH" -timeout=10 -malloc_limit_mb=2048 -rss_limit_mb=4096 \
    -print_final_stats=1 -artifact_prefix=.cache/fuzz/crashes/"$target"- "$corpus" >"$dir/log" 2>&1 || rc=$?
  grep -E '^INFO: Seed|^stat::number_of_executed_units|^stat::peak_rss' "$dir/log" || true
  if [ "$rc" -ne 0 ]; then
    tail -n 60 "$dir/log"
    for f in $(grep -oE "\\.cache/fuzz/crashes/$target-[^ ]+" "$dir/log" | sort -u); do
      echo "input ($f, $(wc -c <"$f") bytes, hex):"
      od -An -tx1 -v "$f" | tr -d ' \n' | head -c 131072
      echo
    done
    echo "== libFuzzer: $target FAILED (exit $rc) =="
    exit 1
  fi
done
echo "libFuzzer: every target ran ${SECONDS_EACH} s without a finding"
