#!/usr/bin/env bash
# npm run test:gpu — on a machine with a CUDA GPU: builds native/, runs the kernel tests (if any), then the
# GPU test suite test-gpu/*.test.ts (vitest), which compiles tiny engines with the TypeScript compiler and
# checks the native runtime against the fixtures' goldens. Extra arguments go to vitest.
set -uo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bash "$root/native/build.sh" || exit 1
status=0
if [ -f "$root/native/tests/kernels_test.cu" ]; then
  echo "== kernels_test"
  "$root/native/build/kernels_test" || status=1
fi
echo "== test-gpu (vitest)"
cd "$root" && node "$root/node_modules/vitest/vitest.mjs" run --config test-gpu/vitest.config.ts "$@" || status=1
exit $status
