#!/usr/bin/env bash
# Builds tests/test_gpu_decode.cu with nvcc alone (no CMake, only the decode and prefill GEMM
# launchers), so the decode GEMMs can be tested and benchmarked on the device machine while the
# rest of the library is in flux. googletest from /usr/include + /usr/lib when installed, else
# from .deps/googletest.
# Usage: dev/decode_build_test.sh OUT_DIR   -> OUT_DIR/test_gpu_decode
#   FUSEDMOE_DECODE_BENCH=1 OUT_DIR/test_gpu_decode --gtest_filter='*Bench*'   (the bandwidth table)
set -euo pipefail
out=${1:-build-decode-dev}
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
srcs=(src/launch/launch_decode_gemm1_swiglu.cu src/launch/launch_decode_gemm2.cu
      src/launch/launch_gemm1_swiglu.cu src/launch/launch_gemm2.cu src/launch/tensor_map.cu
      tests/test_gpu_decode.cu tests/common/host_data.cc tests/common/tolerance.cc)
objs=()
for f in "${srcs[@]}"; do
  nvcc "${flags[@]}" -x cu -c "$f" -o "$out/$(basename "$f").o" &
  objs+=("$out/$(basename "$f").o")
done
wait
nvcc "${flags[@]}" "${objs[@]}" "${gtest_libs[@]}" -lpthread -o "$out/test_gpu_decode"
