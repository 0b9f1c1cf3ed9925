#!/usr/bin/env bash
# A/B(/C...) of prefill (grouped GEMM) changes in one device call (experiment; issue 5): two or
# more source trees on the same card, same inputs. The first tree is the baseline.
#   1. builds each tree (the library; every tree but the first also its GPU tests) and runs the
#      GEMM-level and operator GPU tests of every tree but the first;
#   2. dev/time_stages.cu against each library, two rounds of tree 1, 2, ... (stage medians and
#      the whole call as a graph, per model and T), each run dumping its outputs;
#   3. compares every tree's outputs with the baseline's, bit for bit, point by point;
#   4. prints GEMM1, GEMM2 and graph time of each tree against the baseline.
# Prepare here (trees from git archive; .ab-* is git-ignored), then run with the device tool:
#   for b in main wip/prefill-half-tiles wip/prefill-dynamic-tiles; do
#     d=.ab-${b##*/}; rm -rf "$d" && mkdir "$d" && git archive "$b" | tar -x -C "$d"; done
#   run: command "bash dev/ab_prefill.sh .ab-main .ab-prefill-half-tiles .ab-prefill-dynamic-tiles",
#        carry [".deps", ".ab-main", ".ab-prefill-half-tiles", ".ab-prefill-dynamic-tiles"]
# "." (the working tree) may be one of the trees. Each tree's own dev/time_stages.cu is used
# (it must take FUSEDMOE_DEV_DUMP: main from 6b11c0f on).
# Environment: FUSEDMOE_AB_PREBUILT (below); FUSEDMOE_DEV_TOKENS / FUSEDMOE_DEV_MODELS narrow
# time_stages (default here:
# T = 4096 16384, all models); FUSEDMOE_AB_ROUNDS (default 2); FUSEDMOE_AB_SKIP_TESTS=1 skips
# step 1's tests; OUT (logs).
set -uo pipefail
cd "$(dirname "$0")/.."
(( $# >= 2 )) || { sed -n 2,17p "$0" >&2; exit 2; }
source dev/ab_common.sh
export FUSEDMOE_DEV_TOKENS="${FUSEDMOE_DEV_TOKENS:-4096 16384}"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | head -1

names=() failed=()
# FUSEDMOE_AB_PREBUILT=DIR: the arguments are names, DIR holds each one's time_stages_NAME built
# elsewhere (e.g. on the CPU machine, as ab_build does): nothing is built or tested here.
prebuilt="${FUSEDMOE_AB_PREBUILT:-}"
for tree in "$@"; do
  if [[ -n $prebuilt ]]; then
    cp "$prebuilt/time_stages_$tree" "/tmp/time_stages_$tree" || exit 2
    names+=("$tree")
    continue
  fi
  [[ -f $tree/CMakeLists.txt ]] || { echo "no tree at $tree" >&2; exit 2; }
  names+=("$(ab_tree_name "$tree")")
done

for i in "${!names[@]}"; do
  [[ -n $prebuilt ]] && break
  name=${names[i]} build=$PWD/build-ab-${names[i]}
  target=fusedmoe
  (( i > 0 )) && [[ ${FUSEDMOE_AB_SKIP_TESTS:-0} != 1 ]] && target=""
  ab_build "${@:i+1:1}" "$name" "$target" || exit 1
  if [[ -z $target ]]; then
    # A hang (a barrier protocol gone wrong) must not eat the whole device call: on an H200 these
    # take 2-7 s each; a tree that fails one is not run further.
    for t in test_gpu_grouped_gemm test_gpu_decode test_gpu_moe; do
      if timeout 60 "$build/tests/$t" --gtest_color=no --gtest_brief=1 > "$OUT/${name}_$t.log" 2>&1; then
        echo "$name $t: passed ($(grep -Eo '[0-9]+ tests? ran' "$OUT/${name}_$t.log" | head -1))"
      else
        echo "$name $t: FAILED (rc $?; 124 = timed out): not timed below"
        grep -E '^\[  FAILED  \]|Failure|Expected|rerun|counters' "$OUT/${name}_$t.log" | head -12
        failed+=("$name")
        break
      fi
    done
  fi
done
timed=()
for name in "${names[@]}"; do
  [[ " ${failed[*]:-} " == *" $name "* ]] || timed+=("$name")
done

rounds=${FUSEDMOE_AB_ROUNDS:-2}
for round in $(seq "$rounds"); do
  for name in "${timed[@]}"; do
    mkdir -p "/tmp/ab_dump_$name"
    echo "## $name, round $round"
    FUSEDMOE_DEV_DUMP="/tmp/ab_dump_$name" timeout 240 "/tmp/time_stages_$name" |
      tee "$OUT/stages_${name}_$round.txt"
  done
done

base=${names[0]}
echo "## outputs against $base (bit for bit)"
for name in "${timed[@]:1}"; do
  for f in "/tmp/ab_dump_$base"/*.bin; do
    point=$(basename "$f" .bin)
    if cmp -s "$f" "/tmp/ab_dump_$name/$point.bin"; then
      echo "$name $point: identical"
    else
      echo "$name $point: DIFFERENT ($(cmp -l "$f" "/tmp/ab_dump_$name/$point.bin" 2>/dev/null | wc -l) bytes)"
    fi
  done
done

echo "## us, mean of $rounds rounds, against $base: gemm1 | gemm2 | graph (PDL)"
python3 - "$OUT" "$rounds" "${timed[@]}" <<'PY'
import sys, collections
out, rounds, names = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
vals = collections.defaultdict(lambda: collections.defaultdict(list))
for name in names:
    for rnd in range(1, rounds + 1):
        for line in open(f"{out}/stages_{name}_{rnd}.txt"):
            f = line.replace("|", " ").split()
            # model T rows/e max | route sort gemm1 gemm2 final | sum graph nopdl | ...
            if len(f) < 14 or not f[1].isdigit():
                continue
            vals[(f[0], int(f[1]))][name].append((float(f[6]), float(f[7]), float(f[10])))
def mean(xs, i):
    return sum(x[i] for x in xs) / len(xs) if xs else float("nan")
for key, per_tree in vals.items():
    base = per_tree.get(names[0], [])
    cells = []
    for i in range(3):
        b = mean(base, i)
        parts = [f"{b:8.1f}"] + [f"{mean(per_tree.get(n, []), i):8.1f} ({100 * (mean(per_tree.get(n, []), i) / b - 1):+5.1f}%)"
                                 for n in names[1:]]
        cells.append(" ".join(parts))
    print(f"{key[0]:16s} {key[1]:6d} | " + " | ".join(cells))
print("columns per block: " + ", ".join(names))
PY
