#!/usr/bin/env bash
# Everything a fresh machine needs, idempotent and cached: system packages (Prometheus, Alertmanager,
# openssl, lua), the Python virtualenv, and the kube binaries and etcd built from source (cached in .cache/).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

bash scripts/install-system-deps.sh

py=${PYTHON:-python3.11}
command -v "$py" >/dev/null || py=python3
stamp=.venv/.installed-$(sha256sum pyproject.toml | cut -c1-16)
if [ ! -f "$stamp" ]; then
  [ -x .venv/bin/python ] || "$py" -m venv .venv
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q -e '.[dev]'
  rm -f .venv/.installed-*
  touch "$stamp"
fi

bash e2e/cluster/build-kube.sh >/dev/null
