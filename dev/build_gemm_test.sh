#!/usr/bin/env bash
# Builds one GEMM-level GPU test with nvcc alone (no CMake, only the GEMM launchers it needs), so
# the GEMMs can be tested and benchmarked on the device machine while other parts are in flux.
# googletest comes from /usr/include + /usr/lib when installed, else from .deps/googletest.
# Usage: dev/build_gemm_test.sh grouped|decode OUT_DIR
#   grouped -> OUT_DIR/test_gpu_grouped_gemm  (FUSEDMOE_GEMM_BENCH=1 ... --gtest_filter=*Bench*)
#   decode  -> OUT_DIR/test_gpu_decode        (FUSEDMOE_DECODE_BENCH=1 ... --gtest_filter=*Bench*)
set -euo pipefail
kind=${1:?usage: dev/build_gemm_test.sh grouped|decode OUT_DIR}
out=${2:-build-$kind-dev}
srcs=(src/launch/launch_gemm1_swiglu.cu src/launch/launch_gemm2.cu src/launch/tensor_map.cu
      tests/common/host_data.cc tests/common/tolerance.cc)
case "$kind" in
  grouped) test=test_gpu_grouped_gemm libs=(-lcublas -lpthread) ;;
  decode)
    test=test_gpu_decode libs=(-lpthread)
    srcs+=(src/launch/launch_decode_gemm1_swiglu.cu src/launch/launch_decode_gemm2.cu) ;;
  *) echo "unknown test kind: $kind (grouped or decode)" >&2; exit 2 ;;
esac
srcs+=("tests/$test.cu")
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
objs=()
for f in "${srcs[@]}"; do
  nvcc "${flags[@]}" -x cu -c "$f" -o "$out/$(basename "$f").o" &
  objs+=("$out/$(basename "$f").o")
done
wait
nvcc "${flags[@]}" "${objs[@]}" "${gtest_libs[@]}" "${libs[@]}" -o "$out/$test"
