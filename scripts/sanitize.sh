#!/usr/bin/env bash
# compute-sanitizer over the GPU test executables (issue 7): memcheck, racecheck, synccheck and
# initcheck, one summary line per tool with its error count; exits non-zero on any sanitizer
# error, any failed test or a timeout. Run it on the GPU machine after a build:
#   bash scripts/sanitize.sh [BUILD_DIR] [TOOL ...]
#     BUILD_DIR  default build-device (scripts/device_check.sh's); its tests/test_gpu_* are run
#     TOOL       any of memcheck racecheck synccheck initcheck (default: all four, in that order)
# A device command has a 10-minute limit, and all four tools over everything do not fit in two.
# Three calls did it on an H200 (20e11ca's build, no timeout; docs/reliability.md), after a build:
#   FUSEDMOE_SANITIZE_SHARDS=6 FUSEDMOE_SANITIZE_JOBS=16 FUSEDMOE_SANITIZE_TIMEOUT=480 \
#     bash scripts/sanitize.sh build-device memcheck synccheck                           (408 s)
#   FUSEDMOE_SANITIZE_PYTHON=0 FUSEDMOE_SANITIZE_SHARDS=8 FUSEDMOE_SANITIZE_JOBS=16 \
#     FUSEDMOE_SANITIZE_TIMEOUT=470 bash scripts/sanitize.sh build-device racecheck initcheck  (255 s)
#   FUSEDMOE_SANITIZE_EXECUTABLES=none FUSEDMOE_SANITIZE_PYTHON_SHARDS=12 FUSEDMOE_SANITIZE_JOBS=24 \
#     FUSEDMOE_SANITIZE_TIMEOUT=480 bash scripts/sanitize.sh build-device racecheck initcheck  (392 s)
# (the second call leaves the Python tests out, the third runs only them).
# Environment:
#   FUSEDMOE_SANITIZE_FILTER_MEMCHECK  gtest filter for memcheck (default: all but the largest
#                                      shapes and the benchmark)
#   FUSEDMOE_SANITIZE_FILTER_SLOW      gtest filter for racecheck/synccheck/initcheck (default: the
#                                      memcheck filter)
#   FUSEDMOE_SANITIZE_TIMEOUT          seconds per executable and tool (default 500)
#   FUSEDMOE_SANITIZE_JOBS             runs at once (default: the number of CPUs)
#   FUSEDMOE_SANITIZE_SHARDS           gtest shards per executable and tool (default 4)
#   FUSEDMOE_SANITIZE_EXECUTABLES      name pattern of the executables (default test_gpu_*; none:
#                                      only the Python tests)
#   FUSEDMOE_SANITIZE_PYTHON           1 (default): also the Python GPU tests' operator calls
#                                      (python3 -m pytest over FUSEDMOE_SANITIZE_PYTESTS, default
#                                      the GPU test files), the installed fusedmoe package; 0: not
#   FUSEDMOE_SANITIZE_PYTHON_SHARDS    processes the Python tests are split into (default 6;
#                                      racecheck over all of them in one process ran past 510 s);
#                                      like the C++ tests they run capped sizes under racecheck,
#                                      synccheck and initcheck (FUSEDMOE_TEST_SANITIZER_SIZES),
#                                      and see the tool's name in FUSEDMOE_TEST_UNDER_SANITIZER
#   OUT                                where logs go (default BUILD_DIR/sanitize)
set -uo pipefail
cd "$(dirname "$0")/.."

build="${1:-build-device}"
shift || true
tools=("$@")
(( ${#tools[@]} )) || tools=(memcheck racecheck synccheck initcheck)
out="${OUT:-$build/sanitize}"
mkdir -p "$out"
limit="${FUSEDMOE_SANITIZE_TIMEOUT:-500}"

sanitizer=$(command -v compute-sanitizer || true)
for candidate in /usr/local/cuda/bin/compute-sanitizer /usr/local/cuda/compute-sanitizer/compute-sanitizer; do
  [[ -z $sanitizer && -x $candidate ]] && sanitizer=$candidate
done
[[ -n $sanitizer ]] || { echo "sanitize: compute-sanitizer not found" >&2; exit 2; }

executables=()
if [[ ${FUSEDMOE_SANITIZE_EXECUTABLES:-} == none ]]; then
  [[ ${FUSEDMOE_SANITIZE_PYTHON:-1} == 1 ]] || { echo "sanitize: no executables and no Python tests: nothing to run" >&2; exit 2; }
else
  mapfile -t executables < <(find "$build/tests" -maxdepth 1 -type f \
    -name "${FUSEDMOE_SANITIZE_EXECUTABLES:-test_gpu_*}" -perm -u+x | sort)
  (( ${#executables[@]} )) || { echo "sanitize: no $build/tests/test_gpu_* executables (build first)" >&2; exit 2; }
fi

filter_memcheck="${FUSEDMOE_SANITIZE_FILTER_MEMCHECK:-*-GroupedGemmBench.*:GpuSizes.*:*T4096*:*mixtral*}"
filter_slow="${FUSEDMOE_SANITIZE_FILTER_SLOW:-$filter_memcheck}"

# One (tool, executable) pair: its log, and "errors warnings tests rc" in $out/$tool.$name.result.
sanitize_one() {
  local tool=$1 exe=$2 shard=$3 name filter options log rc n w ran
  name=$(basename "$exe").$shard
  case "$tool" in
    memcheck) filter=$filter_memcheck; options=(--leak-check no) ;;
    # racecheck leaves the tests' own GPU reference (namespace gpu_ref_detail, no shared memory:
    # nothing for it to check) uninstrumented: instrumented, its SIMT GEMMs grew racecheck's host
    # memory past 128 GiB within a minute of GpuMoe.SmallSortExtremes (H200: killed, exit 9),
    # while each fusedmoe kernel instrumented alone stayed under 4.2 GiB with 0 hazards.
    # (initcheck must instrument it: data it writes unseen is "uninitialized" to cudaMemcpy.)
    racecheck) filter=$filter_slow
      options=(--racecheck-report all --kernel-name-exclude kns=gpu_ref_detail) ;;
    *) filter=$filter_slow; options=() ;;
  esac
  # racecheck, synccheck and initcheck run the tests' GPU reference on its SIMT GEMMs instead of
  # cuBLAS (tests/common/gpu_reference.h): on an H200, racecheck reported 36592 WAR hazards inside
  # cuBLAS's nvjet_sm90 kernel and then "failed to handle a hardware exception" in cublasGemmEx,
  # and initcheck flagged cuBLAS's split-K reduction reading its own workspace. memcheck keeps
  # cuBLAS (0 errors).
  # Under the slow tools the operator-level tests also cap hidden and intermediate sizes
  # (FUSEDMOE_TEST_SANITIZER_SIZES, tests/common/gpu_buffers.h: the same tile tails, tokens,
  # experts and top-k, a tenth to a hundredth of the GEMM work): at full size initcheck spent
  # 393 s in one test and test_gpu_moe's shards ran past 500 s. memcheck runs full sizes.
  local reference=cublas sizes=0
  [[ $tool == memcheck ]] || reference=simt sizes=1
  log="$out/$tool.$name.log"
  # A shard that holds no test is skipped, not run empty under the tool: a process that makes
  # no CUDA call is an error to compute-sanitizer ("Target application terminated before first
  # instrumented API call", test_gpu_fp8's 5 tests in 6 shards on an H200; and with no test
  # selected at all racecheck/synccheck/initcheck over test_gpu_decode ended with rc 255).
  # gtest deals the selected tests to the shards in turn, so shard i holds one iff i < count.
  local count
  count=$("$exe" --gtest_list_tests --gtest_filter="$filter" 2>/dev/null | grep -c '^  ')
  if (( shard >= count )); then
    echo "skipped" > "$out/$tool.$name.result"
    return
  fi
  FUSEDMOE_TEST_GPU_REFERENCE=$reference FUSEDMOE_TEST_SANITIZER_SIZES=$sizes GTEST_TOTAL_SHARDS=$shards GTEST_SHARD_INDEX=$shard \
    timeout "$limit" "$sanitizer" \
    --tool "$tool" "${options[@]}" --print-limit 50 "$exe" --gtest_color=no --gtest_filter="$filter" > "$log" 2>&1
  rc=$?
  # "========= ERROR SUMMARY: N errors" (every tool); racecheck also prints
  # "RACECHECK SUMMARY: ... (N errors, M warnings)".
  n=$(grep -Eo 'ERROR SUMMARY: [0-9]+ error|\([0-9]+ errors?,' "$log" | grep -Eo '[0-9]+' | awk '{s += $1} END {print s + 0}')
  # A run cut short prints no summary: count the reports it did print.
  local reported
  reported=$(grep -cE '^========= (Error|Invalid|Uninitialized|Barrier|Race)' "$log")
  (( n == 0 && reported > 0 )) && n=$reported
  w=$(grep -Eo '[0-9]+ warnings?\)' "$log" | grep -Eo '^[0-9]+' | awk '{s += $1} END {print s + 0}')
  ran=$(grep -Eo '^\[==========\] [0-9]+ tests? from' "$log" | grep -Eo '[0-9]+' | head -1)
  echo "$n $w ${ran:-0} $rc" > "$out/$tool.$name.result"
}

# The Python GPU tests under one tool, split into $python_shards processes (result names
# python.0, python.1, ...), each with every python_shards-th test id of the collection; verbose,
# so that a log names every test as it starts, with the ten slowest at the end. Only
# fusedmoe's kernels are instrumented (--kernel-name kns=fusedmoe): PyTorch's own kernels are not
# ours to check, and instrumenting them all made each test minutes long. initcheck is the
# exception: it must see every write (a tensor that a PyTorch kernel filled unseen would read
# as uninitialized to fusedmoe's kernels), so it instruments everything, on the small shapes of
# these tests.
pytests="${FUSEDMOE_SANITIZE_PYTESTS:-tests/python/test_gpu.py tests/python/test_expert_mlp.py tests/python/test_concurrency.py}"
python_select="cuda or gpu or stream or thread or graph or steady"
python_shards="${FUSEDMOE_SANITIZE_PYTHON_SHARDS:-6}"
# Their ids at full sizes (memcheck) and at the capped sizes of the other tools
# (FUSEDMOE_TEST_SANITIZER_SIZES, reference_moe.sanitizer_size: the ids name the sizes).
python_ids_full=() python_ids_capped=()
if [[ ${FUSEDMOE_SANITIZE_PYTHON:-1} == 1 ]]; then
  # shellcheck disable=SC2086
  mapfile -t python_ids_full < <(FUSEDMOE_TEST_SANITIZER_SIZES=0 python3 -m pytest $pytests -q \
    -p no:cacheprovider --collect-only -k "$python_select" 2>/dev/null | grep '::')
  # shellcheck disable=SC2086
  mapfile -t python_ids_capped < <(FUSEDMOE_TEST_SANITIZER_SIZES=1 python3 -m pytest $pytests -q \
    -p no:cacheprovider --collect-only -k "$python_select" 2>/dev/null | grep '::')
  (( ${#python_ids_full[@]} )) || echo "sanitize: no Python GPU test collected (is fusedmoe installed?)" >&2
fi
echo "sanitize: ${#python_ids_full[@]} Python GPU tests in $python_shards processes"
sanitize_python() {
  local tool=$1 shard=$2 options=(--kernel-name kns=fusedmoe) log rc n w ran ids=() i sizes=1
  local all_ids=("${python_ids_capped[@]}")
  [[ $tool == memcheck ]] && { sizes=0; all_ids=("${python_ids_full[@]}"); }
  log="$out/$tool.python.$shard.log"
  for ((i = shard; i < ${#all_ids[@]}; i += python_shards)); do ids+=("${all_ids[i]}"); done
  (( ${#ids[@]} )) || { echo "skipped" > "$out/$tool.python.$shard.result"; return; }
  [[ $tool == initcheck ]] && options=()
  [[ $tool == racecheck ]] && options+=(--racecheck-report all)
  [[ $tool == memcheck ]] && options+=(--leak-check no)
  FUSEDMOE_TEST_UNDER_SANITIZER=$tool FUSEDMOE_TEST_SANITIZER_SIZES=$sizes \
    timeout "$limit" "$sanitizer" --tool "$tool" "${options[@]}" \
    --print-limit 50 python3 -m pytest "${ids[@]}" -v --durations=10 -p no:cacheprovider > "$log" 2>&1
  rc=$?
  n=$(grep -Eo 'ERROR SUMMARY: [0-9]+ error|\([0-9]+ errors?,' "$log" | grep -Eo '[0-9]+' | awk '{s += $1} END {print s + 0}')
  w=$(grep -Eo '[0-9]+ warnings?\)' "$log" | grep -Eo '^[0-9]+' | awk '{s += $1} END {print s + 0}')
  ran=$(grep -Eo '[0-9]+ passed' "$log" | tail -1 | grep -Eo '[0-9]+')
  # pytest's failures count as a failed test. Its summary line is "N failed, M passed, ... in
  # S s" (read only that line: the sanitizer's "ERROR SUMMARY: 0 errors" must not count).
  local result_line
  result_line=$(grep -E '^(=+ )?(([0-9]+ (passed|failed|skipped|deselected|errors?|warnings?|xfailed|xpassed),? )+|no tests ran )in [0-9.]+s' "$log" | tail -1)
  if [[ -z $result_line || $result_line =~ [0-9]+\ (failed|errors?) ]]; then
    echo "[  FAILED  ] pytest" >> "$log"
  fi
  echo "$n $w ${ran:-0} $rc" > "$out/$tool.python.$shard.result"
}

# Every (tool, executable, shard) triple, FUSEDMOE_SANITIZE_JOBS at a time (default: the CPUs);
# each executable's tests are split into FUSEDMOE_SANITIZE_SHARDS gtest shards (default 4).
jobs="${FUSEDMOE_SANITIZE_JOBS:-$(nproc)}"
shards="${FUSEDMOE_SANITIZE_SHARDS:-4}"
start=$SECONDS
for tool in "${tools[@]}"; do
  case "$tool" in
    memcheck | racecheck | synccheck | initcheck) ;;
    *) echo "sanitize: unknown tool $tool" >&2; exit 2 ;;
  esac
  # A reused OUT may hold results of other shards or executables: only this run's count.
  rm -f "$out/$tool".*.result
  if [[ ${FUSEDMOE_SANITIZE_PYTHON:-1} == 1 ]]; then
    for ((shard = 0; shard < python_shards; ++shard)); do
      while (( $(jobs -rp | wc -l) >= jobs )); do wait -n; done
      sanitize_python "$tool" "$shard" &
    done
  fi
  for exe in "${executables[@]}"; do
    for ((shard = 0; shard < shards; ++shard)); do
      while (( $(jobs -rp | wc -l) >= jobs )); do wait -n; done
      sanitize_one "$tool" "$exe" "$shard" &
    done
  done
done
wait

status=0
summary=()
for tool in "${tools[@]}"; do
  errors=0 warnings=0 failed=0 timeouts=0 tests=0
  for result in "$out/$tool".*.result; do
    name=$(basename "$result" .result)
    name=${name#"$tool".}
    log="$out/$tool.$name.log"
    read -r n w ran rc < "$result"
    if [[ $n == skipped ]]; then
      echo "== $tool $name: no test selected by the filter, skipped"
      continue
    fi
    errors=$((errors + n)) warnings=$((warnings + w)) tests=$((tests + ran))
    if (( rc == 124 || rc == 137 )); then
      timeouts=$((timeouts + 1))
      echo "== $tool $name: timed out after ${limit} s (log: $log)"
      # pytest -v names each test as it starts: the last one named was running.
      [[ $name == python.* ]] && echo "   running then: $(grep -Eo '^tests/[^ ]+::[^ ]+' "$log" | tail -1)"
    elif grep -q '^\[  FAILED  \]' "$log" || { (( rc != 0 )) && (( n == 0 )); }; then
      failed=$((failed + 1))
      echo "== $tool $name: test failure or crash, rc $rc (log: $log)"
      grep -E '^\[  FAILED  \]' "$log" | sort -u | head -10
    fi
    if (( n > 0 )); then
      echo "== $tool $name: $n errors; first reports:"
      grep -E '^========= (Invalid|Program hit|Race|Barrier|Uninitialized|.*[Hh]azard|Error)' "$log" | sort | uniq -c | sort -rn | head -8
    fi
  done
  # The slowest tests under this tool (gtest's "(N ms)", pytest's --durations): what to shard by.
  echo "== $tool: slowest tests"
  {
    sed -nE 's/^\[       OK \] ([^ ]+) \(([0-9]+) ms\)$/\2 \1/p' "$out/$tool".*.log
    sed -nE 's/^([0-9.]+)s call +(tests\/[^ ]+)$/\1 \2/p' "$out/$tool".python.*.log |
      awk '{printf "%d %s\n", $1 * 1000, $2}'
  } 2>/dev/null | sort -rn | head -5 | awk '{printf "   %8.1f s  %s\n", $1 / 1000, $2}'
  summary+=("$tool: $errors errors, $warnings warnings, $tests tests in ${#executables[@]} executables x $shards shards + pytest, $failed failed, $timeouts timed out")
  (( errors == 0 && failed == 0 && timeouts == 0 )) || status=1
done
# Asked for the Python tests but collected none: say so and fail, rather than report them clean.
if [[ ${FUSEDMOE_SANITIZE_PYTHON:-1} == 1 ]] && (( ${#python_ids_full[@]} == 0 )); then
  summary+=("python: no GPU test collected (is the fusedmoe package installed?): FAILED")
  status=1
fi

echo
echo "================ sanitize summary ($(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1)) ================"
printf '%s\n' "${summary[@]}" "wall: $((SECONDS - start)) s, $jobs at a time" | tee "$out/summary.txt"
exit $status
