#!/usr/bin/env bash
# Everything the next device calls carry, built here from HEAD in one go (a new checkout has no
# build folders): build-carry for scripts/device_check.sh (FUSEDMOE_PREBUILT=1), its soak test
# moved to build-ab-spare/soak so that the carry fits in 64 MiB, and build-ab/NAME for base and
# each variant of README.md's plan with the GPU tests its call runs. Each step is skipped when its
# folder was already built from HEAD, so a second run after an interruption goes on where it
# stopped. Takes about 25 minutes in all on a two-core machine; run it in the background.
#   bash dev/variants/prepare.sh [> /tmp/prepare.log 2>&1 &]
set -euo pipefail
cd "$(dirname "$0")/../.."
head=$(git rev-parse --short HEAD)
fresh() { [[ -f $1 ]] && grep -q "^$head" "$1"; }
if ! fresh build-carry/COMMIT; then
  bash scripts/prebuild_device.sh
  rm -rf build-ab-spare/soak && mkdir -p build-ab-spare
  mv build-carry/tests/soak build-ab-spare/soak
fi
echo "build-carry: $(cat build-carry/COMMIT), $(du -sh build-carry | cut -f1)"
# NAME and the GPU tests its call runs (README.md's table and plan).
variants=(
  "base"
  "fp8-every-method-test test_gpu_fp8"
  "fp8-gemm1-quantises-act test_gpu_fp8"
  "quantize-group-load test_gpu_fp8"
)
for entry in "${variants[@]}"; do
  read -ra words <<< "$entry"
  name=${words[0]}
  [[ $name == base || -f dev/variants/$name.patch ]] || { echo "$name: no patch, skipped"; continue; }
  if fresh "build-ab/$name/BUILT_FROM"; then echo "$name: built from $head already"; continue; fi
  bash dev/build_variant.sh "${words[@]}"
done
du -sh build-ab/* build-carry
