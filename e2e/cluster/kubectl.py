"""Run the repo-built kubectl against a harness cluster (never /usr/bin/kubectl or ~/.kube/config)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path


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
