#!/usr/bin/env bash
# The candidate plan's second device call (dev/variants/README.md, "The candidate branch"): the
# A/Bs of the candidate's wheel against base that decide issues 16 and 17, the BF16 T = 256 points
# the records lack, and the EP timeline, each step in a time budget, within one call's 10
# minutes. From the repository root on the GPU machine:
#   run: command "bash dev/variants/call_candidate_ab.sh",
#        carry ["build-ab/base", "build-ab/candidate", "build-ab/old-78032d5",
#               "build-ab/old-52f0b57", "build-ab/old-98057c1"]
# Environment: LIMIT (570: the seconds this script may take), BISECT (0; 1: the EP bisect over the
# old wheels as well, when the candidate's EP grid does not come back at T >= 1024), NCU (0; 1:
# dev/ncu_table.py on the candidate's BF16 at NCU_TOKENS, default 16384, every model: the
# counters issue 16's diagnosis cites at T = 4096 so far; its CSVs come back as one ncu.tar.gz).
# Prints only summaries; each step's whole output goes to $OUT (ab_ep_decode.log,
# ab_ep_prefill.log, ab_full.log, t256.log, t256.json, timeline.log, bisect.log or ncu.log and
# ncu.tar.gz: at most 8 files).
OUT_DEFAULT=/tmp/candidate_out LIMIT_DEFAULT=570
source "$(dirname "$0")/call_common.sh"
wheels=(--wheel "base=$(ls build-ab/base/*.whl)" --wheel "cand=$(ls build-ab/candidate/*.whl)")

step() {  # name, budget in seconds, command...
  local name=$1 budget=$2
  shift 2
  local have
  have=$(left)
  ((have > 20)) || { echo "== $name: skipped (no time left)"; return; }
  ((budget > have - 5)) && budget=$((have - 5))
  echo "== $name (budget $budget s)"
  timeout "$budget" "$@" > "$OUT/$name.log" 2>&1
  table < "$OUT/$name.log" | tail -40
  echo "== $name: $((SECONDS - start)) s"
}

# 1. The EP fixed cost (ep-fixed-cost) and the EP grid at decode sizes, every model.
step ab_ep_decode 150 python3 dev/ab_wheels.py --dtype bf16 --ep --rounds 3 --out /tmp/ab_ep1 \
  "${wheels[@]}" --models all --tokens 1,4,16
# 2. The EP grid at prefill sizes (finalize-occupancy), every model.
step ab_ep_prefill 170 python3 dev/ab_wheels.py --dtype bf16 --ep --rounds 2 --out /tmp/ab_ep2 \
  "${wheels[@]}" --models all --tokens 1024,4096,16384
# 3. The full grid where the finalize changes form (K <= 4) and at the decode sizes.
step ab_full 100 python3 dev/ab_wheels.py --dtype bf16 --rounds 2 --out /tmp/ab_full \
  "${wheels[@]}" --models llama4-scout,mixtral-8x7b,qwen3-30b-a3b --tokens 1,64,256,1024,4096
# 4. The candidate's BF16 T = 256 on every model (the 22f9807 record has none), and the EP
#    timeline at T = 1: the candidate's wheel installed.
python3 -m pip install -q --no-deps --no-index --force-reinstall build-ab/candidate/*.whl \
  > /dev/null 2>&1 || echo "== could not install the candidate's wheel"
step t256 90 python3 bench/bench_moe.py --models all --tokens 256 --no-loop --json "$OUT/t256.json"
step timeline 60 python3 dev/decode_timeline.py --ep \
  --models qwen3-30b-a3b,qwen3-235b-a22b,deepseek-v3 --tokens 1
# 5. Only when asked: where else the EP grid lost since 78032d5.
if [[ ${BISECT:-0} != 0 ]]; then
  step bisect 200 python3 dev/ab_wheels.py --dtype bf16 --ep --rounds 2 --out /tmp/ab_bisect \
    --wheel "old78=$(ls build-ab/old-78032d5/*.whl)" --wheel "old52=$(ls build-ab/old-52f0b57/*.whl)" \
    --wheel "old98=$(ls build-ab/old-98057c1/*.whl)" --wheel "cand=$(ls build-ab/candidate/*.whl)" \
    --models qwen3-30b-a3b,llama4-scout --tokens 1024,16384
fi
if [[ ${NCU:-0} != 0 ]]; then  # ncu_table keeps a CSV per process in $OUT: here, then one tarball
  (
    export OUT=/tmp/ncu_csv
    mkdir -p "$OUT"
    step ncu 240 python3 dev/ncu_table.py --wheel "$(ls build-ab/candidate/*.whl)" \
      --dtype bf16 --tokens "${NCU_TOKENS:-16384}" --peak-bf16 791
  )
  cp /tmp/ncu_csv/ncu.log "$OUT/ncu.log" 2>/dev/null
  tar -czf "$OUT/ncu.tar.gz" -C /tmp/ncu_csv . 2>/dev/null
fi
echo "all: $((SECONDS - start)) s"
