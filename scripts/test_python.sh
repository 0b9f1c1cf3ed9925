#!/usr/bin/env bash
# Python package test (scripts/test.sh calls it; issue 4): gets an interpreter with torch
# (scripts/python_env.sh: a venv from PyPI on a fresh machine), builds and installs the package
# with `pip install .` and runs pytest on tests/python. GPU tests skip without a Hopper GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/python_env.sh
fusedmoe_install

# pytest exits 5 when it collected no test: that is a failure here, never a pass.
set +e
"$py" -m pytest tests/python -ra -q -p no:cacheprovider
status=$?
set -e
if [[ $status -eq 5 ]]; then
  echo "test_python: pytest collected no tests" >&2
  exit 1
fi
exit $status
