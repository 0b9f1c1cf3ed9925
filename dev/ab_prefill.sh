#!/usr/bin/env bash
# A/B of a prefill (grouped GEMM) change in one device call (experiment; issue 5): the working
# tree ("new") against an older tree ("base") on the same card, same inputs.
#   1. builds new in build-device (everything) and runs its GEMM-level and operator GPU tests;
#   2. builds base's library in build-base;
#   3. dev/time_stages.cu against each library, run base, new, base, new (stage medians and the
#      whole call as a graph, per model and T), each run dumping its outputs;
#   4. compares the outputs of base and new bit for bit, point by point.
# Prepare here, then run with the device tool (carry both):
#   git archive main | (rm -rf .base && mkdir .base && tar -x -C .base)
#   run: command "bash dev/ab_prefill.sh .base", carry [".deps", ".base"]
# Environment: FUSEDMOE_DEV_TOKENS / FUSEDMOE_DEV_MODELS narrow time_stages (default here:
# T = 4096 16384, all models); FUSEDMOE_AB_SKIP_TESTS=1 skips step 1's tests; OUT (logs).
set -uo pipefail
cd "$(dirname "$0")/.."
base_tree=${1:?usage: bash dev/ab_prefill.sh BASE_TREE}
[[ -f $base_tree/CMakeLists.txt ]] || { echo "no tree at $base_tree" >&2; exit 2; }
OUT="${OUT:-build-device/out}"
mkdir -p "$OUT"
export PATH="$PATH:/usr/local/cuda/bin"
export FUSEDMOE_DEV_TOKENS="${FUSEDMOE_DEV_TOKENS:-4096 16384}"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | head -1

build() {  # tree, build dir, target (empty: all)
  cmake -S "$1" -B "$2" -G Ninja -DCMAKE_BUILD_TYPE=Release \
    -DFUSEDMOE_GTEST_SOURCE_DIR="$PWD/.deps/googletest" > "$OUT/build_$(basename "$2").log" 2>&1 &&
    cmake --build "$2" -j "$(nproc)" ${3:+--target "$3"} >> "$OUT/build_$(basename "$2").log" 2>&1 ||
    { echo "build of $1 FAILED"; grep -A8 '^FAILED' "$OUT/build_$(basename "$2").log" | head -30; exit 1; }
}
build . build-device ""
build "$base_tree" build-base fusedmoe

if [[ ${FUSEDMOE_AB_SKIP_TESTS:-0} != 1 ]]; then
  for t in test_gpu_grouped_gemm test_gpu_moe; do
    if timeout 300 "build-device/tests/$t" --gtest_color=no --gtest_brief=1 > "$OUT/$t.log" 2>&1; then
      echo "new $t: passed ($(grep -Eo '[0-9]+ tests? ran' "$OUT/$t.log" | head -1))"
    else
      echo "new $t: FAILED"; grep -E '^\[  FAILED  \]|Failure|Expected' "$OUT/$t.log" | head -12
    fi
  done
fi

for side in base new; do
  tree=$PWD build=build-device
  [[ $side == base ]] && tree=$(cd "$base_tree" && pwd) build=build-base
  nvcc -O3 -std=c++17 -gencode=arch=compute_90a,code=sm_90a -I"$tree/include" -I"$tree/src" -I. \
    dev/time_stages.cu "$build/libfusedmoe.a" -lcuda -o "/tmp/time_stages_$side" || exit 1
done
for round in 1 2; do
  for side in base new; do
    mkdir -p "/tmp/ab_dump_$side"
    echo "## $side, round $round"
    FUSEDMOE_DEV_DUMP="/tmp/ab_dump_$side" "/tmp/time_stages_$side" | tee "$OUT/stages_${side}_$round.txt"
  done
done

echo "## outputs, base vs new (bit for bit)"
for f in /tmp/ab_dump_base/*.bin; do
  name=$(basename "$f" .bin)
  if cmp -s "$f" "/tmp/ab_dump_new/$name.bin"; then
    echo "$name: identical"
  else
    echo "$name: DIFFERENT ($(cmp -l "$f" "/tmp/ab_dump_new/$name.bin" 2>/dev/null | wc -l) bytes)"
  fi
done

# GEMM1, GEMM2 and graph medians side by side: the mean of each side's two rounds.
echo "## side by side (us; mean of 2 rounds): gemm1 base -> new | gemm2 | graph (PDL)"
python3 - "$OUT" <<'PY'
import sys, collections
out = sys.argv[1]
vals = collections.defaultdict(lambda: collections.defaultdict(list))
for side in ("base", "new"):
    for rnd in (1, 2):
        for line in open(f"{out}/stages_{side}_{rnd}.txt"):
            f = line.replace("|", " ").split()
            if len(f) < 14 or not f[1].isdigit():
                continue
            key = (f[0], int(f[1]))
            # model T rows/e max | route permute gemm1 gemm2 final | sum graph nopdl | ...
            vals[key][side].append((float(f[6]), float(f[7]), float(f[10])))
for key, sides in vals.items():
    def mean(side, i):
        xs = [v[i] for v in sides.get(side, [])]
        return sum(xs) / len(xs) if xs else float("nan")
    cells = []
    for i, _ in enumerate(("gemm1", "gemm2", "graph")):
        b, n = mean("base", i), mean("new", i)
        cells.append(f"{b:8.1f} -> {n:8.1f} ({100 * (n / b - 1):+5.1f} %)")
    print(f"{key[0]:16s} {key[1]:6d} | " + " | ".join(cells))
PY
