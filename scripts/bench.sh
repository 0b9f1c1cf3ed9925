#!/usr/bin/env bash
# The README's main command: the benchmark of bench/README.md on the default model,
# qwen3-30b-a3b, over the full token grid. Extra arguments go to bench/bench_moe.py, e.g.
#   scripts/bench.sh --models all --ep --json bench/results/all.json
# With a GPU: installs the fusedmoe package when it does not import, then benchmarks it against
# the torch baselines (baselines alone, said loudly, when the package cannot be built).
# Without a GPU: runs fusedmoe's CPU reference path on small problems against the torch loop
# reference; that is a correctness check, not a benchmark.
set -euo pipefail
cd "$(dirname "$0")/.."
# An interpreter with torch (a venv from PyPI on a fresh machine), then the package.
source scripts/python_env.sh
# Always (re)installed, so the benchmark never times a stale build; FUSEDMOE_SKIP_INSTALL=1 skips.
if [[ "${FUSEDMOE_SKIP_INSTALL:-0}" != 1 ]]; then
  fusedmoe_install || echo "bench.sh: installing fusedmoe FAILED; only the baselines can run" >&2
fi
# The commit printed and stored: $FUSEDMOE_COMMIT when set (pass it on the device machine, whose
# copy of the tree may hold a stale .git), else bench_moe.py asks git.

if "$py" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  exec "$py" bench/bench_moe.py "$@"
fi
echo "bench.sh: NO GPU FOUND: running fusedmoe's CPU reference check instead of the benchmark"
exec "$py" bench/bench_moe.py --cpu "$@"
