#!/usr/bin/env bash
# The one script run on the GPU machine (the device tool): build, GPU tests, SASS check, then the
# Python tests and the benchmark. Logs go to $OUT (at most 8 files come back). Usage, from here:
#   mkdir -p .deps && cp -r /usr/src/googletest .deps/      (once; .deps is git-ignored)
#   run: command "bash scripts/device_check.sh", carry [".deps"]
# Prebuilt (saves the device the build, ~5 of its minutes): scripts/prebuild_device.sh builds the
# GPU test executables, gpu_soak and a cp312 wheel here into build-carry/; then
#   run: command "FUSEDMOE_PREBUILT=1 bash scripts/device_check.sh", carry ["build-carry"]
# Optional: FUSEDMOE_GTEST_FILTER narrows the GPU tests; FUSEDMOE_SKIP_GPU_TESTS=1 and
# FUSEDMOE_SKIP_CPU_TESTS=1 skip them; FUSEDMOE_SOAK=1 runs the GPU soak (scripts/soak.sh) after
# the tests for FUSEDMOE_SOAK_SECONDS (default 300) with run seed FUSEDMOE_SOAK_SEED (default:
# fresh), its log in soak.log and one line in the summary.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD/build-device/out}"
BUILD="${FUSEDMOE_BUILD_DIR:-build-device}"
prebuilt="${FUSEDMOE_PREBUILT:-0}"
[[ $prebuilt == 1 ]] && BUILD=build-carry
mkdir -p "$OUT"
export PATH="$PATH:/usr/local/cuda/bin"
summary=()
note() { summary+=("$1"); echo "== $1"; }

# ---- 1. configure and build (Release, googletest from .deps) ------------------------------------
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader > "$OUT/device.txt" 2>&1
note "device: $(head -1 "$OUT/device.txt")"
start=$SECONDS
if [[ $prebuilt == 1 ]]; then
  note "build: prebuilt here at $(cat "$BUILD/COMMIT" 2>/dev/null || echo '?') (scripts/prebuild_device.sh)"
  # The CPU suites are not carried (CI runs them); only the GPU ones are.
  FUSEDMOE_SKIP_CPU_TESTS=1
else
# Test binaries are relinked every time, so a target that fails to build never runs stale.
rm -f "$BUILD"/tests/test_* 2>/dev/null
if ! cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release \
      -DFUSEDMOE_GTEST_SOURCE_DIR="$PWD/.deps/googletest" > "$OUT/build.log" 2>&1; then
  note "configure: FAILED (see build.log)"
  tail -40 "$OUT/build.log"
  printf '%s\n' "${summary[@]}" | tee "$OUT/summary.txt"
  exit 1
fi
# Keep going past a broken target: the tests that did build still run.
if cmake --build "$BUILD" -j "$(nproc)" -- -k 0 >> "$OUT/build.log" 2>&1; then
  note "build: ok ($((SECONDS - start)) s)"
else
  note "build: FAILED for $(grep -o '^FAILED: [^ ]*' "$OUT/build.log" | cut -d' ' -f2 | xargs -r -n1 basename | sort -u | tr '\n' ' ')(see build.log)"
  grep -A8 '^FAILED: ' "$OUT/build.log" | head -40
fi
fi

# ---- 2. GPU tests (tests/test_*.cu), then the CPU tests -----------------------------------------
: > "$OUT/tests.log"
run_test() {  # name, timeout in seconds
  local name=$1 limit=$2 t0=$SECONDS
  local bin="$BUILD/tests/$name"
  [[ -x $bin ]] || { note "$name: not built"; return; }
  echo "######## $name" >> "$OUT/tests.log"
  if timeout "$limit" "$bin" --gtest_color=no ${FUSEDMOE_GTEST_FILTER:+--gtest_filter="$FUSEDMOE_GTEST_FILTER"} \
      >> "$OUT/tests.log" 2>&1; then
    note "$name: passed ($((SECONDS - t0)) s, $(grep -c '^\[       OK \]' <(sed -n "/######## $name/,\$p" "$OUT/tests.log")) tests)"
  else
    note "$name: FAILED (rc $?, $((SECONDS - t0)) s): $(sed -n "/######## $name/,\$p" "$OUT/tests.log" | grep '^\[  FAILED  \] [A-Za-z]' | sed 's/^\[  FAILED  \] //; s/ (.*//' | sort -u | head -12 | tr '\n' ' ')"
  fi
}
if [[ "${FUSEDMOE_SKIP_GPU_TESTS:-0}" != 1 ]]; then
  for source in tests/test_*.cu; do run_test "$(basename "$source" .cu)" "${FUSEDMOE_TEST_TIMEOUT:-400}"; done
fi
if [[ "${FUSEDMOE_SKIP_CPU_TESTS:-0}" != 1 ]]; then
  for source in tests/test_*.cc; do run_test "$(basename "$source" .cc)" 120; done
fi

# ---- 2b. the GPU soak (FUSEDMOE_SOAK=1): random problems against the reference for a budget ---
if [[ "${FUSEDMOE_SOAK:-0}" == 1 ]]; then
  t0=$SECONDS
  FUSEDMOE_SOAK_NO_BUILD=1 FUSEDMOE_BUILD_DIR="$BUILD" OUT="$OUT" bash scripts/soak.sh > /dev/null 2>&1
  rc=$?
  line=$(grep '^soak: [0-9]' "$OUT/soak.log" 2>/dev/null | tail -1)
  if (( rc == 0 )); then
    note "${line:-soak: no summary line} ($((SECONDS - t0)) s)"
  else
    note "soak: FAILED (rc $rc, $((SECONDS - t0)) s): ${line#soak: } (see soak.log)"
  fi
fi

# ---- 3. SASS: wgmma instructions per kernel (HGMMA bf16, QGMMA e4m3; a grouped GEMM without them
# is on a slow path; the decode GEMMs use mma.sync, HMMA, by design) ------------------------------
cuobjdump --dump-sass "$BUILD/libfusedmoe.a" 2>/dev/null | awk '
  /Function :/ { name = $3; seen[name] = 1 }
  /[HQ]GMMA/ { count[name]++ }
  END { for (f in seen) printf "%6d %s\n", count[f] + 0, f }' | sort -rn > "$OUT/sass_hgmma.txt"
while read -r count name; do
  case "$name" in *gemm*) note "wgmma $count in $(c++filt <<< "$name" | cut -c1-100)";; esac
done < "$OUT/sass_hgmma.txt"
[[ -s "$OUT/sass_hgmma.txt" ]] || note "sass: no kernels found in $BUILD/libfusedmoe.a"

# ---- 4. Python package tests, benchmark, sanitizers ---------------------------------------------
# FUSEDMOE_SKIP_PYTHON=1 / FUSEDMOE_SKIP_BENCH=1 skip a part; FUSEDMOE_BENCH_ARGS are passed to
# bench/bench_moe.py (default: the default model); FUSEDMOE_SANITIZE="memcheck racecheck ..."
# runs scripts/sanitize.sh with those tools over the GPU test executables.
installed=0
if [[ "${FUSEDMOE_SKIP_PYTHON:-0}" != 1 || "${FUSEDMOE_SKIP_BENCH:-0}" != 1 ||
      "${FUSEDMOE_BENCH_FP8:-0}" == 1 || -n "${FUSEDMOE_SANITIZE:-}" ]]; then
  t0=$SECONDS
  # (The sanitizers run the Python GPU tests too.) All cores for the package's CUDA build (python_env.sh defaults to 2, for CI's machine), or
  # the wheel built here.
  install=(bash -c 'export CMAKE_BUILD_PARALLEL_LEVEL=$(nproc); source scripts/python_env.sh && fusedmoe_install')
  [[ $prebuilt == 1 ]] && install=(python3 -m pip install -q --no-deps --no-index --force-reinstall "$BUILD"/wheel/*.whl)
  if "${install[@]}" > "$OUT/python.log" 2>&1; then
    installed=1
    note "python package: installed ($((SECONDS - t0)) s)"
  else
    note "python package: install FAILED (see python.log)"; tail -20 "$OUT/python.log"
  fi
fi
if [[ "${FUSEDMOE_SKIP_PYTHON:-0}" != 1 ]]; then
  t0=$SECONDS
  if timeout 300 python3 -m pytest tests/python -q -rfE -p no:cacheprovider >> "$OUT/python.log" 2>&1; then
    note "pytest: $(tail -1 "$OUT/python.log") ($((SECONDS - t0)) s)"
  else
    note "pytest: FAILED: $(tail -1 "$OUT/python.log")"
    # The failed tests' names go into the summary too, which is what a caller's tail shows.
    while read -r line; do note "  $line"; done < <(grep -E '^(FAILED|ERROR) ' "$OUT/python.log" | head -10 | cut -c1-300)
  fi
fi
# The benchmarks' commit stamp (bench_moe.git_commit, also bench_fp8.py's): the build's COMMIT file
# when there is one (prebuilt: build-carry/COMMIT, the commit the wheel was built from), since this
# copy of the tree may carry a stale .git; else git's answer.
if [[ -s "$BUILD/COMMIT" ]]; then
  FUSEDMOE_COMMIT=$(head -1 "$BUILD/COMMIT")
  export FUSEDMOE_COMMIT
fi
# The benchmarks time the package just installed; when the install failed they are skipped, never
# run on a package left over from an earlier build under this commit's stamp.
bench_skip="SKIPPED: the python package did not install (see python.log)"
if [[ "${FUSEDMOE_SKIP_BENCH:-0}" != 1 && $installed != 1 ]]; then
  note "bench: $bench_skip"
elif [[ "${FUSEDMOE_SKIP_BENCH:-0}" != 1 ]]; then
  t0=$SECONDS
  # shellcheck disable=SC2086
  if FUSEDMOE_SKIP_INSTALL=1 PYTHONUNBUFFERED=1 timeout "${FUSEDMOE_BENCH_TIMEOUT:-420}" \
      bash scripts/bench.sh ${FUSEDMOE_BENCH_ARGS:-} --json "$OUT/bench.json" > "$OUT/bench.log" 2>&1; then
    note "bench: ok ($((SECONDS - t0)) s): $(grep -i '^geomean' "$OUT/bench.log" | head -2 | tr '\n' ' ')"
  else
    note "bench: FAILED (rc $?, see bench.log)"; tail -30 "$OUT/bench.log"
  fi
fi
# FUSEDMOE_BENCH_FP8=1: the FP8 benchmark (bench/bench_fp8.py) with FUSEDMOE_BENCH_FP8_ARGS
# (default: the default model), its table in bench_fp8.log and bench_fp8.json.
if [[ "${FUSEDMOE_BENCH_FP8:-0}" == 1 && $installed != 1 ]]; then
  note "bench_fp8: $bench_skip"
elif [[ "${FUSEDMOE_BENCH_FP8:-0}" == 1 ]]; then
  t0=$SECONDS
  # shellcheck disable=SC2086
  if PYTHONUNBUFFERED=1 timeout "${FUSEDMOE_BENCH_TIMEOUT:-420}" python3 bench/bench_fp8.py \
      ${FUSEDMOE_BENCH_FP8_ARGS:-} --json "$OUT/bench_fp8.json" > "$OUT/bench_fp8.log" 2>&1; then
    note "bench_fp8: ok ($((SECONDS - t0)) s)"
  else
    note "bench_fp8: FAILED (rc $?, see bench_fp8.log)"; tail -30 "$OUT/bench_fp8.log"
  fi
fi
# The concurrency tests' control (FUSEDMOE_CONCURRENCY_CONTROL=1): with one workspace shared by
# every call in flight (the Python package's old behaviour) the same tests must FAIL; a control
# that passes means the tests cannot see the race they guard against.
if [[ "${FUSEDMOE_CONCURRENCY_CONTROL:-0}" == 1 ]]; then
  cpp_failed=$(FUSEDMOE_TEST_SHARED_WORKSPACE=1 timeout 300 "$BUILD/tests/test_gpu_moe" --gtest_color=no \
      --gtest_filter='GpuConcurrency.*Bitwise' 2>&1 | tee "$OUT/control.log" | grep -o '^\[  FAILED  \] Gpu[A-Za-z.]*' | sort -u | wc -l)
  py_failed=$(FUSEDMOE_TEST_SHARED_WORKSPACE=1 timeout 300 python3 -m pytest tests/python/test_concurrency.py \
      -q -p no:cacheprovider 2>&1 | tee -a "$OUT/control.log" | grep -c '^FAILED')
  if (( cpp_failed > 0 && py_failed > 0 )); then
    note "concurrency control (shared workspace): fails as it must: C++ $cpp_failed of 3 tests, Python $py_failed of 4"
  else
    note "concurrency control: FAILED to fail (C++ $cpp_failed, Python $py_failed tests failed): the tests do not see the race"
  fi
fi
if [[ -n "${FUSEDMOE_SANITIZE:-}" ]]; then
  # shellcheck disable=SC2086
  if OUT="$BUILD/sanitize" bash scripts/sanitize.sh "$BUILD" $FUSEDMOE_SANITIZE > "$OUT/sanitize.log" 2>&1; then
    note "sanitize: clean: $(grep -E '^(memcheck|racecheck|synccheck|initcheck)' "$OUT/sanitize.log" | tr '\n' ' ')"
  else
    note "sanitize: FAILED: $(grep -E '^(memcheck|racecheck|synccheck|initcheck)' "$OUT/sanitize.log" | tr '\n' ' ')"
  fi
fi

# ---- 5. summary ---------------------------------------------------------------------------------
echo
echo "================ device_check summary ================"
printf '%s\n' "${summary[@]}" | tee "$OUT/summary.txt"
! grep -q "FAILED" "$OUT/summary.txt"
