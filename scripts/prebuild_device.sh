#!/usr/bin/env bash
# Builds here what scripts/device_check.sh runs on the GPU machine, so that a device call spends
# no time compiling (FUSEDMOE_PREBUILT=1): the GPU test executables, gpu_soak and libfusedmoe.a
# (for the SASS count) from a Release build in build/, and the Python package as a cp312 wheel
# (the GPU machine's Python 3.12; the extension needs no torch to build). Everything lands in
# build-carry/ (git-ignored, ~40 MB), with the commit it was built from in build-carry/COMMIT;
# carry it: run: command "FUSEDMOE_PREBUILT=1 bash scripts/device_check.sh", carry ["build-carry"].
# The binaries link the CUDA 13 runtime and cuBLAS dynamically (the GPU machine has both) and
# glibc/libstdc++ of this Debian 12 machine (older than the GPU machine's, so they load there).
# Environment: FUSEDMOE_PY312 (a Python 3.12 interpreter; default: pyenv's 3.12).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/local/cuda/bin"
py312="${FUSEDMOE_PY312:-$(ls -d /root/.pyenv/versions/3.12*/bin/python3.12 2>/dev/null | head -1)}"
[[ -x $py312 ]] || { echo "prebuild_device: no Python 3.12 (set FUSEDMOE_PY312)" >&2; exit 1; }
[[ -z $(git status --porcelain -- src include python tests CMakeLists.txt) ]] ||
  echo "prebuild_device: warning: uncommitted changes are built in as well" >&2

cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release > /dev/null
cmake --build build -j "$(nproc)"
rm -rf build-carry && mkdir -p build-carry/tests/soak build-carry/wheel
cp build/tests/test_gpu_* build-carry/tests/ 2>/dev/null || true
rm -f build-carry/tests/*.cmake
cp build/tests/soak/gpu_soak build-carry/tests/soak/
cp build/libfusedmoe.a build-carry/
CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" "$py312" -m pip wheel -q . --no-deps -w build-carry/wheel
git rev-parse --short HEAD > build-carry/COMMIT
[[ -z $(git status --porcelain -- src include python tests CMakeLists.txt) ]] ||
  sed -i 's/$/+uncommitted/' build-carry/COMMIT
du -sh build-carry
