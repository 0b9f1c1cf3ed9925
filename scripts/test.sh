#!/usr/bin/env bash
# The test command (README): sets up a fresh machine, builds everything (CUDA code included) and
# runs every test. GPU tests skip cleanly when no GPU is present. .ci/run calls this.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/test_cpp.sh
if [[ -f scripts/test_python.sh ]]; then bash scripts/test_python.sh; fi
