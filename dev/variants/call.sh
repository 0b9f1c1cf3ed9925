#!/usr/bin/env bash
# One device call for the variants waiting here (within the 10-minute limit), from the repository
# root on the GPU machine: each variant's GPU tests (every test_gpu_* built into build-ab/NAME),
# then their A/B against build-ab/base (README.md) in BF16 and in FP8, then the allocator probe
# under memcheck (docs/reliability.md). A step is skipped once too little time is left.
#   run: command "bash dev/variants/call.sh NAME...", carry ["build-ab"]
# Build first (here, ~6 min each): dev/build_variant.sh base; dev/build_variant.sh NAME test_gpu_...
# Environment: MODELS (default qwen3-30b-a3b,llama4-scout,deepseek-v3), TOKENS (1,4,16,64),
# ROUNDS (3), DTYPES ("bf16 fp8"), LIMIT (585: the seconds this script may take, for a call that
# runs more after it), TESTS (1; 0: skip the tests, e.g. a second A/B of the same builds), PROBE
# (1; 0: skip the allocator probe), AB_ARGS (more arguments for dev/ab_wheels.py, for every dtype
# of the call, e.g. --routed with DTYPES=fp8).
# Prints only summaries, so that all of it fits in the output that comes back; the whole of each
# step's output goes to $OUT (tests.log, ab_bf16.log, ab_fp8.log, probe.log), which comes back as
# files even when the printed tail is cut.
OUT_DEFAULT=/tmp/variants_out LIMIT_DEFAULT=585
source "$(dirname "$0")/call_common.sh"
wheels=(--wheel base=build-ab/base/*.whl)
for v in "$@"; do
  for t in build-ab/"$v"/test_gpu_*; do
    [[ -x $t && ${TESTS:-1} != 0 ]] || continue
    echo "== $v $(basename "$t"): $(timeout 120 "$t" --gtest_color=no 2>&1 | tee -a "$OUT/tests.log" |
      grep -E '^\[  (PASSED|FAILED)|FAILED  \]' | tr '\n' ' ')"
  done
  wheels+=(--wheel "$v=build-ab/$v/*.whl")
done
echo "tests: $((SECONDS - start)) s"
read -ra dtypes <<< "${DTYPES-bf16 fp8}"  # DTYPES= (empty): the tests alone
for i in "${!dtypes[@]}"; do
  dtype=${dtypes[$i]}
  # an equal share of what is left for each A/B, 30 s kept for the probe
  budget=$((($(left) - (${PROBE:-1} != 0 ? 30 : 0)) / (${#dtypes[@]} - i)))
  ((budget > 30)) || break
  timeout $budget python3 dev/ab_wheels.py --dtype "$dtype" --rounds "${ROUNDS:-3}" \
    --out "/tmp/ab_$dtype" "${wheels[@]}" \
    --models "${MODELS:-qwen3-30b-a3b,llama4-scout,deepseek-v3}" --tokens "${TOKENS:-1,4,16,64}" \
    ${AB_ARGS:-} 2>&1 |
    tee "$OUT/ab_$dtype.log" | table
  echo "A/B $dtype: $((SECONDS - start)) s"
done
[[ ${PROBE:-1} != 0 ]] &&
  python3 -m pip install -q --no-deps --no-index --force-reinstall build-ab/base/*.whl > /dev/null 2>&1 &&
  (($(left) > 25)) && timeout $(($(left) - 3)) compute-sanitizer --tool memcheck --leak-check no \
  --kernel-name kns=fusedmoe python3 dev/alloc_probe.py 2>&1 | tee "$OUT/probe.log" |
  grep -v "^  trace\|^  new segment" | tail -30
echo "all: $((SECONDS - start)) s"
