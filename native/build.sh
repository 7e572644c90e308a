#!/usr/bin/env bash
# Configures and builds the native runtime into native/build:
#   libtsllm.so (C ABI), tsllm_node.node (Node-API addon, needs $NODE_INCLUDE), tsllm_bench, kernels_test.
# Needs CUDA 13 (nvcc) and cuBLASLt; NCCL is optional (tensor parallelism).
# Env: NODE_INCLUDE (node headers), TSLLM_CUBLAS_ROOT / NCCL_ROOT (non-standard installs), CUDA_ARCHS (default "80;90").
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
build="$here/build"

if ! command -v nvcc >/dev/null 2>&1; then
  for d in /usr/local/cuda/bin /usr/local/cuda-13/bin /opt/cuda/bin; do
    [ -x "$d/nvcc" ] && export PATH="$d:$PATH" && break
  done
fi
if ! command -v nvcc >/dev/null 2>&1; then
  echo "native/build.sh: nvcc not found: the native runtime needs CUDA 13 (nvcc, cuBLASLt) on this machine." >&2
  echo "  Install the CUDA toolkit (or put its bin/ on PATH) and run npm run build:native again." >&2
  exit 1
fi
if ! command -v cmake >/dev/null 2>&1; then
  echo "native/build.sh: cmake not found (need CMake >= 3.18)." >&2
  exit 1
fi

cuda_root=$(dirname "$(dirname "$(command -v nvcc)")")
extra=()
# cuBLASLt / NCCL from pip wheels (nvidia-cublas, nvidia-nccl-cu13) when the toolkit lacks them.
pip_nvidia=""
if command -v python3 >/dev/null 2>&1; then
  pip_nvidia=$(python3 -c 'import nvidia, os; print(list(nvidia.__path__)[0])' 2>/dev/null || true)
fi
if [ -z "${TSLLM_CUBLAS_ROOT:-}" ] && [ ! -f "$cuda_root/include/cublasLt.h" ] && [ -n "$pip_nvidia" ]; then
  h=$(find "$pip_nvidia" -name cublasLt.h 2>/dev/null | head -n1 || true)
  [ -n "$h" ] && TSLLM_CUBLAS_ROOT=$(dirname "$(dirname "$h")")
fi
if [ -n "${TSLLM_CUBLAS_ROOT:-}" ]; then
  extra+=("-DTSLLM_CUBLAS_ROOT=$TSLLM_CUBLAS_ROOT")
elif [ ! -f "$cuda_root/include/cublasLt.h" ]; then
  echo "native/build.sh: cuBLASLt not found (no $cuda_root/include/cublasLt.h); install cuBLAS or set TSLLM_CUBLAS_ROOT." >&2
  exit 1
fi
if [ -z "${NCCL_ROOT:-}" ] && [ ! -f "$cuda_root/include/nccl.h" ] && [ ! -f /usr/include/nccl.h ] && [ -n "$pip_nvidia" ]; then
  h=$(find "$pip_nvidia" -name nccl.h 2>/dev/null | head -n1 || true)
  [ -n "$h" ] && export NCCL_ROOT=$(dirname "$(dirname "$h")")
fi
[ -n "${NCCL_ROOT:-}" ] && extra+=("-DTSLLM_NCCL_ROOT=$NCCL_ROOT")
if [ -n "${NODE_INCLUDE:-}" ]; then
  extra+=("-DNODE_INCLUDE=$NODE_INCLUDE")
else
  ni="$(dirname "$(dirname "$(command -v node 2>/dev/null || echo /x/x)")")/include/node"
  if [ -f "$ni/node_api.h" ]; then extra+=("-DNODE_INCLUDE=$ni"); else echo "native/build.sh: NODE_INCLUDE not set: skipping the Node addon" >&2; fi
fi
gen=()
command -v ninja >/dev/null 2>&1 && gen=(-G Ninja)

cmake -S "$here" -B "$build" "${gen[@]}" -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_COMPILER="$(command -v nvcc)" \
  -DCMAKE_CUDA_ARCHITECTURES="${CUDA_ARCHS:-80;90}" "${extra[@]}"
cmake --build "$build" -j "$(nproc)"
echo "native/build.sh: built $(cd "$build" && ls libtsllm.so tsllm_node.node tsllm_bench kernels_test 2>/dev/null | tr '\n' ' ')"
