#!/usr/bin/env bash
# Configures (Ninja, Release) into build/, builds everything with -j2 (CUDA code included, so a
# broken kernel fails here even without a GPU) and runs every C++ test through ctest. GPU tests
# skip cleanly when no GPU is present. Expects scripts/setup.sh to have run.
# FUSEDMOE_BUILD_DIR overrides the build directory (default build/).
set -euo pipefail
cd "$(dirname "$0")/.."

# setup.sh cannot export PATH to its caller: find nvcc the same way it does.
if ! command -v nvcc >/dev/null; then
  for d in /usr/local/cuda/bin /usr/local/cuda-*/bin; do
    if [[ -x $d/nvcc ]]; then export PATH="$d:$PATH"; break; fi
  done
fi
command -v nvcc >/dev/null || { echo "test_cpp: nvcc (CUDA toolkit) not found" >&2; exit 1; }

build_dir="${FUSEDMOE_BUILD_DIR:-build}"
cmake -S . -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE=Release
cmake --build "$build_dir" -j2
ctest --test-dir "$build_dir" --output-on-failure
