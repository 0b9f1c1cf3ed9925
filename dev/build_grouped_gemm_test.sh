#!/usr/bin/env bash
# Builds tests/test_gpu_grouped_gemm.cu with nvcc alone (no CMake, none of the rest of the library),
# so the grouped GEMMs can be tested on the device machine while other parts are in flux.
# googletest comes from /usr/include + /usr/lib when installed, else from .deps/googletest.
# Usage: dev/build_grouped_gemm_test.sh OUT_DIR   -> OUT_DIR/test_gpu_grouped_gemm
set -euo pipefail
out=${1:-build-gemm-dev}
mkdir -p "$out"
flags=(-std=c++17 -O3 -gencode=arch=compute_90a,code=sm_90a --expt-relaxed-constexpr -lineinfo
       -Isrc -Iinclude -Itests)
if [[ -f .deps/googletest/googletest/src/gtest-all.cc ]]; then
  gt=.deps/googletest/googletest
  g++ -std=c++17 -O2 -I$gt/include -I$gt -c $gt/src/gtest-all.cc -o "$out/gtest-all.o" &
  g++ -std=c++17 -O2 -I$gt/include -I$gt -c $gt/src/gtest_main.cc -o "$out/gtest_main.o" &
  flags+=(-I$gt/include)
  gtest_libs=("$out/gtest-all.o" "$out/gtest_main.o")
else
  gtest_libs=(-lgtest -lgtest_main)
fi
for f in src/launch/launch_gemm1_swiglu.cu src/launch/launch_gemm2.cu src/launch/tensor_map.cu \
         tests/test_gpu_grouped_gemm.cu tests/common/host_data.cc tests/common/tolerance.cc; do
  nvcc "${flags[@]}" -x cu -c "$f" -o "$out/$(basename "$f").o" &
done
wait
nvcc "${flags[@]}" "$out"/launch_*.o "$out"/tensor_map.cu.o "$out"/test_gpu_grouped_gemm.cu.o \
  "$out"/host_data.cc.o "$out"/tolerance.cc.o "${gtest_libs[@]}" -lcublas -lpthread \
  -o "$out/test_gpu_grouped_gemm"
