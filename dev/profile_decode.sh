#!/usr/bin/env bash
# Decode profiling on the GPU machine (experiment; issue 6): builds the library and
# dev/time_decode.cu, prints whole-call graph latency at small T for every model, then ncu's view
# of each kernel at the points named by FUSEDMOE_NCU_POINTS ("model:T ...", default below).
# Usage (device tool): bash dev/profile_decode.sh [BUILD_DIR]   (carry .deps)
# FUSEDMOE_NCU_POINTS="" skips ncu; FUSEDMOE_DECODE_T="1 4" narrows the latency table;
# FUSEDMOE_BUILD_TARGET=fusedmoe builds the library alone.
set -uo pipefail
cd "$(dirname "$0")/.."
build="${1:-build-device}"
OUT="${OUT:-$build/out}"
mkdir -p "$OUT"
export PATH="$PATH:/usr/local/cuda/bin"
# FUSEDMOE_DECODE_EDITS="kStages = 6;kUnroll = 2": build a copy of the tree whose DecodeTile
# constants (src/kernels/sm90_decode_mainloop.cuh) are edited so, library target only.
# FUSEDMOE_SRC_TREE=DIR: build DIR's CMakeLists.txt, src, include and tests instead (an older
# tree, e.g. from git archive, for an A/B in one call).
src_root=${FUSEDMOE_SRC_TREE:-$PWD}
if [[ -n ${FUSEDMOE_DECODE_EDITS:-} ]]; then
  base=$src_root
  src_root=/tmp/fusedmoe_variant
  rm -rf "$src_root" && mkdir -p "$src_root"
  (cd "$base" && cp -r CMakeLists.txt src include tests "$src_root/")
  cfg="$src_root/src/kernels/sm90_decode_mainloop.cuh"
  IFS=';' read -ra edits <<< "$FUSEDMOE_DECODE_EDITS"
  for edit in "${edits[@]}"; do
    key=$(echo "${edit%%=*}" | xargs) value=$(echo "${edit#*=}" | xargs)
    sed -i -E "s/(static constexpr int ${key} = )[^;]+;/\1${value};/" "$cfg"
    grep -q "static constexpr int ${key} = ${value};" "$cfg" || { echo "edit failed: $edit"; exit 1; }
  done
  echo "variant: $FUSEDMOE_DECODE_EDITS"
fi
cmake -S "$src_root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DFUSEDMOE_GTEST_SOURCE_DIR="$PWD/.deps/googletest" > "$OUT/build.log" 2>&1 &&
  cmake --build "$build" -j "$(nproc)" ${FUSEDMOE_BUILD_TARGET:+--target "$FUSEDMOE_BUILD_TARGET"} \
    >> "$OUT/build.log" 2>&1 ||
  { echo "build FAILED"; grep -A8 '^FAILED' "$OUT/build.log" | head -40; exit 1; }
nvcc -O3 -std=c++17 -gencode=arch=compute_90a,code=sm_90a -I"$src_root/include" -I"$src_root/src" -I. \
  dev/time_decode.cu "$build/libfusedmoe.a" -lcuda -o /tmp/time_decode || exit 1
/tmp/time_decode all ${FUSEDMOE_DECODE_T:-1 4 16 64 256} | tee "$OUT/decode_latency.txt"
mkdir -p "$build/ncu"
metrics=gpu__time_duration.sum,dram__throughput.avg.pct_of_peak_sustained_elapsed,dram__bytes_read.sum,launch__grid_size,launch__block_size,launch__registers_per_thread,sm__warps_active.avg.pct_of_peak_sustained_active
for point in ${FUSEDMOE_NCU_POINTS-qwen3-30b-a3b:1 gpt-oss-120b:1 llama4-scout:1 qwen3-235b-a22b:1 qwen3-30b-a3b:4}; do
  FUSEDMOE_DEV_REPS=1 timeout 120 ncu --clock-control none --kernel-name regex:"route|sort|gemm|finalize|topk|permute|count|offsets" \
    --launch-skip 5 --launch-count 5 --metrics "$metrics" --csv \
    /tmp/time_decode "${point%%:*}" "${point##*:}" 2>/dev/null > "$build/ncu/${point/:/_T}.csv"
  echo "## ncu $point (us, dram %, MB read, grid, block, regs, warps active %)"
  python3 - "$build/ncu/${point/:/_T}.csv" <<'PY'
import csv, sys, collections
rows = [r for r in csv.reader(open(sys.argv[1])) if len(r) > 10]
if not rows: sys.exit(print("  (no ncu rows)"))
head, rows = rows[0], rows[1:]
ki, mi, vi, ui = head.index("Kernel Name"), head.index("Metric Name"), head.index("Metric Value"), head.index("Metric Unit")
idi = head.index("ID")
table = collections.OrderedDict()
for r in rows:
    table.setdefault((r[idi], r[ki].split("(")[0][:48]), {})[r[mi]] = (r[vi], r[ui])
for (i, k), m in table.items():
    t = m.get("gpu__time_duration.sum", ("?", ""))
    us = float(t[0].replace(",", "")) / (1000.0 if t[1] == "nsecond" else 1.0) if t[0] != "?" else 0
    mb = m.get("dram__bytes_read.sum", ("0", ""))
    scale = {"byte": 1e-6, "Kbyte": 1e-3, "Mbyte": 1, "Gbyte": 1e3}.get(mb[1], 1)
    print(f"  {k:48s} {us:8.1f} {m.get('dram__throughput.avg.pct_of_peak_sustained_elapsed',('?',))[0]:>6} "
          f"{float(mb[0].replace(',', '')) * scale:8.1f} {m.get('launch__grid_size',('?',))[0]:>7} "
          f"{m.get('launch__block_size',('?',))[0]:>5} {m.get('launch__registers_per_thread',('?',))[0]:>4} "
          f"{m.get('sm__warps_active.avg.pct_of_peak_sustained_active',('?',))[0]:>6}")
PY
done
