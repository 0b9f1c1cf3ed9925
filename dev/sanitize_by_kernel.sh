#!/usr/bin/env bash
# Which kernel makes a compute-sanitizer run fail, hang or blow up? Runs one tool over one gtest
# filter once per kernel-name substring, instrumenting only the kernels whose names contain it
# (--kernel-name kns=...), all at once, and prints each run's result, wall time and peak host
# memory. On the GPU machine, after a build (scripts/device_check.sh or sanitize.sh's):
#   bash dev/sanitize_by_kernel.sh TOOL EXECUTABLE GTEST_FILTER SUBSTRING...
#   e.g. bash dev/sanitize_by_kernel.sh racecheck test_gpu_moe GpuMoe.SmallSortExtremes \
#          sm90_decode sm90_gemm expert_sort_small permute finalize decode_topk route gpu_ref_detail
# How issue 7's racecheck crash was found (H200): GpuMoe.SmallSortExtremes died with exit 9
# (killed at 128 GiB of host memory) with every kernel instrumented; instrumenting gpu_ref_detail
# (the tests' SIMT reference) alone reproduced it, each fusedmoe kernel alone passed under 4.2 GiB.
# A runaway run can starve the others of memory: read only the runs that finished.
# Environment: BUILD (default build-device), LIMIT seconds per run (default 110), OUT (logs).
set -uo pipefail
cd "$(dirname "$0")/.."
(( $# >= 4 )) || { sed -n 2,8p "$0" >&2; exit 2; }
tool=$1 exe="${BUILD:-build-device}/tests/$2" filter=$3
shift 3
out="${OUT:-/tmp}/sanitize_by_kernel"
mkdir -p "$out"
[[ -x $exe ]] || { echo "no $exe: build first" >&2; exit 2; }
export PATH="$PATH:/usr/local/cuda/bin"
# The same test environment as scripts/sanitize.sh's slow tools.
export FUSEDMOE_TEST_GPU_REFERENCE=simt FUSEDMOE_TEST_SANITIZER_SIZES=1

for kernel in "$@"; do
  /usr/bin/time -v timeout "${LIMIT:-110}" compute-sanitizer --tool "$tool" --print-limit 20 \
    --kernel-name "kns=$kernel" "$exe" --gtest_filter="$filter" --gtest_color=no \
    > "$out/$kernel.log" 2>&1 &
done
wait
for kernel in "$@"; do
  log="$out/$kernel.log"
  printf '%-20s %s | %s | wall %s | peak %s kB\n' "$kernel" \
    "$(grep -Eo 'ERROR SUMMARY: [0-9]+ errors?|\([0-9]+ errors, [0-9]+ warnings\)' "$log" | head -1)" \
    "$(grep -Eo '^\[ +(OK|FAILED) +\]' "$log" | sort | uniq -c | tr -s ' ' | tr '\n' ' ')" \
    "$(grep -Eo 'Elapsed \(wall clock\) time.*: [0-9:.]+' "$log" | grep -Eo '[0-9:.]+$')" \
    "$(grep -Eo 'Maximum resident set size \(kbytes\): [0-9]+' "$log" | grep -Eo '[0-9]+$')"
done
