#!/usr/bin/env bash
# Regenerates requirements.lock: the operator image's exact runtime dependencies with their hashes, for
# the Python of the image (3.11), resolved by pip-tools from pyproject.toml's [project] dependencies.
# Run it after changing those dependencies; tests/test_packaging.py fails while the lock is out of step.
set -euo pipefail
cd "$(dirname "$0")/.."
CUSTOM_COMPILE_COMMAND="bash scripts/lock.sh" .venv/bin/pip-compile --quiet --generate-hashes --strip-extras --allow-unsafe --no-emit-index-url \
  --no-emit-find-links \
  --output-file requirements.lock pyproject.toml
