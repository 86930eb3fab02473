"""Where the harness keeps binaries, run state and scratch data."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
CACHE_DIR = REPO_ROOT / ".cache"
RUN_ROOT = CACHE_DIR / "run"
BUILD_KUBE_SCRIPT = REPO_ROOT / "e2e" / "cluster" / "build-kube.sh"
INSTALL_DEPS_SCRIPT = REPO_ROOT / "scripts" / "install-system-deps.sh"

KUBE_VERSION = os.environ.get("KUBE_VERSION", "v1.36.3")
GATEWAY_API_MODULE = "sigs.k8s.io/gateway-api"
GATEWAY_API_VERSION = "v1.6.3"
# Renders the chart in e2e, so the operator runs under exactly the RBAC the chart ships.
HELM_MODULE = "helm.sh/helm/v3/cmd/helm"
HELM_VERSION = "v3.22.0"

# The long-lived cluster of `python -m e2e.cluster up`; pytest sessions may reuse it.
SHARED_CLUSTER_NAME = "cluster"


def scratch_root() -> Path:
    """etcd and Prometheus data go to RAM when /dev/shm exists: faster and nothing left on disk."""
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK):
        return shm / "agent-rollout-e2e"
    return CACHE_DIR / "scratch"
