#!/usr/bin/env bash
# ncu detail of one decode GEMM launch (experiment; issue 6): speed of light, occupancy, warp
# stall reasons and memory of the first decode GEMM1 and GEMM2 of dev/time_decode.cu at one point.
# Usage (device, after dev/profile_decode.sh built /tmp/time_decode): dev/ncu_decode_kernel.sh MODEL T
set -uo pipefail
export PATH="$PATH:/usr/local/cuda/bin"
model=${1:-qwen3-30b-a3b} tokens=${2:-1}
FUSEDMOE_DEV_REPS=1 timeout 300 ncu --clock-control none --kernel-name regex:"sm90_decode_gemm" \
  --launch-skip 2 --launch-count 2 \
  --section SpeedOfLight --section Occupancy --section LaunchStats --section WarpStateStats \
  --section MemoryWorkloadAnalysis --section SchedulerStats \
  /tmp/time_decode "$model" "$tokens" 2>&1 |
  grep -vE '^\s*$|^==PROF==|----' |
  grep -E 'sm90_|Duration|DRAM Throughput|Memory Throughput|Achieved Occupancy|Theoretical Occupancy|Registers|Block Limit|Waves Per SM|Stall|stall|cycles being stalled|Issued Warp|No Eligible|Active Warps|Eligible Warps|L2 Hit|L1/TEX Hit|Mem Busy|Max Bandwidth|warp.*spent|OPT|Est\. Speedup' |
  cut -c1-220
