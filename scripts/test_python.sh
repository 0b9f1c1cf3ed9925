#!/usr/bin/env bash
# Python package test (scripts/test.sh calls it; issue 4): on a fresh machine, makes a virtual
# environment, installs torch, numpy and pytest from PyPI, builds and installs the package
# with `pip install .` and runs pytest on tests/python. GPU tests skip without a Hopper GPU.
#
# torch: PyPI serves only the CUDA build for Linux x86-64 (~540 MB wheel plus ~1.9 GB of nvidia-*
# and cuda-toolkit wheels, ~1-2 min to install here; the CPU-only wheels live on PyTorch's own
# index, which CI cannot reach). Installing the torch wheel alone with --no-deps does not import
# (libcufile.so.0 missing), so the full install it is; pip's cache makes later runs quick.
#
# Environment: FUSEDMOE_PY (interpreter, default python3), FUSEDMOE_VENV (default
# build-python/venv), FUSEDMOE_TORCH (pip requirement, default torch>=2.4).
set -euo pipefail
cd "$(dirname "$0")/.."

python_bin="${FUSEDMOE_PY:-python3}"
venv="${FUSEDMOE_VENV:-build-python/venv}"
torch_req="${FUSEDMOE_TORCH:-torch>=2.4}"

if ! command -v nvcc >/dev/null; then
  for d in /usr/local/cuda/bin /usr/local/cuda-*/bin; do [[ -x $d/nvcc ]] && export PATH="$d:$PATH" && break; done
fi
command -v nvcc >/dev/null || { echo "test_python: nvcc (CUDA toolkit) not found" >&2; exit 1; }

if [[ ! -x "$venv/bin/python" ]]; then
  "$python_bin" -m venv "$venv"
fi
py="$venv/bin/python"
export PIP_DISABLE_PIP_VERSION_CHECK=1
start=$SECONDS
"$py" -m pip install -q --upgrade pip
"$py" -m pip install -q "$torch_req" numpy pytest
echo "test_python: python deps ready in $((SECONDS - start)) s ($("$py" -c 'import torch; print("torch", torch.__version__)'))"

# Two jobs at most: the build compiles the library's CUDA sources (2-core machine). The build
# requirements come from pyproject.toml through pip's isolated build environment (PyPI).
start=$SECONDS
CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-2}" "$py" -m pip install -q .
echo "test_python: pip install . took $((SECONDS - start)) s"

# pytest exits 5 when it collected no test: that is a failure here, never a pass.
set +e
"$py" -m pytest tests/python -ra -q -p no:cacheprovider
status=$?
set -e
if [[ $status -eq 5 ]]; then
  echo "test_python: pytest collected no tests" >&2
  exit 1
fi
exit $status
