# The prelude of the device-call scripts of dev/variants (call.sh), sourced
# after they set OUT_DEFAULT and LIMIT_DEFAULT: the output folder, the seconds left of the call's
# budget (LIMIT overrides the default), the filter that keeps ab_wheels' tables short, and the
# card's name first in the printed output.
set -uo pipefail
start=$SECONDS
OUT=${OUT:-$OUT_DEFAULT}
mkdir -p "$OUT"
left() { echo $((${LIMIT:-$LIMIT_DEFAULT} - SECONDS + start)); }
table() { grep -v "^  " | grep -v "^longest kernels" | grep -v "_wheels/site_"; }
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
