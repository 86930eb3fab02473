"""The chart's RBAC and status admission policy, rendered by real helm and applied to the e2e cluster.

The e2e operator runs as the chart's ServiceAccount with a token, bound by exactly the rules the chart
renders: a permission the chart lacks fails the suite, as it would fail a real install.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from e2e.cluster import tools
from e2e.cluster.paths import REPO_ROOT

CHART_DIR = REPO_ROOT / "charts" / "agent-rollout"
RELEASE = "agent-rollout"
RELEASE_NAMESPACE = "agent-rollout-system"
# Everything but the operator Deployment itself (its image is not built by the e2e harness: the operator
# runs as a local process instead, with the ServiceAccount's token).
NOT_APPLIED_KINDS = frozenset({"Deployment"})
# A second release in namespaced mode (e2e/rollout/test_rbac.py) runs its operator in a namespace the
# session's cluster-wide release also covers. Its status policy must let that operator write status
# too: the chart's `statusWriters`, as for a second operator during a migration.
NAMESPACED_RELEASE, NAMESPACED_RELEASE_NAMESPACE = "agent-rollout-ns", "agent-rollout-ns-system"
SESSION_VALUES: dict[str, Any] = {
    "statusWriters": [f"system:serviceaccount:{NAMESPACED_RELEASE_NAMESPACE}:{NAMESPACED_RELEASE}"],
    # spec.notifications' webhook URLs come from Secrets in the rollout's namespace (test_notifications.py).
    "notifications": {"secretsInWatchedNamespaces": True},
}


def render(
    values: Mapping[str, Any] | None = None, *, release: str = RELEASE, namespace: str = RELEASE_NAMESPACE
) -> list[dict[str, Any]]:
    """`helm template` of the chart (values merged over values.yaml): the manifests it renders."""
    with tempfile.NamedTemporaryFile("w", suffix=".json") as values_file:
        json.dump(dict(values or {}), values_file)  # JSON is YAML: helm reads it as a values file
        values_file.flush()
        argv = [str(tools.helm_bin()), "template", release, str(CHART_DIR), "--namespace", namespace]
        done = subprocess.run([*argv, "-f", values_file.name], capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise RuntimeError(f"helm template failed:\n{done.stderr}")
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def access_manifests(manifests: Sequence[Mapping[str, Any]]) -> str:
    """The ServiceAccount, RBAC and admission policy of a rendering, as YAML for kubectl."""
    return yaml.safe_dump_all([m for m in manifests if m["kind"] not in NOT_APPLIED_KINDS], sort_keys=False)


def install_access(
    kubectl: Callable[..., subprocess.CompletedProcess[str]],
    values: Mapping[str, Any] | None = None,
    *,
    release: str = RELEASE,
    namespace: str = RELEASE_NAMESPACE,
) -> None:
    """Creates the release namespace and applies the chart's ServiceAccount, RBAC and admission policy."""
    namespace_doc = f"apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {namespace}\n"
    kubectl("apply", "-f", "-", stdin=namespace_doc)
    rendered = access_manifests(render(values, release=release, namespace=namespace))
    kubectl("apply", "--server-side", "--force-conflicts", "-f", "-", stdin=rendered)


def uninstall_access(
    kubectl: Callable[..., subprocess.CompletedProcess[str]],
    values: Mapping[str, Any] | None = None,
    *,
    release: str = RELEASE,
    namespace: str = RELEASE_NAMESPACE,
) -> None:
    rendered = access_manifests(render(values, release=release, namespace=namespace))
    kubectl("delete", "--ignore-not-found", "--wait=false", "-f", "-", stdin=rendered)


def operator_kubeconfig_path(run_dir: Path, release: str = RELEASE) -> Path:
    return run_dir / f"{release}-operator.kubeconfig"
