#!/usr/bin/env bash
# SASS of a kernel file on a machine without the GPU or CUDA 13's cuobjdump (this CPU machine has nvcc and ptxas
# only): nvcc -cubin for sm_90, the cubin's ELF header rewritten to the format older tools read (CUDA 13 writes
# OS/ABI 0x41, ABI version 8 and the arch in e_flags bits 8-15; CUDA 11.8's cuobjdump reads 0x33 / 7 / 0x5a055a),
# then CUDA 11.8's cuobjdump from Debian's non-free nvidia-cuda-toolkit (no GPU needed). Session 17 counted the
# int4 gemv's loop instructions this way without spending device time.
#   bash scripts/sass.sh native/src/kernels/quant_gemv_int4.cu [kernel-regex] > out.sass
#   python3 scripts/sass_loop.py out.sass 6b0 1890      (opcode histogram of the instructions at 0x6b0..0x1890)
# The tool, once per machine (about 80 MB):
#   apt-get download nvidia-cuda-toolkit (with `non-free` in the sources) && dpkg -x nvidia-cuda-toolkit_*.deb DIR
#   CUOBJDUMP=DIR/usr/bin/cuobjdump
set -euo pipefail
src=$1 pat=${2:-.}
cuobjdump=${CUOBJDUMP:-/tmp/nvt/x/usr/bin/cuobjdump}
[ -x "$cuobjdump" ] || { echo "sass.sh: no cuobjdump at $cuobjdump (see the header of this script)" >&2; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
nvcc -std=c++17 -arch=sm_90 -O3 -cubin -I"$(dirname "$0")/../native/src" -o "$work/k.cubin" "$src"
python3 - "$work/k.cubin" <<'PY'
import struct, sys
p = sys.argv[1]
d = bytearray(open(p, "rb").read())
d[7], d[8] = 0x33, 7  # OS/ABI CUDA, ABI version 7
struct.pack_into("<I", d, 48, 0x5A055A)  # e_flags: sm_90, virtual sm_90
open(p, "wb").write(d)
PY
"$cuobjdump" -sass "$work/k.cubin" | awk -v pat="$pat" '/Function : /{on = ($0 ~ pat)} on'
