# Shared by dev/ab_prefill.sh and dev/ncu_prefill.sh: sourced from the repository root, after
# `set -uo pipefail`. Trees are source trees made with git archive (.ab-*, git-ignored) or ".".
OUT="${OUT:-build-device/out}"
mkdir -p "$OUT"
export PATH="$PATH:/usr/local/cuda/bin"

# The short name of a tree: .ab-NAME -> NAME, "." -> new.
ab_tree_name() {
  [[ $1 == . ]] && { echo new; return; }
  local name
  name=$(basename "$(cd "$1" && pwd)")
  echo "${name#.ab-}"
}

# ab_build TREE NAME [TARGET]: builds the tree in build-ab-NAME (TARGET only when given; all of it,
# the GPU tests included, when empty), then the tree's own dev/time_stages.cu against it as
# /tmp/time_stages_NAME (a tree may set up its launches differently). Log: $OUT/build_NAME.log.
ab_build() {
  local tree name=$2 target=${3:-} build
  tree=$(cd "$1" && pwd)
  build=$PWD/build-ab-$name
  local log="$OUT/build_$name.log"
  if ! { cmake -S "$tree" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release \
           -DFUSEDMOE_GTEST_SOURCE_DIR="$PWD/.deps/googletest" > "$log" 2>&1 &&
         cmake --build "$build" -j "$(nproc)" ${target:+--target "$target"} >> "$log" 2>&1; }; then
    echo "build of $name FAILED"; grep -A8 '^FAILED' "$log" | head -30
    return 1
  fi
  nvcc -O3 -std=c++17 -gencode=arch=compute_90a,code=sm_90a -I"$tree/include" -I"$tree/src" \
    -I"$tree" "$tree/dev/time_stages.cu" "$build/libfusedmoe.a" -lcuda \
    -o "/tmp/time_stages_$name"
}
