#!/usr/bin/env bash
# Hardware counters of the prefill GEMMs of two or more source trees (experiment; issue 5), in one
# device call: builds each tree's library and dev/time_stages.cu (as dev/ab_prefill.sh does), then
# profiles the first launch of each grouped GEMM kernel with ncu (--clock-control none: the
# device's clocks are left alone) and prints one line per tree and kernel.
# Usage: FUSEDMOE_DEV_MODELS=deepseek FUSEDMOE_DEV_TOKENS=4096 bash dev/ncu_prefill.sh TREE...
# Trees as for dev/ab_prefill.sh (git archive into .ab-*, carried). OUT (logs).
set -uo pipefail
cd "$(dirname "$0")/.."
(( $# >= 1 )) || { sed -n 2,7p "$0" >&2; exit 2; }
source dev/ab_common.sh
export FUSEDMOE_DEV_TOKENS="${FUSEDMOE_DEV_TOKENS:-4096}"
export FUSEDMOE_DEV_MODELS="${FUSEDMOE_DEV_MODELS:-deepseek}"
metrics=gpu__time_duration.sum,dram__bytes_read.sum,lts__t_bytes.sum,lts__t_sector_hit_rate.pct
metrics+=,sm__pipe_tensor_op_gmma_cycles_active.avg.pct_of_peak_sustained_elapsed
metrics+=,sm__cycles_elapsed.avg.per_second
names=()
for tree in "$@"; do
  name=$(ab_tree_name "$tree")
  ab_build "$tree" "$name" fusedmoe || exit 1
  names+=("$name")
done
for kernel in sm90_gemm1 sm90_gemm2; do
  for name in "${names[@]}"; do
    timeout 240 ncu --clock-control none -k "regex:^$kernel" --launch-count 1 \
      --metrics "$metrics" --csv "/tmp/time_stages_$name" > "$OUT/ncu_${name}_$kernel.csv" \
      2> "$OUT/ncu_${name}_$kernel.err" || { echo "ncu $name $kernel failed"; tail -5 "$OUT/ncu_${name}_$kernel.err"; }
    python3 - "$OUT/ncu_${name}_$kernel.csv" "$name" "$kernel" <<'PY'
import csv, sys
path, name, kernel = sys.argv[1:]
rows = [r for r in csv.reader(open(path)) if len(r) > 10]
if not rows:
    print(f"{name} {kernel}: no rows"); sys.exit()
head = rows[0]; vals = {}
for r in rows[1:]:
    d = dict(zip(head, r))
    vals[d["Metric Name"]] = (d["Metric Value"], d["Metric Unit"])
print(f"{name:24s} {kernel}: " + "  ".join(f"{k.split('.')[0].split('__')[1]}={v[0]} {v[1]}" for k, v in vals.items()))
PY
  done
done
