#!/usr/bin/env bash
# Runs the fuzz target (tests/fuzz/fuzz_moe.cc) for longer than its 25-second ctest entry, with a
# corpus that persists between runs: libFuzzer when clang has it, else the standalone driver.
#   bash scripts/fuzz.sh [SECONDS] [BUILD_DIR]        (defaults: 600, build)
# Extra libFuzzer flags go in FUSEDMOE_FUZZ_FLAGS (e.g. "-jobs=2 -workers=2"). A crash leaves its
# input in BUILD_DIR/tests/fuzz/artifacts/; replay it with: fuzz_moe <that file>.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-600}"
build="${2:-build}"
if ! command -v nvcc >/dev/null; then
  for d in /usr/local/cuda/bin /usr/local/cuda-*/bin; do
    if [[ -x $d/nvcc ]]; then export PATH="$d:$PATH"; break; fi
  done
fi
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release > /dev/null
cmake --build "$build" -j2 --target "$(cmake --build "$build" --target help | grep -o 'fuzz_moe_libfuzzer' | head -1 || echo fuzz_moe)"
binary="$build/tests/fuzz/fuzz_moe"
mkdir -p "$build/tests/fuzz/corpus" "$build/tests/fuzz/artifacts"
if "$binary" -help=1 2>&1 | grep -q 'libFuzzer'; then
  # shellcheck disable=SC2086
  exec "$binary" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -max_len=4096 \
    -print_final_stats=1 -artifact_prefix="$build/tests/fuzz/artifacts/" ${FUSEDMOE_FUZZ_FLAGS:-} \
    "$build/tests/fuzz/corpus"
fi
exec "$binary" -max_total_time="$seconds" -seed="${FUSEDMOE_FUZZ_SEED:-$RANDOM}"
