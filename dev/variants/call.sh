#!/usr/bin/env bash
# The next device call (one, within the 10-minute limit), from the repository root on the GPU
# machine: the waiting variants' GPU tests, then their A/B against the base (README.md) in BF16
# and in FP8, then the allocator probe under memcheck (docs/reliability.md). A step is skipped
# once too little time is left.
#   run: command "bash dev/variants/call.sh", carry ["build-ab"]
# Build first (here, ~6 min each):
#   dev/build_variant.sh base
#   dev/build_variant.sh finalize-batch test_gpu_moe test_gpu_fp8
#   dev/build_variant.sh fp8-quant-trigger test_gpu_fp8
#   dev/build_variant.sh decode-warps2 test_gpu_decode test_gpu_fp8
# decode-warps2's switch is FUSEDMOE_DEV_WARPS2 (2 warps per CTA from that many CTAs per SM on):
# its tests run with 0 (every decode GEMM on 2 warps), its A/B with 8 and 24.
# Prints only summaries, so that all of it fits in the output that comes back.
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
tests finalize-batch test_gpu_moe test_gpu_fp8
tests fp8-quant-trigger test_gpu_fp8
FUSEDMOE_DEV_WARPS2=0 tests decode-warps2 test_gpu_decode test_gpu_fp8
echo "tests: $((SECONDS - start)) s"
w=(--wheel base=build-ab/base/*.whl --wheel fin=build-ab/finalize-batch/*.whl
  --wheel w2x8=build-ab/decode-warps2/*.whl --env w2x8=FUSEDMOE_DEV_WARPS2=8
  --wheel w2x24=build-ab/decode-warps2/*.whl --env w2x24=FUSEDMOE_DEV_WARPS2=24)
models=qwen3-30b-a3b,llama4-scout,deepseek-v3
timeout $(($(left) - 250)) python3 dev/ab_wheels.py --dtype bf16 --rounds 3 --out /tmp/ab_bf16 \
  "${w[@]}" --models $models --tokens 1,4,16,64 2>&1 | table
echo "A/B bf16: $((SECONDS - start)) s"
timeout $(($(left) - 30)) python3 dev/ab_wheels.py --dtype fp8 --rounds 3 --out /tmp/ab_fp8 \
  "${w[@]}" --wheel qtrig=build-ab/fp8-quant-trigger/*.whl --models $models \
  --tokens 1,4,16,64 2>&1 | table
echo "A/B fp8: $((SECONDS - start)) s"
python3 -m pip install -q --no-deps --no-index --force-reinstall build-ab/base/*.whl > /dev/null 2>&1
(($(left) > 25)) && timeout $(($(left) - 3)) compute-sanitizer --tool memcheck --leak-check no \
  --kernel-name kns=fusedmoe python3 dev/alloc_probe.py 2>&1 | grep -v "^  trace\|^  new segment\|^      " | tail -30
echo "all: $((SECONDS - start)) s"
