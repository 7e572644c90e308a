#!/usr/bin/env bash
# Source this first in every device command (`source scripts/device-env.sh`): on a fresh machine it unpacks what
# scripts/device-pack.sh carried (node_modules, ../shared as /tmp/shared), sets up Node.js and, unless
# DEVICE_ENV_NO_BUILD is set, builds native/ for sm_90 (about 80-100 s) — on a warm machine each step is already
# done and skipped (DEVICE_ENV_BUILD=always builds anyway: the build is incremental, and a warm machine keeps the
# last call's build, which native/ edits since then would not be in; scripts/gpu-verify.sh sets it). A follow-up call on a machine that went back and came fresh then still works, instead of
# failing on a missing package or engine tool (session 36 lost a call so).
[ -d node_modules/vitest ] || tar xzf .device/nm.tgz
[ -d /tmp/shared/configs ] || tar xzf .device/shared.tgz -C /tmp
export TSLLM_SHARED=/tmp/shared
source .cuda-host/setup.sh >/dev/null
if [ -z "${DEVICE_ENV_NO_BUILD:-}" ] && { [ "${DEVICE_ENV_BUILD:-}" = always ] || [ ! -x native/build/kernels_test ]; }; then
  t0=$(date +%s)
  CUDA_ARCHS=${CUDA_ARCHS:-90} bash native/build.sh >"${OUT:-/tmp}/build.log" 2>&1 || { tail -30 "${OUT:-/tmp}/build.log"; return 1 2>/dev/null || exit 1; }
  echo "build: $(( $(date +%s) - t0 )) s"
fi
