#!/usr/bin/env bash
# Builds one variant of the library for an A/B on the GPU machine (dev/ab_wheels.py): HEAD with
# dev/variants/NAME.patch applied (NAME = base: HEAD as it is), in a temporary worktree, through
# scripts/prebuild_device.sh; copies its cp312 wheel and the named GPU test executables into
# build-ab/NAME/ (git-ignored; carry ["build-ab"], 64 MiB in all: a wheel is ~1.7 MB, a test
# executable 4-9 MB). Patches are drafts that have not earned a place in src/ yet: each one's
# prediction is in dev/variants/README.md, its measurement goes into bench/NOTES.md, and it is
# deleted once it has landed or lost.
# A patch may build on another: its first line "# on top of: OTHER" (git apply skips it).
# Usage: dev/build_variant.sh NAME [test_gpu_... ...]
#   e.g. dev/build_variant.sh base && dev/build_variant.sh fp8-stages6 test_gpu_fp8
set -euo pipefail
cd "$(dirname "$0")/.."
name=$1
shift
root=$PWD
patch="$root/dev/variants/$name.patch"
[[ $name == base || -f $patch ]] || { echo "build_variant: no $patch" >&2; exit 1; }
tree=$(mktemp -d /tmp/fusedmoe-variant-XXXXXX)
git worktree add -q --detach "$tree" HEAD
trap 'git -C "$root" worktree remove --force "$tree"' EXIT
# A patch whose first line is "# on top of: OTHER" is applied after OTHER's (recursively).
apply_variant() {
  local file="$root/dev/variants/$1.patch" below
  [[ -f $file ]] || { echo "build_variant: no $file" >&2; exit 1; }
  below=$(sed -n '1s/^# on top of: \([A-Za-z0-9_.-]*\).*/\1/p' "$file")
  [[ -z $below ]] || apply_variant "$below"
  git -C "$tree" apply "$file"
}
[[ $name == base ]] || apply_variant "$name"
# The patch is uncommitted in the worktree: prebuild_device.sh builds it in (and says so).
bash "$tree/scripts/prebuild_device.sh" 2>&1 | grep -v "uncommitted changes are built in" || true
[[ -f $tree/build-carry/COMMIT ]] || { echo "build_variant: the build of $name failed" >&2; exit 1; }
out="$root/build-ab/$name"
rm -rf "$out" && mkdir -p "$out"
cp "$tree"/build-carry/wheel/*.whl "$out/"
for test in "$@"; do cp "$tree/build-carry/tests/$test" "$out/"; done
echo "$(git rev-parse --short HEAD) + $name" > "$out/BUILT_FROM"
du -sh "$out"
