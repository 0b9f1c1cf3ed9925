#!/usr/bin/env bash
# Sourced by scripts/test_python.sh and scripts/bench.sh: sets $py to a Python interpreter that
# has torch, numpy, pytest, transformers (for the experts_implementation="fusedmoe" integration
# and its tests) and (after fusedmoe_install) the fusedmoe package.
#  - If the default python3 already imports torch (the GPU machine's image), it is used as is and
#    the package is built with --no-build-isolation (that machine has no network).
#  - Otherwise (a fresh CI or developer machine) a virtual environment build-python/venv is made
#    and torch, numpy, pytest and transformers (>= 5.7, the first release whose experts registry
#    accepts new names; a pure-Python wheel) come from PyPI. torch: PyPI serves only the CUDA build for Linux
#    x86-64 (~540 MB wheel plus ~1.9 GB of nvidia-* wheels, ~1-2 min here); the torch wheel alone
#    with --no-deps does not import (libcufile.so.0 missing), so the full install it is.
# Environment: FUSEDMOE_PY (interpreter, default python3), FUSEDMOE_VENV (default
# build-python/venv), FUSEDMOE_TORCH (pip requirement, default torch>=2.4), FUSEDMOE_TRANSFORMERS
# (pip requirement, default transformers>=5.7). A system interpreter without transformers runs the
# rest; the transformers tests then skip, saying so.

if ! command -v nvcc >/dev/null; then
  for d in /usr/local/cuda/bin /usr/local/cuda-*/bin; do
    if [[ -x $d/nvcc ]]; then export PATH="$d:$PATH"; break; fi
  done
fi
command -v nvcc >/dev/null || { echo "python_env: nvcc (CUDA toolkit) not found" >&2; exit 1; }
export PIP_DISABLE_PIP_VERSION_CHECK=1

py="${FUSEDMOE_PY:-python3}"
fusedmoe_system_python=0
if "$py" -c "import torch, numpy, pytest" 2>/dev/null; then
  fusedmoe_system_python=1
else
  venv="${FUSEDMOE_VENV:-build-python/venv}"
  [[ -x "$venv/bin/python" ]] || "$py" -m venv "$venv"
  py="$venv/bin/python"
  start=$SECONDS
  "$py" -m pip install -q --upgrade pip
  "$py" -m pip install -q "${FUSEDMOE_TORCH:-torch>=2.4}" numpy pytest \
    "${FUSEDMOE_TRANSFORMERS:-transformers>=5.7}"
  echo "python_env: python deps ready in $((SECONDS - start)) s"
fi
echo "python_env: $("$py" -c 'import sys, torch; print(sys.executable, "torch", torch.__version__)')"
echo "python_env: $("$py" -c 'import transformers; print("transformers", transformers.__version__)' 2>/dev/null \
  || echo "transformers not installed: its integration tests skip")"

# Builds and installs the package (two jobs at most: it compiles the library's CUDA sources).
fusedmoe_install() {
  local start=$SECONDS
  if (( fusedmoe_system_python )); then
    CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-2}" \
      "$py" -m pip install -q --no-build-isolation --no-deps .
  else
    CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-2}" "$py" -m pip install -q .
  fi
  echo "python_env: pip install . took $((SECONDS - start)) s"
}
