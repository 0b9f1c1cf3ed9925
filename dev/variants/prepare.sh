#!/usr/bin/env bash
# Everything the next device calls carry, built here from HEAD in one go (a new checkout has no
# build folders): build-carry for scripts/device_check.sh (FUSEDMOE_PREBUILT=1), its soak test
# moved to build-ab-spare/soak so that the carry fits in 64 MiB, and build-ab/NAME for base and
# each variant of README.md's plan with the GPU tests its call runs. Each step is skipped when its
# folder was already built from the same sources (KEY, below), so a second run after an
# interruption goes on where it stopped. Takes about 25 minutes in all on a two-core machine; run it in the background.
#   bash dev/variants/prepare.sh [> /tmp/prepare.log 2>&1 &]
set -euo pipefail
cd "$(dirname "$0")/../.."
# A build is fresh while what it is built from is unchanged: the committed tree of the paths that
# go into a build and, for a variant, its patch and those it sits on (a KEY file beside the build
# holds the hash). Commits that touch only notes, dev tools or other patches keep every build.
[[ -z $(git status --porcelain -- src include python tests scripts CMakeLists.txt pyproject.toml) ]] ||
  echo "prepare: uncommitted changes under the build's paths (build-carry builds them in, the variants do not)" >&2
tree=$(git ls-tree -r HEAD -- src include python tests scripts CMakeLists.txt pyproject.toml |
  git hash-object --stdin)
key_of() {  # NAME: base, or a variant of dev/variants
  local name=$1 key=$tree
  while [[ -n $name && $name != base ]]; do
    key+=" $(git hash-object "dev/variants/$name.patch")"
    name=$(sed -n '1s/^# on top of: \([A-Za-z0-9_.-]*\).*/\1/p' "dev/variants/$name.patch")
  done
  echo "$key" | git hash-object --stdin | cut -c1-12
}
fresh() { [[ -f $1 && $(cat "$1") == "$2" ]]; }
if ! fresh build-carry/KEY "$(key_of base)"; then
  bash scripts/prebuild_device.sh
  rm -rf build-ab-spare/soak && mkdir -p build-ab-spare
  mv build-carry/tests/soak build-ab-spare/soak
  key_of base > build-carry/KEY
fi
echo "build-carry: $(cat build-carry/COMMIT), $(du -sh build-carry | cut -f1)"
# NAME and the GPU tests its call runs (README.md's table and plan).
variants=(
  "base"
  "gemm2-split-tails test_gpu_grouped_gemm test_gpu_moe test_gpu_hostile"
)
for entry in "${variants[@]}"; do
  read -ra words <<< "$entry"
  name=${words[0]}
  [[ $name == base || -f dev/variants/$name.patch ]] || { echo "$name: no patch, skipped"; continue; }
  key=$(key_of "$name")
  if fresh "build-ab/$name/KEY" "$key"; then echo "$name: built already ($(cat "build-ab/$name/BUILT_FROM"))"; continue; fi
  bash dev/build_variant.sh "${words[@]}"
  echo "$key" > "build-ab/$name/KEY"
done
# dev/cvt_rate (bench/NOTES.md, "What an FP8 decode GEMM spends on conversions") beside the base wheel.
[[ build-ab/base/cvt_rate -nt dev/cvt_rate.cu ]] ||
  /usr/local/cuda/bin/nvcc -O3 -std=c++17 -gencode=arch=compute_90a,code=sm_90a dev/cvt_rate.cu \
    -o build-ab/base/cvt_rate
du -sh build-ab/* build-carry
