"""Approvals whose approver the apiserver vouches for, and the decision record, end to end.

Three people authenticate with client certificates minted from the harness CA (CN = user, O = groups),
bound by RBAC as a team would be: release managers and the ML team may read rollouts and patch their
status; the ML team also changes Deployments; support may patch status but approves nothing. The
chart's admission policies (installed by the session, as for every test) stamp and check who asked.

- (a) an allowed user's approval advances the rollout; the record shows the name and groups the
  apiserver authenticated, with the candidate's image and model/prompt/tools versions.
- (b) a user outside the approvers, and a user who writes someone else's name, are refused with a
  clear message, and nothing changes.
- (c) the user who changed the candidate's pod template cannot approve it (forbidSelfApproval).
- (d) an approval step that expires rolls back (onExpiry: rollback) or stays paused and still takes a
  late approval (onExpiry: pause).
- (f) the history survives an operator restart (kill -9), and the restarted operator appends to it.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import pytest
from kubernetes import client

from agent_rollout import api
from e2e.cluster import ClusterState, identity
from e2e.cluster.kubeapi import KubeApi
from e2e.rollout.conftest import wait_for_rbac
from e2e.rollout.scene import CANDIDATE, LEGACY, REPO, OperatorProcess, Scene, wait_until
from e2e.rollout.test_rbac import StatusWriter

PLUGIN = REPO / ".venv" / "bin" / "kubectl-agentrollout"
ROLLOUT_RESOURCE = f"{api.PLURAL}.{api.GROUP}"
ALICE, BOB, MALLORY = "alice@example.com", "bob@example.com", "mallory@example.com"
RELEASE_MANAGERS, ML_TEAM, SUPPORT = "release-managers", "ml-team", "support"
CHANGED_BY = "agentrollout.io/template-changed-by"


@dataclass(frozen=True)
class Team:
    alice: Path  # release manager: approves
    bob: Path  # ML engineer: changes the candidate, also an approver (but not of his own change)
    mallory: Path  # support: may patch status (abort), approves nothing


def _role(namespace: str, name: str, rules: list[dict[str, Any]]) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": namespace}, "rules": rules}


def _binding(namespace: str, role: str, group: str) -> dict[str, Any]:
    return {
        "metadata": {"name": f"{role}-{group}", "namespace": namespace},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": role},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": group}],
    }


@pytest.fixture
def team(namespace: str, kube_api: KubeApi, cluster: ClusterState) -> Iterator[Team]:
    rbac = client.RbacAuthorizationV1Api(kube_api.client)
    verbs = [
        {"apiGroups": [api.GROUP], "resources": [api.PLURAL], "verbs": ["get", "list", "watch"]},
        {"apiGroups": [api.GROUP], "resources": [f"{api.PLURAL}/status"], "verbs": ["patch"]},
    ]
    deployments = [{"apiGroups": ["apps"], "resources": ["deployments"], "verbs": ["get", "patch"]}]
    rbac.create_namespaced_role(namespace, cast(Any, _role(namespace, "rollout-verbs", verbs)))
    rbac.create_namespaced_role(namespace, cast(Any, _role(namespace, "agent-developer", deployments)))
    for role, group in (
        ("rollout-verbs", RELEASE_MANAGERS),
        ("rollout-verbs", ML_TEAM),
        ("rollout-verbs", SUPPORT),
        ("agent-developer", ML_TEAM),
    ):
        rbac.create_namespaced_role_binding(namespace, cast(Any, _binding(namespace, role, group)))
    pki_dir = cluster.run_dir / "pki"
    paths = []
    for user, groups in ((ALICE, (RELEASE_MANAGERS,)), (BOB, (ML_TEAM,)), (MALLORY, (SUPPORT,))):
        path = cluster.run_dir / f"{namespace}-{user.split('@')[0]}.kubeconfig"
        identity.client_certificate_kubeconfig(kube_api.kubeconfig, pki_dir, path, user, groups)
        wait_for_rbac(cluster, path, ("patch", ROLLOUT_RESOURCE, "--subresource=status", "-n", namespace))
        paths.append(path)
    yield Team(*paths)
    for path in paths:
        path.unlink(missing_ok=True)


def plugin(kubeconfig: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The real kubectl plugin, as its own process, with only the given identity."""
    env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
    return subprocess.run(
        [str(PLUGIN), *args, "--kubeconfig", str(kubeconfig)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def approval_steps(**approval: Any) -> list[dict[str, Any]]:
    fields = {"approvers": {"users": [BOB], "groups": [RELEASE_MANAGERS]}, **approval}
    return [{"setWeight": 20}, {"approval": fields}, {"setWeight": 100}]


def refusal(error: client.ApiException | None) -> str:
    assert error is not None, "the write was stored"
    assert error.status in (403, 409, 422), error
    return str(json.loads(error.body or "{}").get("message", ""))


def change_candidate_as(kubeconfig: Path, namespace: str, kube_api: KubeApi) -> None:
    """A new candidate revision: the ML engineer sets the model, prompt and tools versions."""
    apps = client.AppsV1Api(_client_for(kubeconfig))
    versions = {
        "agentrollout.io/model-version": "triage-model-2026-03",
        "agentrollout.io/prompt-version": "triage-prompt-v12",
        "agentrollout.io/tools-version": "tools-7",
    }
    apps.patch_namespaced_deployment(
        CANDIDATE, namespace, {"spec": {"template": {"metadata": {"annotations": versions}}}}
    )
    kube_api.wait_deployment_available(namespace, CANDIDATE)


def _client_for(kubeconfig: Path) -> client.ApiClient:
    from e2e.cluster.kubeapi import new_api_client

    return new_api_client(kubeconfig)


def test_approvals_count_only_for_allowed_people_as_the_apiserver_authenticated_them(
    scene: Callable[..., Scene], team: Team, kube_api: KubeApi, operator: OperatorProcess
) -> None:
    s = scene(rps=10)
    change_candidate_as(team.bob, s.namespace, kube_api)
    deployment = client.AppsV1Api(kube_api.client).read_namespaced_deployment(CANDIDATE, s.namespace)
    assert deployment.metadata.annotations[CHANGED_BY] == BOB  # stamped by the apiserver's admission

    s.apply(s.rollout_manifest("gated", steps=approval_steps()))
    paused = s.wait_for_phase("gated", "Paused", timeout_s=60)
    assert paused["currentStep"] == 1 and paused.get("candidateChangedBy") == BOB, paused
    assert s.route_weights() == {LEGACY: 80, CANDIDATE: 20}
    mallory = StatusWriter(team.mallory, s.namespace, "gated")
    try:
        # The policies reach admission a moment after they are created: wait on a dry run.
        def enforced() -> bool:
            error = mallory.merge(_approve(), dry_run=True)
            return error is not None and "not among its approvers" in refusal(error)

        wait_until("the approval policy to be enforced", enforced, timeout_s=30)
        before = s.status("gated")

        # (b) Outside the approvers: the apiserver refuses it, naming why (the plugin prints that).
        outsider = plugin(team.mallory, "approve", "gated", "-n", s.namespace, "--reason", "lgtm")
        assert outsider.returncode == 1, outsider
        assert f"{MALLORY} may not approve step 2" in outsider.stderr, outsider.stderr
        # (b) Someone else's name in the record: refused, whatever the name.
        forged = refusal(mallory.merge({"requests": {"approve": {"by": ALICE, "reason": "as alice"}}}))
        assert f"you are {MALLORY}" in forged and "names someone else" in forged, forged
        forged_abort = refusal(mallory.merge({"abort": True, "requests": {"abort": {"by": ALICE}}}))
        assert "names someone else" in forged_abort, forged_abort

        # (c) The author of the candidate revision may not approve it, though an approver.
        own = plugin(team.bob, "approve", "gated", "-n", s.namespace, "--reason", "my change is fine")
        assert own.returncode == 1 and "forbidSelfApproval" in own.stderr, own.stderr

        after = s.status("gated")
        guarded = ("phase", "currentStep", "weights", "history", "approvals", "requests", "abort")
        assert {k: after.get(k) for k in guarded} == {k: before.get(k) for k in guarded}
        assert s.route_weights() == {LEGACY: 80, CANDIDATE: 20}

        # (a) An allowed approver: the rollout advances, the record names her as the apiserver did.
        out = plugin(team.alice, "approve", "gated", "-n", s.namespace, "--reason", "evals reviewed")
        assert out.returncode == 0, out.stderr
        promoted = s.wait_for_phase("gated", "Promoted", timeout_s=60)
        given = next(d for d in promoted["history"] if d["reason"] == "ApprovalGiven")
        assert given["actor"] == ALICE, given
        assert RELEASE_MANAGERS in given["actorGroups"] and "system:authenticated" in given["actorGroups"]
        assert "evals reviewed" in given["message"] and promoted["candidateRevision"] in given["message"]
        version = given["agentVersion"]
        assert (version["model"], version["prompt"], version["tools"]) == (
            "triage-model-2026-03",
            "triage-prompt-v12",
            "tools-7",
        )
        assert version["image"] != "unknown" and version["revision"] == promoted["candidateRevision"]
        assert all(d["actor"] == "operator" for d in promoted["history"] if d["reason"] != "ApprovalGiven")
        assert "ApprovalGiven" in s.event_reasons("gated")

        table = plugin(team.alice, "history", "gated", "-n", s.namespace)
        assert table.returncode == 0, table.stderr
        row = next(line for line in table.stdout.splitlines() if "ApprovalGiven" in line)
        assert f"{ALICE} ({RELEASE_MANAGERS})" in row and "triage-model-2026-03" in row, row
        as_json = json.loads(plugin(team.alice, "history", "gated", "-n", s.namespace, "-o", "json").stdout)
        assert as_json == [
            {"namespace": s.namespace, "agentrollout": "gated", **d} for d in promoted["history"]
        ]

        # (f) The record survives a kill -9 of the operator; the restarted one appends to it, with
        # the actor of an existing verb (abort) from the same admission mechanism.
        operator.kill()
        operator.start()
        aborted = plugin(team.mallory, "abort", "gated", "-n", s.namespace, "--reason", "customer complaint")
        assert aborted.returncode == 0, aborted.stderr
        # From Promoted (wait_for_phase takes Promoted for a rollout that ended elsewhere).
        rolled_back = wait_until(
            "the abort", lambda: (st := s.status("gated")).get("phase") == "RolledBack" and st, 60
        )
        assert rolled_back["history"][:-1] == promoted["history"][-(len(rolled_back["history"]) - 1) :]
        last = rolled_back["history"][-1]
        assert (last["reason"], last["actor"], SUPPORT in last["actorGroups"]) == ("Aborted", MALLORY, True)

        # One JSON log line per decision, with the actor. The operator logs it after its status write
        # returns, so the status can be seen a moment before the line is in the log.
        def decision_lines() -> list[dict[str, Any]]:
            return [
                json.loads(line[line.index("{") :])
                for line in operator.log_path.read_text(errors="replace").splitlines()
                if '"kind":"Decision"' in line and f'"namespace":"{s.namespace}"' in line
            ]

        wait_until(
            "the abort's log line", lambda: any(d["reason"] == "Aborted" for d in decision_lines()), 10
        )
        lines = decision_lines()
        assert [(d["reason"], d["actor"]) for d in lines if d["reason"] in ("ApprovalGiven", "Aborted")] == [
            ("ApprovalGiven", ALICE),
            ("Aborted", MALLORY),
        ]
    finally:
        mallory.close()


def _approve() -> dict[str, Any]:
    return {"requests": {"approve": {"reason": "probe"}}}


def test_an_approval_step_that_expires_rolls_back(
    scene: Callable[..., Scene], team: Team, operator: OperatorProcess
) -> None:
    s = scene(rps=10)
    s.apply(s.rollout_manifest("expiring", steps=approval_steps(expires="15s", onExpiry="rollback")))
    s.wait_for_phase("expiring", "Paused", timeout_s=60)
    rolled_back = s.wait_for_phase("expiring", "RolledBack", timeout_s=60)
    last = rolled_back["history"][-1]
    assert last["reason"] == "ApprovalExpired" and "0/1 approvals" in last["message"], last
    wait_until("legacy 100", lambda: s.route_weights() == {LEGACY: 100, CANDIDATE: 0}, 30)
    late = plugin(team.alice, "approve", "expiring", "-n", s.namespace)
    assert late.returncode == 1 and "RolledBack" in late.stderr, late


def test_an_approval_step_that_expires_with_pause_waits_for_a_late_approval(
    scene: Callable[..., Scene], team: Team, operator: OperatorProcess
) -> None:
    s = scene(rps=10)
    s.apply(s.rollout_manifest("late", steps=approval_steps(expires="10s", onExpiry="pause")))

    def expired() -> dict[str, Any] | None:
        status = s.status("late")
        reasons = [d["reason"] for d in status.get("history", [])]
        return status if "ApprovalExpired" in reasons else None

    status = wait_until("ApprovalExpired", expired, 60)
    assert (status["phase"], status["currentStep"]) == ("Paused", 1), status
    assert s.route_weights() == {LEGACY: 80, CANDIDATE: 20}  # paused where it was, not rolled back
    out = plugin(team.alice, "approve", "late", "-n", s.namespace, "--reason", "back from lunch")
    assert out.returncode == 0, out.stderr
    promoted = s.wait_for_phase("late", "Promoted", timeout_s=60)
    reasons = [d["reason"] for d in promoted["history"]]
    assert reasons.count("ApprovalExpired") == 1 and "ApprovalGiven" in reasons, reasons
