#!/usr/bin/env bash
# The weight-only int8 / int4 GEMM (int variants 19-21, 17-256 token rows; session 18) in one device command:
# gemv_bench's variants per Llama-2-7B shape at ROWS token rows (µs, TFLOP/s), ncu's stall reasons for variant 20 on
# int4 gate_up, then Llama-2-7B int4-wo g128 and int8-wo at batch ROWS with the tuner choosing between the GEMM and
# dequantise + linear (default) against dequantise + linear only (TSLLM_QGEMV_TUNE_BELOW=19), alternating in one run,
# and the tuner's timings (TSLLM_PROFILE=1). After native/build exists (scripts/gpu-verify.sh builds it):
#   bash scripts/gpu-int-gemm.sh SHARED [ROWS]      (ROWS: 64 unless given)
set -uo pipefail
shared=${1:-../shared} rows=${2:-64}
for k in int4 int8; do
  echo "== native/build/gemv_bench $k all -1 $rows"
  timeout 60 native/build/gemv_bench "$k" all -1 "$rows" | grep -E "copy|^$k .*M=|plain +v(19|20|21) "
done
echo "== ncu: variant 20, int4 gate_up, $rows rows (stalls per issued instruction above 0.05 cycles)"
timeout 90 ncu --clock-control none -k regex:wo_gemm --launch-skip 8 --launch-count 1 --section SpeedOfLight \
  --section Occupancy --section WarpStateStats \
  --metrics 'regex:smsp__average_warps_issue_stalled_.*_per_issue_active\.ratio' \
  native/build/gemv_bench int4 gate_up 20 "$rows" 2>&1 |
  grep -E "Duration|Throughput|Registers|Occupancy|Warp Cycles|stalled" | awk '$0 !~ /stalled/ || $NF + 0 > 0.05'
for q in int4-wo int8-wo; do
  timeout 150 bash scripts/gpu-latency-ab.sh "$shared" "$q" "$rows" - TSLLM_QGEMV_TUNE_BELOW=19 - \
    TSLLM_QGEMV_TUNE_BELOW=19 TSLLM_PROFILE=1 | grep -vE "N=32000"
done
