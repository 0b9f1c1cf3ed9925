#!/usr/bin/env bash
# ncu's per-instruction warp stall sampling of the FP8 grouped GEMMs (experiment; issue 18): the
# first GEMM1 and GEMM2 launch of one eager FP8 call at one point, for one wheel; writes the
# source page (SASS, one row per instruction, stall reasons per row) to $OUT/src_LABEL.csv for
# dev/ncu_regions.py, which sums the samples by code region (mainloop, epilogue, producer).
# Usage (device): dev/ncu_source.sh MODEL T LABEL=WHEEL [KERNEL_REGEX]
#   e.g. dev/ncu_source.sh qwen3-30b-a3b 4096 base=build-ab/base/*.whl
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
export PATH="$PATH:/usr/local/cuda/bin"
(( $# >= 3 )) || { sed -n 2,8p "$0" >&2; exit 2; }
model=$1 tokens=$2 label=${3%%=*} regex=${4:-sm90_gemm_fp8}
# shellcheck disable=SC2206
wheel=(${3#*=})
work=/tmp/ncu_source_$label
mkdir -p "$work" "${OUT:-/tmp}"
python3 -m pip install -q --no-deps --no-index --upgrade --target "$work/site" "${wheel[0]}" || exit 1
PYTHONPATH="$work/site" timeout 300 ncu --clock-control none --kernel-name regex:"$regex" \
  --launch-count 2 --section WarpStateStats --section SourceCounters --import-source no \
  -f -o "$work/rep" python3 dev/ab_wheels.py --worker --models "$model" --tokens "$tokens" \
  --warmup 1 --reps 1 --dump "$work/dump" --result "$work/result.json" > "$work/log" 2>&1 ||
  { tail -5 "$work/log"; exit 1; }
ncu -i "$work/rep.ncu-rep" --page source --print-source sass --csv > "${OUT:-/tmp}/src_$label.csv"
echo "ncu_source: ${OUT:-/tmp}/src_$label.csv ($model T=$tokens, $label)"
