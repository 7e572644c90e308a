#!/usr/bin/env bash
# One device command for a session's GPU checks (after `.device/` and `.cuda-host/` were carried, see
# native/README.md "GPU machine"): unpack, build for sm_90, kernels_test (all, then the quant group), the GPU
# vitest suite, then whatever extra command lines follow as arguments (each run with bash -c, output to $OUT too).
#   bash scripts/gpu-verify.sh ['extra command' ...]
set -uo pipefail
out=${OUT:-/tmp/out}
mkdir -p "$out"
OUT=$out DEVICE_ENV_BUILD=always source scripts/device-env.sh || exit 1
# (Follow-up calls: `source scripts/device-env.sh` first, which redoes the above only where the machine is fresh.)
# Each test step has a time limit (TEST_TIMEOUT seconds, default 240): a kernel that hangs (session 16: an mma.sync
# reached by half a warp) then costs that, not the rest of the device call; rc 124 says which step it was.
lim=${TEST_TIMEOUT:-240}
if [ -z "${SKIP_TESTS:-}" ]; then
  timeout "$lim" native/build/kernels_test >"$out/kernels_test.log" 2>&1
  echo "kernels_test rc=$?"; grep -E "FAIL|SUMMARY" "$out/kernels_test.log" | tail -8
  timeout "$lim" native/build/kernels_test quant >"$out/kernels_test_quant.log" 2>&1
  echo "kernels_test quant rc=$?"; grep -E "FAIL|SUMMARY" "$out/kernels_test_quant.log" | tail -8
  timeout "$lim" node node_modules/vitest/vitest.mjs run --config test-gpu/vitest.config.ts >"$out/vitest-gpu.log" 2>&1
  echo "GPU vitest rc=$?"; grep -E "Test Files|Tests |FAIL|×" "$out/vitest-gpu.log" | tail -12
fi
i=0
for cmd in "$@"; do
  i=$((i + 1))
  echo "== $cmd"
  bash -c "$cmd" 2>&1 | tee "$out/extra$i.log" | tail -${TAIL:-25}
done
