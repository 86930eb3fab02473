#!/usr/bin/env bash
# Builds Prometheus at a pinned release from the Go module proxy and caches it under
# .cache/bin/prometheus-<version>; prints the binary's path. The scale benchmarks run on it
# (E2E_PROMETHEUS): Debian's package is 2.42 (2023), whose query engine took 1.7-3.4 times as long
# as this release's over each of the fast check's fleet-wide queries at 10,000 rollouts (README,
# Measured: `python -m e2e.bench --only query`).
# No web UI assets (they are not in the module): the API, which is all the operator uses, is complete.
set -euo pipefail

PROMETHEUS_VERSION=${PROMETHEUS_VERSION:-3.16.0}
root=$(cd "$(dirname "$0")/../.." && pwd)
out="$root/.cache/bin/prometheus-$PROMETHEUS_VERSION"
if [ -x "$out/prometheus" ]; then echo "$out/prometheus"; exit 0; fi

# Prometheus 3.x.y is the Go module version v0.3xx.y (github.com/prometheus/prometheus).
IFS=. read -r major minor patch <<< "$PROMETHEUS_VERSION"
module_version="v0.$((major * 100 + minor)).$patch"
mkdir -p "$out"
GOTOOLCHAIN=local GOFLAGS=-mod=mod GOBIN="$out" go install \
  -ldflags "-X github.com/prometheus/common/version.Version=$PROMETHEUS_VERSION" \
  "github.com/prometheus/prometheus/cmd/prometheus@$module_version" >&2
echo "$out/prometheus"
