#!/usr/bin/env bash
# The next device call (one, within the 10-minute limit), from the repository root on the GPU
# machine: the waiting variant's GPU tests and its A/B against the base (README.md), then two
# measurements on the base that the next decisions wait for: the decode timelines of issue 17
# (dev/decode_timeline.py: where a call's microseconds go, with and without PDL) and the allocator
# probe under memcheck (docs/reliability.md). A step is skipped once too little time is left.
#   run: command "bash dev/variants/call.sh", carry ["build-ab/base", "build-ab/fp8-decode-early"]
# Build first (here, ~6 min each):
#   dev/build_variant.sh base
#   dev/build_variant.sh fp8-decode-early test_gpu_fp8 test_gpu_moe
# Prints only summaries, so that all of it fits in the output that comes back: the A/B's table
# (its JSON stays on the machine), a line per timeline (the timelines themselves come back as
# $OUT/timeline*.json) and the probe's last lines.
set -uo pipefail
start=$SECONDS
left() { echo $((585 - SECONDS + start)); }
tests() {  # variant test...
  local v=$1
  shift
  for t in "$@"; do
    echo "== $v $t: $(timeout 120 "build-ab/$v/$t" --gtest_color=no 2>&1 |
      grep -E '^\[  (PASSED|FAILED)|FAILED  \]' | tr '\n' ' ')"
  done
}
table() { grep -v "^  " | grep -v "^longest kernels" | grep -v "_wheels/site_"; }
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
tests fp8-decode-early test_gpu_fp8 test_gpu_moe
echo "tests: $((SECONDS - start)) s"
timeout 200 python3 dev/ab_wheels.py --dtype fp8 --rounds 4 --out /tmp/ab \
  --wheel base=build-ab/base/*.whl --wheel early=build-ab/fp8-decode-early/*.whl \
  --models qwen3-30b-a3b,llama4-scout,deepseek-v3 --tokens 1,4,16,64 2>&1 | table
echo "A/B: $((SECONDS - start)) s"
python3 -m pip install -q --no-deps --no-index --force-reinstall build-ab/base/*.whl > /dev/null 2>&1
for flags in "" "--ep" "--fp8"; do
  (($(left) > 60)) || break
  echo "== timeline $flags"
  timeout $(($(left) - 50)) python3 dev/decode_timeline.py --models qwen3-30b-a3b,llama4-scout \
    --tokens 1,16 $flags --out "${OUT:-/tmp}/timeline${flags//-/_}.json" 2>&1 | grep "kernels, span"
done
echo "timelines: $((SECONDS - start)) s"
(($(left) > 45)) && timeout $(($(left) - 5)) compute-sanitizer --tool memcheck --leak-check no \
  --kernel-name kns=fusedmoe python3 dev/alloc_probe.py 2>&1 | tail -25
echo "all: $((SECONDS - start)) s"
