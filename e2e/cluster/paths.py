"""Where the harness keeps binaries, run state and scratch data."""

from __future__ import annotations

import hashlib
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


def scratch_root(repo_root: Path = REPO_ROOT) -> Path:
    """etcd and Prometheus data go to RAM when /dev/shm exists: faster and nothing left on disk.

    /dev/shm is shared by the whole machine, so the directory is named after this clone: two clones
    starting a cluster of the same name (`cluster`, from `python -m e2e.cluster up`) would otherwise
    wipe each other's etcd data.
    """
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK):
        clone = hashlib.sha256(str(repo_root.resolve()).encode()).hexdigest()[:12]
        return shm / f"agent-rollout-e2e-{clone}"
    return repo_root / ".cache" / "scratch"
