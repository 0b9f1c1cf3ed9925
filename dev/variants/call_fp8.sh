#!/usr/bin/env bash
# One device call for the three FP8 variants waiting here (README.md), from the repository root on
# the GPU machine, within the 10-minute limit:
#   1. fp8-swap-ab's first run: test_gpu_fp8 with every grouped FP8 launch on the swap kernels;
#      fp8-trigger-early-lookup's test_gpu_fp8;
#   2. the trigger's A/B against the base at its points, 6 rounds (its sign moved between calls);
#   3. the swap kernels (switch at 64 rows per expert) and the decode crossover (decode up to
#      T = 256) against the base, the five FP8 models at T = 64, 256, 1024; skipped when the swap
#      test failed, since its outputs would differ anyway.
#   run: command "bash dev/variants/call_fp8.sh", carry ["build-ab"]
# Build first (here, ~6 min each): dev/build_variant.sh base;
#   dev/build_variant.sh fp8-trigger-early-lookup test_gpu_fp8;
#   dev/build_variant.sh fp8-decode-crossover; dev/build_variant.sh fp8-swap-ab test_gpu_fp8
set -uo pipefail
start=$SECONDS
left() { echo $((585 - SECONDS + start)); }
table() { grep -v "^  " | grep -v "^longest kernels" | grep -v "_wheels/site_"; }
summary() { grep -E '^\[  (PASSED|FAILED)|FAILED  \]|Failure|error' | head -20 | tr '\n' ' '; }
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
swap_log=/tmp/swap_test.log
FUSEDMOE_DEV_FP8_SWAP_MAX_MEAN_ROWS=1000000 timeout 90 build-ab/fp8-swap-ab/test_gpu_fp8 \
  --gtest_color=no > "$swap_log" 2>&1
swap_rc=$?
echo "== fp8-swap-ab test_gpu_fp8 (swap everywhere), rc $swap_rc: $(summary < "$swap_log")"
echo "== fp8-trigger-early-lookup test_gpu_fp8: $(timeout 90 \
  build-ab/fp8-trigger-early-lookup/test_gpu_fp8 --gtest_color=no 2>&1 | summary)"
echo "tests: $((SECONDS - start)) s"
timeout $(($(left) / 3)) python3 dev/ab_wheels.py --dtype fp8 --rounds 6 --out /tmp/ab_trig \
  --wheel base=build-ab/base/*.whl --wheel trig=build-ab/fp8-trigger-early-lookup/*.whl \
  --models qwen3-30b-a3b,llama4-scout,deepseek-v3 --tokens 1,4 2>&1 | table
echo "A/B trigger: $((SECONDS - start)) s"
wheels=(--wheel base=build-ab/base/*.whl
  --wheel dec=build-ab/fp8-decode-crossover/*.whl --env dec=FUSEDMOE_DEV_FP8_DECODE_MAX_T=256)
if ((swap_rc == 0)); then
  wheels+=(--wheel swap=build-ab/fp8-swap-ab/*.whl --env swap=FUSEDMOE_DEV_FP8_SWAP_MAX_MEAN_ROWS=64)
fi
timeout $(($(left) - 5)) python3 dev/ab_wheels.py --dtype fp8 --rounds 2 --out /tmp/ab_swap \
  --allow-diff "${wheels[@]}" \
  --models qwen3-30b-a3b,qwen3-235b-a22b,deepseek-v3,mixtral-8x7b,llama4-scout \
  --tokens 64,256,1024 2>&1 | table
echo "all: $((SECONDS - start)) s"
((swap_rc == 0)) || grep -B2 -A12 -m3 "Failure" "$swap_log" | head -60
