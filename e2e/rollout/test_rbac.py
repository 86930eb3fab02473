"""Who may do what, end to end, with real identities (ServiceAccount tokens, no impersonation).

- Status is operator-owned. A release manager holding only the verb permission (get/list/watch
  agentrollouts, patch agentrollouts/status) cannot forge status.currentStep, weights, phase or history
  through the status subresource: the chart's ValidatingAdmissionPolicy denies the request, the stored
  rollout and the route stay as they were. The same person CAN abort (with the real plugin), and the
  operator rolls back; a verb once set is the operator's to clear. On a rollout the operator has not
  written yet (no status at all) a verb is allowed and anything else is not.
- The chart's namespaced mode (`watchNamespaces`): an operator bound only by Roles in its namespace
  (plus the few cluster-scoped reads kopf needs) runs a rollout to the end, refused nothing, and the
  apiserver's audit log shows it used every permission the chart grants: none missing, none in excess.

Every operator in this suite runs as the chart's ServiceAccount under the chart's ClusterRole (see
conftest.py), so the cluster-wide mode is proven by every other test.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

import pytest
from kubernetes import client

from agent_rollout import api
from e2e.cluster import ClusterState, audit, chart, identity
from e2e.cluster.components import audit_log_path
from e2e.cluster.kubeapi import KubeApi, new_api_client
from e2e.cluster.kubectl import run_kubectl
from e2e.cluster.podrunner import PodRunner
from e2e.rollout.conftest import permission_trouble, wait_for_rbac
from e2e.rollout.scene import CANDIDATE, LEGACY, REPO, OperatorProcess, Scene, wait_until
from e2e.rollout.test_evaluation import evaluate_step

ERROR_GATE = {"name": "error-rate", "template": "errorRate", "max": 0.05, "window": "30s"}
PLUGIN = REPO / ".venv" / "bin" / "kubectl-agentrollout"
RELEASE_MANAGER = "release-manager"
ROLLOUT_RESOURCE = f"{api.PLURAL}.{api.GROUP}"


def verb_role(namespace: str) -> dict[str, Any]:
    """All a human needs for `kubectl agentrollout status|abort|promote|retry`, and nothing more."""
    return {
        "metadata": {"name": "agentrollout-verbs", "namespace": namespace},
        "rules": [
            {"apiGroups": [api.GROUP], "resources": [api.PLURAL], "verbs": ["get", "list", "watch"]},
            {"apiGroups": [api.GROUP], "resources": [f"{api.PLURAL}/status"], "verbs": ["patch"]},
        ],
    }


@pytest.fixture
def release_manager(namespace: str, kube_api: KubeApi, cluster: ClusterState) -> Iterator[Path]:
    """A kubeconfig with the token of a ServiceAccount bound only to the verb Role in the namespace."""
    rbac = client.RbacAuthorizationV1Api(kube_api.client)
    identity.ensure_service_account(kube_api, namespace, RELEASE_MANAGER)
    rbac.create_namespaced_role(namespace, cast(Any, verb_role(namespace)))
    binding = {
        "metadata": {"name": "agentrollout-verbs", "namespace": namespace},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "agentrollout-verbs"},
        "subjects": [{"kind": "ServiceAccount", "name": RELEASE_MANAGER, "namespace": namespace}],
    }
    rbac.create_namespaced_role_binding(namespace, cast(Any, binding))
    path = identity.service_account_kubeconfig(
        kube_api, namespace, RELEASE_MANAGER, cluster.run_dir / f"{namespace}-{RELEASE_MANAGER}.kubeconfig"
    )
    wait_for_rbac(cluster, path, ("patch", ROLLOUT_RESOURCE, "--subresource=status", "-n", namespace))
    yield path
    path.unlink(missing_ok=True)


class StatusWriter:
    """Writes the status subresource as one identity; returns the refusal, or None when it was stored."""

    def __init__(self, kubeconfig: Path, namespace: str, name: str) -> None:
        self.api_client = new_api_client(kubeconfig)
        self.custom = client.CustomObjectsApi(self.api_client)
        self.namespace, self.name = namespace, name

    def merge(self, status: dict[str, Any], *, dry_run: bool = False) -> client.ApiException | None:
        return self._patch({"status": status}, dry_run=dry_run)

    def json_patch(self, ops: list[dict[str, Any]]) -> client.ApiException | None:
        return self._patch(ops, content_type="application/json-patch+json")

    def _patch(self, body: Any, *, dry_run: bool = False, **kwargs: Any) -> client.ApiException | None:
        try:
            self.custom.patch_namespaced_custom_object_status(
                api.GROUP,
                api.VERSION,
                self.namespace,
                api.PLURAL,
                self.name,
                body,
                dry_run="All" if dry_run else None,
                **({"_content_type": kwargs["content_type"]} if "content_type" in kwargs else {}),
            )
        except client.ApiException as e:
            return e
        return None

    def close(self) -> None:
        self.api_client.close()  # type: ignore[no-untyped-call]


def denied_by_policy(error: client.ApiException | None) -> str:
    """The apiserver's message when the chart's admission policy refused the write, else ''."""
    if error is None or error.status not in (403, 422):
        return ""
    message = str(json.loads(error.body or "{}").get("message", ""))
    return message if "status-owned-by-operator" in message and "denied request" in message else ""


def plugin(kubeconfig: Path, verb: str, name: str, namespace: str) -> str:
    """The real kubectl plugin, as its own process, with only the given identity."""
    env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
    done = subprocess.run(
        [str(PLUGIN), verb, name, "-n", namespace, "--kubeconfig", str(kubeconfig)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, f"{verb} failed: {done.stderr}"
    return done.stdout


# Each one alone would move traffic or rewrite the record if it were stored.
FORGERIES: dict[str, dict[str, Any]] = {
    "jump to the last step": {"currentStep": 2},
    "all traffic to the candidate": {"weights": {"legacy": 0, "candidate": 100}},
    "declare it promoted": {"phase": "Promoted"},
    "erase the history": {"history": []},
    "delete the history": {"history": None},
    "an abort smuggling a step": {"abort": True, "currentStep": 2},
}
GUARDED = ("phase", "currentStep", "weights", "history", "abort", "candidateRevision")


def test_a_release_manager_with_only_the_verb_permission_can_abort_but_not_steer_traffic(
    scene: Callable[..., Scene], release_manager: Path
) -> None:
    s = scene(rps=10)
    steps: list[dict[str, Any]] = [{"setWeight": 30}, {"pause": {}}, {"setWeight": 100}]
    s.apply(s.rollout_manifest("owned", steps=steps, minSamples=10, gates=[ERROR_GATE]))
    s.wait_for_phase("owned", "Paused", timeout_s=60)
    assert s.route_weights() == {LEGACY: 70, CANDIDATE: 30}
    writer = StatusWriter(release_manager, s.namespace, "owned")
    try:
        # The policy reaches admission a moment after it is created: wait on a dry run, which is judged
        # exactly like the real request but never stored.
        wait_until(
            "the status policy to be enforced",
            lambda: denied_by_policy(writer.merge({"currentStep": 2}, dry_run=True)),
            timeout_s=30,
        )
        before = s.status("owned")
        for what, forged in FORGERIES.items():
            error = writer.merge(forged)
            assert denied_by_policy(error), f"{what}: {forged} was not denied by the policy: {error}"
        remove_status = writer.json_patch([{"op": "remove", "path": "/status"}])
        assert denied_by_policy(remove_status), f"removing status was not denied: {remove_status}"
        message = denied_by_policy(writer.merge({"weights": {"legacy": 0, "candidate": 100}}))
        assert "status.weights" in message, message  # the refusal names what was refused

        after = s.status("owned")
        assert {k: after.get(k) for k in GUARDED} == {k: before.get(k) for k in GUARDED}
        assert s.route_weights() == {LEGACY: 70, CANDIDATE: 30}

        # The verbs are what this role is for: abort with the real plugin, as the release manager.
        out = plugin(release_manager, "abort", "owned", s.namespace)
        assert "abort requested" in out, out
        wait_until("legacy 100", lambda: s.route_weights() == {LEGACY: 100, CANDIDATE: 0}, 30)
        rolled_back = s.wait_for_phase("owned", "RolledBack", timeout_s=15)
        assert rolled_back["history"][: len(before["history"])] == before["history"], "history rewritten"
        assert rolled_back["history"][-1]["reason"] == "Aborted", rolled_back["history"][-1]

        # A verb is a request the operator consumes: only it sets one back to false.
        assert rolled_back.get("abort") is True, rolled_back
        cleared = denied_by_policy(writer.merge({"abort": False}))
        assert "status.abort" in cleared, cleared
        assert s.status("owned").get("abort") is True
    finally:
        writer.close()


def test_before_the_operator_writes_any_status_a_verb_is_allowed_and_nothing_else(
    namespace: str, release_manager: Path, operator: OperatorProcess, cluster: ClusterState, kubectl: Any
) -> None:
    # With the operator stopped, a new rollout keeps no status at all: the policy's `has()` cases.
    manifest = {
        "apiVersion": f"{api.GROUP}/{api.VERSION}",
        "kind": api.KIND,
        "metadata": {"name": "fresh", "namespace": namespace},
        "spec": {
            "legacy": {"deployment": LEGACY},
            "candidate": {"deployment": CANDIDATE},
            "traffic": {
                "gatewayAPI": {"httpRoute": "triage", "legacyBackend": LEGACY, "candidateBackend": CANDIDATE}
            },
            "analysis": {"prometheus": {"url": cluster.prometheus_url}, "interval": "5s"},
            "steps": [{"setWeight": 100}],
        },
    }
    operator.stop()
    writer = StatusWriter(release_manager, namespace, "fresh")
    try:
        kubectl("apply", "-f", "-", stdin=json.dumps(manifest))
        custom = client.CustomObjectsApi(writer.api_client)
        stored: Any = custom.get_namespaced_custom_object(
            api.GROUP, api.VERSION, namespace, api.PLURAL, "fresh"
        )
        assert "status" not in stored, stored
        wait_until(
            "the status policy to be enforced",
            lambda: denied_by_policy(writer.merge({"currentStep": 0}, dry_run=True)),
            timeout_s=30,
        )
        assert writer.merge({"abort": True}, dry_run=True) is None
        assert writer.merge({"promote": True, "retry": True}, dry_run=True) is None
        assert "status.weights" in denied_by_policy(
            writer.merge({"abort": True, "weights": {"legacy": 0, "candidate": 100}}, dry_run=True)
        )
    finally:
        writer.close()
        kubectl("delete", f"{api.PLURAL}.{api.GROUP}", "fresh", "-n", namespace, "--wait=false")
        operator.start()


def test_the_namespaced_chart_runs_a_rollout_under_roles_in_its_namespace_only(
    scene: Callable[..., Scene],
    operator: OperatorProcess,
    cluster: ClusterState,
    kubectl: Callable[..., Any],
    kube_api: KubeApi,
    runner: Callable[[Scene], PodRunner],
) -> None:
    s = scene(rps=10)
    values = {"watchNamespaces": [s.namespace]}
    release = {"release": chart.NAMESPACED_RELEASE, "namespace": chart.NAMESPACED_RELEASE_NAMESPACE}
    kinds = {(m["kind"], m["metadata"].get("namespace")) for m in chart.render(values, **release)}
    assert ("Role", s.namespace) in kinds and ("RoleBinding", s.namespace) in kinds, kinds
    assert ("ClusterRole", None) in kinds  # cluster-scoped reads only: CRDs and namespaces
    chart.install_access(kubectl, values, **release)
    kubeconfig = identity.service_account_kubeconfig(
        kube_api,
        chart.NAMESPACED_RELEASE_NAMESPACE,
        chart.NAMESPACED_RELEASE,
        cluster.run_dir / "namespaced.kubeconfig",
    )
    wait_for_rbac(cluster, kubeconfig, ("patch", ROLLOUT_RESOURCE, "--subresource=status", "-n", s.namespace))
    elsewhere = run_kubectl(
        cluster.kubectl_bin,
        kubeconfig,
        "auth",
        "can-i",
        "patch",
        ROLLOUT_RESOURCE,
        "-n",
        "default",
        check=False,
    )
    assert elsewhere.stdout.strip() == "no", "the namespaced release must not reach other namespaces"

    # One operator at a time: the session's cluster-wide operator steps aside for this test.
    log = cluster.run_dir / "namespaced-operator.log"
    # With leader election, as the chart runs it: the Lease's permissions are in the audit too.
    election = [
        "--leader-election-namespace",
        chart.NAMESPACED_RELEASE_NAMESPACE,
        "--leader-election-lease",
        chart.NAMESPACED_RELEASE,
    ]
    namespaced = OperatorProcess(kubeconfig, log, ["--namespace", s.namespace, *election])
    operator.stop()
    try:
        namespaced.start()
        runner(s)  # the evaluation step's Job runs (and its result is read) under the chart's Role
        steps: list[dict[str, Any]] = [evaluate_step(), {"setWeight": 50}, {"setWeight": 100}]
        s.apply(s.rollout_manifest("scoped", steps=steps, minSamples=10, gates=[ERROR_GATE]))
        s.wait_for_phase("scoped", "Promoted", timeout_s=90)
        assert s.route_weights() == {LEGACY: 0, CANDIDATE: 100}
        wait_until("a Promoted event", lambda: "Promoted" in s.event_reasons("scoped"), 10)
        # Deleted while its operator runs: it releases its finalizer (a patch of the rollout).
        custom = kube_api.custom
        custom.delete_namespaced_custom_object(api.GROUP, api.VERSION, s.namespace, api.PLURAL, "scoped")

        def gone() -> bool:
            listed: Any = custom.list_namespaced_custom_object(
                api.GROUP, api.VERSION, s.namespace, api.PLURAL
            )
            return not listed["items"]

        wait_until("the rollout gone", gone, 30)
        # Aborted while no operator runs: the next one routes the abort before its lists are in, on
        # the rollout's Deployments and route read by GET (the chart's `get` rules).
        s.apply(s.rollout_manifest("aborted", steps=[{"setWeight": 50}, {"pause": {}}]))
        s.wait_for_phase("aborted", "Paused", timeout_s=60)
        assert s.route_weights() == {LEGACY: 50, CANDIDATE: 50}
        namespaced.stop()
        custom.patch_namespaced_custom_object_status(
            api.GROUP, api.VERSION, s.namespace, api.PLURAL, "aborted", {"status": {"abort": True}}
        )
        namespaced.start()
        s.wait_for_phase("aborted", "RolledBack", timeout_s=60)
        assert s.route_weights() == {LEGACY: 100, CANDIDATE: 0}
        wait_until(
            "the early abort logged",
            lambda: "abort reconciled before the first lists are in" in namespaced.log_tail(200),
            10,
        )
        # Listed on its own, by the CRD's selectable status.abort (the real apiserver serves it).
        assert "cannot list AgentRollouts by" not in namespaced.log_tail(400)
        assert namespaced.alive(), namespaced.log_tail()
    finally:
        namespaced.stop()
        chart.uninstall_access(kubectl, values, **release)
        operator.start()
    trouble = permission_trouble(namespaced.log_path.read_text(errors="replace"))
    assert not trouble, "the namespaced operator was refused something:\n" + "\n".join(trouble[:20])
    used = audit.used_permissions(
        audit_log_path(cluster.run_dir),
        identity.username(chart.NAMESPACED_RELEASE_NAMESPACE, chart.NAMESPACED_RELEASE),
    )
    granted = audit.granted_permissions(chart.render(values, **release))
    # Exactly what it uses: a missing permission is refused (and logged, above), an unused one is excess.
    assert not used - granted, f"used but not granted: {sorted(used - granted)}"
    assert not granted - used, f"granted but never used, remove from the chart: {sorted(granted - used)}"
