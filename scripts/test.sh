#!/usr/bin/env bash
# The whole test suite, from a fresh clone: system packages, install + build, CUDA compile check, tests.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/system-deps.sh

if [ ! -f node_modules/.package-lock.json ]; then
  npm ci
fi
# Incremental: rebuilds the addon and the TypeScript only where sources changed.
node-gyp build >/dev/null 2>&1 || node-gyp rebuild
npx tsc -p tsconfig.json

# The optional CUDA build is compiled wherever nvcc exists (a GPU is not needed to compile it),
# so a break in native/cuda is caught even on machines without a GPU.
if command -v nvcc >/dev/null 2>&1 && [ -f native/CMakeLists.txt ]; then
  echo "== compiling the CUDA build (nvcc found) =="
  npm run build:cuda
fi

npx vitest run "$@"
