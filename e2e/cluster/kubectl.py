"""Run the repo-built kubectl against a harness cluster (never /usr/bin/kubectl or ~/.kube/config)."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from e2e.cluster.state import ClusterState

Kubectl = Callable[..., "subprocess.CompletedProcess[str]"]


class KubectlError(RuntimeError):
    pass


def run_kubectl(
    kubectl: Path,
    kubeconfig: Path,
    *args: str,
    stdin: str | None = None,
    timeout_s: float = 60,
    check: bool = True,
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "KUBECONFIG": str(kubeconfig)}
    done = subprocess.run(
        [str(kubectl), f"--kubeconfig={kubeconfig}", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        env=env,
    )
    if check and done.returncode != 0:
        raise KubectlError(f"kubectl {' '.join(args)} failed (rc={done.returncode}): {done.stderr.strip()}")
    return done


def kubectl_for(cluster: ClusterState) -> Kubectl:
    """kubectl(*args, stdin=None, check=True) with the repo-built kubectl and the cluster's kubeconfig."""

    def run(*args: str, stdin: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
        return run_kubectl(cluster.kubectl_bin, cluster.kubeconfig, *args, stdin=stdin, check=check)

    return run


ESTABLISHED = '{.status.conditions[?(@.type=="Established")].status}'


def wait_established(kubectl: Kubectl, *crds: str, timeout_s: float = 60) -> None:
    """Wait until each CustomResourceDefinition (`plural.group`) is Established. Not `kubectl wait
    --for=condition=Established`: on a CRD whose status has no conditions yet (applied a moment
    before, the apiextensions controller not done with it) kubectl 1.36 fails at once with
    ".status.conditions accessor error: <nil>" instead of waiting; in a fresh-clone CI run that failed
    the setup of every e2e rollout test."""
    deadline = time.monotonic() + timeout_s
    for crd in crds:
        while (
            done := kubectl("get", f"crd/{crd}", "-o", f"jsonpath={ESTABLISHED}", check=False)
        ).stdout != "True":
            if time.monotonic() > deadline:
                raise KubectlError(
                    f"CRD {crd} not Established after {timeout_s:g}s: {done.stdout or done.stderr.strip()!r}"
                )
            time.sleep(0.2)
