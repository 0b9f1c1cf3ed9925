#!/usr/bin/env bash
# The GPU soak (tests/soak/gpu_soak.cu, issue 13): builds the gpu_soak target and runs it for a
# time budget, randomly drawn problems against the reference until the budget is spent. The
# whole log goes to $OUT/soak.log; the console gets its head, every problem that differed, the
# report and, last, gpu_soak's summary line ("soak: N problems, D differed, worst ...").
# On the GPU machine (device tool), from here:
#   mkdir -p .deps && cp -r /usr/src/googletest .deps/      (once; .deps is git-ignored)
#   run: command "bash scripts/soak.sh", carry [".deps"]
# Knobs:
#   FUSEDMOE_SOAK_SECONDS    budget for drawing problems (default 300: a 10-minute call also
#                            builds for a few minutes first)
#   FUSEDMOE_SOAK_SEED       run seed (default: a fresh one, printed; the log's rerun lines use it)
#   FUSEDMOE_BUILD_DIR       build directory (default build-device, as scripts/device_check.sh)
#   FUSEDMOE_SOAK_NO_BUILD=1 run the gpu_soak already built there (device_check.sh's hook)
# Exit status: gpu_soak's (0 every problem matched; 1 one differed or a CUDA error; 3 a problem
# hung; 77 no GPU), 1 when the build failed, 137 when killed by the outer time limit.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD/build-device/out}"
BUILD="${FUSEDMOE_BUILD_DIR:-build-device}"
seconds="${FUSEDMOE_SOAK_SECONDS:-300}"
seed="${FUSEDMOE_SOAK_SEED:-$(( (RANDOM << 15 | RANDOM) + 1 ))}"
log="$OUT/soak.log"
mkdir -p "$OUT"
export PATH="$PATH:/usr/local/cuda/bin"

if [[ "${FUSEDMOE_SOAK_NO_BUILD:-0}" != 1 ]]; then
  t0=$SECONDS
  gtest=()
  [[ -f .deps/googletest/CMakeLists.txt ]] && gtest=(-DFUSEDMOE_GTEST_SOURCE_DIR="$PWD/.deps/googletest")
  if ! { cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release "${gtest[@]}" &&
         cmake --build "$BUILD" -j "$(nproc)" --target gpu_soak; } > "$OUT/soak_build.log" 2>&1; then
    echo "soak: build FAILED (see soak_build.log)"
    grep -A8 -E '^FAILED: |error' "$OUT/soak_build.log" | head -40
    exit 1
  fi
  echo "soak: built gpu_soak in $((SECONDS - t0)) s"
fi
binary="$BUILD/tests/soak/gpu_soak"
[[ -x $binary ]] || { echo "soak: $binary not built"; exit 1; }

commit=$(git rev-parse --short HEAD 2>/dev/null || echo "unknown")
echo "soak: commit $commit, run seed $seed, budget $seconds s, log $log" | tee "$log"
# gpu_soak stops drawing at the budget and its watchdog ends a hung problem; the outer limit is
# the last resort (the largest problems are estimated at a few seconds).
timeout --signal=KILL $((seconds + 180)) "$binary" --seed "$seed" --seconds "$seconds" >> "$log" 2>&1
rc=$?

sed -n 2p "$log"
grep -A1 ' DIFFERED\| HUNG' "$log" | head -60
sed -n '/^report /,$p' "$log" | grep -v '^soak: '
if (( rc == 137 )); then
  echo "soak: killed after $((seconds + 180)) s; the last problem started: $(grep '^#' "$log" | tail -1 | cut -c1-300)"
else
  grep '^soak: ' "$log" | tail -1
fi
exit $rc
