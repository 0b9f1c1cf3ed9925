#!/usr/bin/env bash
# Builds variants of the decode GEMM config (kernels/sm90_decode_mainloop.cuh) beside the base
# test binary of `dev/build_gemm_test.sh decode`, for one-call comparisons on the device machine: each
# variant = the base objects with the two decode launchers rebuilt from a copy of src/ whose
# DecodeTile / DecodeGemmConfig constants are edited by sed. Prints ptxas registers and spills
# per variant.
# Usage: dev/decode_build_variants.sh OUT_DIR NAME 'kTilesM = 4' 'kMinCtasPerSm = 3' ...
#   -> OUT_DIR/test_gpu_decode_NAME  (OUT_DIR must hold a `dev/build_gemm_test.sh decode` build)
set -euo pipefail
out=$1 name=$2
shift 2
tmp=$(mktemp -d)
cp -r src include "$tmp/"
cfg="$tmp/src/kernels/sm90_decode_mainloop.cuh"
for edit in "$@"; do
  key=${edit%% =*}
  sed -i -E "s/(static constexpr int ${key} = )[^;]+;/\1${edit#*= };/" "$cfg"
  grep -q "static constexpr int ${key} = ${edit#*= };" "$cfg" ||
    { echo "edit failed: $edit"; exit 1; }
done
flags=(-std=c++17 -O3 -gencode=arch=compute_90a,code=sm_90a --expt-relaxed-constexpr -lineinfo
       -I"$tmp/src" -Iinclude -Itests -Xptxas -v)
mkdir -p "$out/$name"
for f in launch_decode_gemm1_swiglu launch_decode_gemm2; do
  nvcc "${flags[@]}" -c "$tmp/src/launch/$f.cu" -o "$out/$name/$f.cu.o" 2>&1 |
    grep -E "registers|spill" | sed "s/^/$name $f: /" &
done
wait
objs=()
for o in "$out"/*.o; do
  case $(basename "$o") in
    launch_decode_*) objs+=("$out/$name/$(basename "$o")") ;;
    *) objs+=("$o") ;;
  esac
done
libs=(-lgtest -lgtest_main)
[[ -f "$out/gtest-all.o" ]] && libs=()
nvcc -gencode=arch=compute_90a,code=sm_90a "${objs[@]}" "${libs[@]}" -lpthread \
  -o "$out/test_gpu_decode_$name"
rm -rf "$tmp"
