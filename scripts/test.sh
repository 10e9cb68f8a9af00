#!/usr/bin/env bash
# The whole test suite, from a fresh clone: system packages, install + build, CUDA compile check, tests.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/system-deps.sh

if [ ! -f node_modules/.package-lock.json ]; then
  npm ci
fi
# Incremental: rebuilds the addon and the TypeScript only where sources changed; the wire code is
# generated from proto/ first (src/rpc/gen/, not committed), since the tests run the sources.
npm run --silent install >/dev/null
npm run --silent gen:proto
npx tsc -p tsconfig.json
# The tests are type-checked too (tsconfig.test.json: everything above plus test/, no output).
npx tsc -p tsconfig.test.json

# The optional CUDA build is compiled wherever nvcc exists (a GPU is not needed to compile it),
# so a break in native/cuda is caught even on machines without a GPU.
if command -v nvcc >/dev/null 2>&1 && [ -f native/CMakeLists.txt ]; then
  echo "== compiling the CUDA build (nvcc found) =="
  npm run build:cuda
fi

# Sanitizer builds of the native core (ThreadSanitizer; AddressSanitizer + UBSan); each is skipped,
# with a message saying so, where gcc's runtime for it is missing. A report fails the run (after
# vitest, so that both results show).
sanitize_rc=0
bash scripts/sanitize.sh || sanitize_rc=$?

mkdir -p .cache
rc=0
npx vitest run --reporter=default --reporter=json --outputFile.json=.cache/vitest.json "$@" || rc=$?
# One plain closing line for CI: "vitest: N passed, N failed, N skipped".
node -e '
const r = JSON.parse(require("fs").readFileSync(".cache/vitest.json", "utf8"));
const skipped = r.numPendingTests + r.numTodoTests;
console.log(`vitest: ${r.numPassedTests} passed, ${r.numFailedTests} failed, ${skipped} skipped`);
' || true
if [ "$sanitize_rc" -ne 0 ]; then
  echo "sanitizers: FAILED (scripts/sanitize.sh exited $sanitize_rc)"
  [ "$rc" -ne 0 ] || rc=$sanitize_rc
fi
exit $rc
