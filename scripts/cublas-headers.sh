#!/usr/bin/env bash
# cuBLAS / cuBLASLt headers for compile checks of native/src/runtime on a machine without them (this CPU machine:
# nvcc 13 but no cuBLAS): Debian's nvidia-cuda-dev (CUDA 11.8, 774 MB download), headers only, into DIR
# (default /tmp/cub118). Then, e.g.:
#   g++ -std=c++17 -fsyntax-only -I/tmp/cub118 -I/usr/local/cuda-13.0/include -Inative/include -Inative/src \
#     native/src/runtime/gemm.cc
# CUDA 11.8's cublasLt.h lacks the 12.9+ scaling modes, so quant_gemm.cc's outer-vector code does not compile
# against it; everything else does.
set -euo pipefail
dir=${1:-/tmp/cub118}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(cd "$work" && apt-get download nvidia-cuda-dev >/dev/null)
mkdir -p "$dir"
dpkg-deb --fsys-tarfile "$work"/nvidia-cuda-dev_*.deb |
  tar -x -C "$work" ./usr/include/cublas.h ./usr/include/cublasLt.h ./usr/include/cublas_api.h ./usr/include/cublas_v2.h
cp "$work"/usr/include/cublas*.h "$dir"/
echo "cuBLAS headers in $dir"
