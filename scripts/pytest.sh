#!/usr/bin/env bash
# Runs pytest and makes its exit codes explicit. Exit 5 means pytest collected no tests: for this
# project that is always a broken suite (a bad path or an import-time skip), never a pass.
set -uo pipefail
cd "$(dirname "$0")/.."
.venv/bin/python -m pytest -p no:cacheprovider -ra "$@"
rc=$?
if [ "$rc" -eq 5 ]; then
  echo "pytest collected no tests for: $* -- the suite must never be empty" >&2
  exit 1
fi
exit "$rc"
