#!/usr/bin/env bash
# The device calls that measure the variants waiting here (README.md), from the repository root
# on the GPU machine: the variants' GPU tests, then their A/B against the base, within the
# 10-minute limit (a step is skipped once too little time is left). Two calls:
#   bash dev/variants/call.sh prefill   carry ["build-ab/base", "build-ab/prefill-gemm2-pingpong",
#                                              "build-ab/prefill-pingpong-both"]   (~44 MB)
#   bash dev/variants/call.sh decode    carry ["build-ab/base", "build-ab/decode-gemm2-after-wait",
#                                              "build-ab/decode-gemm2-preload"]   (~16 MB)
# Build first (here, ~6 min each):
#   dev/build_variant.sh base
#   dev/build_variant.sh prefill-gemm2-pingpong test_gpu_grouped_gemm test_gpu_moe
#   dev/build_variant.sh prefill-pingpong-both test_gpu_grouped_gemm test_gpu_moe
#   dev/build_variant.sh decode-gemm2-after-wait test_gpu_decode
#   dev/build_variant.sh decode-gemm2-preload test_gpu_decode
# Prints only the tests' summaries and the tables (the per-kernel lines are dropped, so that all
# of it fits in the output that comes back).
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
case ${1:-} in
  prefill)
    tests prefill-gemm2-pingpong test_gpu_grouped_gemm test_gpu_moe
    tests prefill-pingpong-both test_gpu_grouped_gemm test_gpu_moe
    echo "tests: $((SECONDS - start)) s"
    timeout $(($(left) - 5)) python3 dev/ab_wheels.py --dtype bf16 \
      --wheel base=build-ab/base/*.whl --wheel gemm2=build-ab/prefill-gemm2-pingpong/*.whl \
      --wheel both=build-ab/prefill-pingpong-both/*.whl \
      --models qwen3-30b-a3b,gpt-oss-120b,llama4-scout --tokens 256,1024,4096,16384 2>&1 | table
    ;;
  decode)
    tests decode-gemm2-after-wait test_gpu_decode
    tests decode-gemm2-preload test_gpu_decode
    echo "tests: $((SECONDS - start)) s"
    timeout $(($(left) - 100)) python3 dev/ab_wheels.py --dtype bf16 --rounds 4 \
      --wheel base=build-ab/base/*.whl --wheel after=build-ab/decode-gemm2-after-wait/*.whl \
      --wheel preload=build-ab/decode-gemm2-preload/*.whl \
      --models qwen3-30b-a3b,llama4-scout,gpt-oss-120b --tokens 1,4,16,32 2>&1 | table
    echo "A/B: $((SECONDS - start)) s"
    (($(left) > 40)) && timeout $(($(left) - 5)) python3 dev/ab_wheels.py --dtype bf16 --ep \
      --wheel ep_base=build-ab/base/*.whl --wheel ep_after=build-ab/decode-gemm2-after-wait/*.whl \
      --wheel ep_preload=build-ab/decode-gemm2-preload/*.whl --rounds 4 \
      --models qwen3-30b-a3b --tokens 1,16 2>&1 | table
    ;;
  *) echo "usage: bash dev/variants/call.sh prefill|decode" >&2; exit 2 ;;
esac
echo "all: $((SECONDS - start)) s"
