#!/usr/bin/env bash
# ncu detail of the FP8 grouped GEMMs (experiment; issue 18): speed of light, tensor pipe
# (wgmma) activity, L2 and DRAM bytes, occupancy and warp stall reasons of the first GEMM1 and
# GEMM2 launch of one eager FP8 call (dev/ab_wheels.py's worker) at one point, for each wheel given.
# Usage (device): dev/ncu_fp8.sh MODEL T LABEL=WHEEL [LABEL=WHEEL ...]
#   e.g. dev/ncu_fp8.sh qwen3-30b-a3b 4096 base=build-carry/base/*.whl new=build-carry/wheel/*.whl
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
export PATH="$PATH:/usr/local/cuda/bin"
(( $# >= 3 )) || { sed -n 2,6p "$0" >&2; exit 2; }
model=$1 tokens=$2
shift 2
work=/tmp/ncu_fp8
mkdir -p "$work"
# (sm__pipe_tensor_op_gmma_cycles_active is n/a on the H200; the tensor pipe's busy cycles are
# sm__pipe_tensor_cycles_active_realtime, and wgmma's smem reads have their own bank counters.)
metrics=sm__pipe_tensor_cycles_active_realtime.avg.pct_of_peak_sustained_elapsed
metrics+=,sm__inst_executed_pipe_tensor_op_gmma.sum
metrics+=,l1tex__data_pipe_lsu_wavefronts_mem_shared_op_gmma.sum
metrics+=,l1tex__data_bank_conflicts_pipe_lsu_mem_shared_op_gmma.sum
metrics+=,lts__t_bytes.sum,dram__bytes_read.sum,lts__t_sector_hit_rate.pct
for spec in "$@"; do
  label=${spec%%=*}
  # shellcheck disable=SC2206
  wheel=(${spec#*=})
  python3 -m pip install -q --no-deps --no-index --upgrade --target "$work/site_$label" "${wheel[0]}" || exit 1
  echo "######## $label (${wheel[0]}): $model T=$tokens"
  PYTHONPATH="$work/site_$label" timeout 300 ncu --clock-control none --kernel-name regex:"sm90_gemm_fp8" \
    --launch-count 2 --metrics "$metrics" \
    --section SpeedOfLight --section Occupancy --section LaunchStats --section WarpStateStats \
    --section MemoryWorkloadAnalysis --section SchedulerStats \
    python3 dev/ab_wheels.py --worker --models "$model" --tokens "$tokens" --warmup 1 --reps 1 \
    --dump "$work/dump_$label" --result "$work/result_$label.json" 2>&1 |
    grep -vE '^\s*$|^==PROF==|----' |
    grep -E 'sm90_|Duration|Frequency|gmma|tensor|lts__t|dram__bytes|DRAM Throughput|Memory Throughput|Compute \(SM\)|Achieved Occupancy|Registers|Waves Per SM|Stall|stall|cycles being stalled|Issued Warp|No Eligible|Active Warps|Eligible Warps|L2 Hit|Mem Busy|Max Bandwidth|warp.*spent|Est\. Speedup' |
    cut -c1-220
done
