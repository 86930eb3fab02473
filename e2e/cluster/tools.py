"""Everything the harness needs on disk before it can start: system packages, kube binaries, CRDs.

All three are idempotent and fast when already present, so callers simply call them every time.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from e2e.cluster.paths import (
    BUILD_KUBE_SCRIPT,
    CACHE_DIR,
    GATEWAY_API_MODULE,
    GATEWAY_API_VERSION,
    HELM_MODULE,
    HELM_VERSION,
    INSTALL_DEPS_SCRIPT,
    KUBE_VERSION,
)

SYSTEM_TOOLS = ("prometheus", "prometheus-alertmanager", "openssl")
KUBE_TOOLS = ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl", "kwok", "etcd")


class ToolError(RuntimeError):
    pass


def _run(argv: list[str], what: str, timeout_s: float, env: dict[str, str] | None = None) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s, env=env)
    except subprocess.TimeoutExpired as e:
        raise ToolError(f"{what}: timed out after {timeout_s:.0f}s") from e
    if done.returncode != 0:
        raise ToolError(f"{what} failed (rc={done.returncode}):\n{done.stderr[-4000:]}")
    return done.stdout


def ensure_system_deps() -> None:
    if all(shutil.which(t) for t in SYSTEM_TOOLS):
        return
    _run(["bash", str(INSTALL_DEPS_SCRIPT)], "scripts/install-system-deps.sh", timeout_s=900)
    missing = [t for t in SYSTEM_TOOLS if not shutil.which(t)]
    if missing:
        raise ToolError(f"still missing after install-system-deps.sh: {missing}")


def kube_bin_dir() -> Path:
    """Runs build-kube.sh: prints the cached dir at once, or builds first (a cold build takes minutes)."""
    env = {**os.environ, "KUBE_VERSION": KUBE_VERSION}
    out = _run(["bash", str(BUILD_KUBE_SCRIPT)], "e2e/cluster/build-kube.sh", timeout_s=3600, env=env)
    bin_dir = Path(out.strip().splitlines()[-1])
    missing = [t for t in KUBE_TOOLS if not os.access(bin_dir / t, os.X_OK)]
    if missing:
        raise ToolError(f"build-kube.sh did not produce {missing} in {bin_dir}")
    return bin_dir


def gateway_api_crd_dir() -> Path:
    """The standard-channel CRDs exactly as released, from the Go module cache (downloaded if needed)."""
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    # Outside any module, so `go mod download` does not touch a go.mod of ours.
    with tempfile.TemporaryDirectory(dir=CACHE_DIR) as empty:
        env = {**os.environ, "GOFLAGS": "-mod=mod", "GO111MODULE": "on"}
        out = subprocess.run(
            ["go", "mod", "download", "-json", f"{GATEWAY_API_MODULE}@{GATEWAY_API_VERSION}"],
            cwd=empty,
            capture_output=True,
            text=True,
            timeout=600,
            env=env,
        )
    if out.returncode != 0:
        raise ToolError(f"go mod download {GATEWAY_API_MODULE}@{GATEWAY_API_VERSION} failed:\n{out.stderr}")
    crd_dir = Path(json.loads(out.stdout)["Dir"]) / "config" / "crd" / "standard"
    if not (crd_dir / "gateway.networking.k8s.io_httproutes.yaml").is_file():
        raise ToolError(f"no HTTPRoute CRD under {crd_dir}")
    return crd_dir


def helm_bin() -> Path:
    """helm at a pinned release, built once with `go install` from the Go module proxy into .cache/bin."""
    bin_dir = CACHE_DIR / "bin" / f"helm-{HELM_VERSION}"
    helm = bin_dir / "helm"
    if os.access(helm, os.X_OK):
        return helm
    bin_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "GOBIN": str(bin_dir), "GOFLAGS": "-mod=mod", "GOTOOLCHAIN": "local"}
    _run(["go", "install", "-ldflags=-s -w", f"{HELM_MODULE}@{HELM_VERSION}"], "go install helm", 1800, env)
    if not os.access(helm, os.X_OK):
        raise ToolError(f"go install {HELM_MODULE}@{HELM_VERSION} did not produce {helm}")
    return helm
