"""Rollback drills and capacity-safe rollback, end to end: the real operator process, apiserver,
controller-manager, kwok and Prometheus, with the real `kubectl agentrollout` plugin sending the verb as
a non-operator user (so the chart's status admission policy judges it).

- A drill at a weighted step sends all traffic to legacy, confirms from legacy's own series in
  Prometheus that it serves within the gates' bounds, records it in status.lastDrill and the history,
  and returns to the step it left at the same weights; `requireDrill` held the next raise until then.
- A drill whose legacy serves errors fails and stays on legacy: no traffic goes back to the candidate.
- A pending drill request is the operator's to consume: others can neither clear nor change it (the
  chart's status policy).
- A rollback whose legacy an "autoscaler" (this test) shrank moves traffic back in steps as legacy's
  ready replicas grow again (kwok makes the pods ready); the operator itself never scales legacy.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent_rollout import api
from e2e.cluster import ClusterState
from e2e.rollout.scene import CANDIDATE, LEGACY, OperatorProcess, Scene, wait_until
from e2e.rollout.test_rbac import StatusWriter, denied_by_policy, release_manager  # noqa: F401 (fixture)
from e2e.rollout.test_verbs_and_volume import PLUGIN

ERROR_GATE = {"name": "error-rate", "template": "errorRate", "max": 0.05, "window": "30s"}
LATENCY_GATE = {"name": "p95", "template": "latencyQuantile", "quantile": 0.95, "max": 1.0, "window": "30s"}


def candidate_weights_seen(s: Scene) -> list[int]:
    """The candidate's weight each time the traffic driver saw the route change, in order."""
    seen = [w.weights.get(CANDIDATE, 0) for w in s.driver.weight_history]
    return [w for i, w in enumerate(seen) if i == 0 or w != seen[i - 1]]


def last_drill(s: Scene, name: str, result: str, timeout_s: float) -> dict[str, Any]:
    def ended() -> dict[str, Any] | None:
        status = s.status(name)
        drill = status.get("lastDrill") or {}
        return status if drill.get("result") == result else None

    found: dict[str, Any] = wait_until(f"{name} drill {result}", ended, timeout_s)
    return found


def drill(cluster: ClusterState, s: Scene, name: str, *args: str) -> str:
    """`kubectl agentrollout drill NAME ARGS`, the real plugin as its own process, as the admin user
    (not the operator: the chart's status policy judges the patch)."""
    env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
    done = subprocess.run(
        [str(PLUGIN), "drill", name, *args, "-n", s.namespace, "--kubeconfig", str(cluster.kubeconfig)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, f"drill refused: {done.stderr}"
    return done.stdout


def scale_legacy(s: Scene, replicas: int) -> None:
    s.kube.apps.patch_namespaced_deployment_scale(LEGACY, s.namespace, {"spec": {"replicas": replicas}})

    def ready() -> bool:
        dep: Any = s.kube.apps.read_namespaced_deployment_status(LEGACY, s.namespace)
        return bool(dep.status) and (dep.status.ready_replicas or 0) == replicas

    wait_until(f"legacy at {replicas} ready replicas", ready, timeout_s=30)


def test_a_drill_at_a_weighted_step_passes_and_returns_to_the_step(
    scene: Callable[..., Scene], cluster: ClusterState
) -> None:
    s = scene(rps=40)
    manifest = s.rollout_manifest(
        "drilled",
        steps=[{"setWeight": 30}, {"setWeight": 100}],
        minSamples=10,
        gates=[ERROR_GATE, LATENCY_GATE],
    )
    manifest["spec"]["readiness"] = {"requireDrill": {"before": 50, "maxAge": "30d"}}
    s.apply(manifest)

    def held() -> dict[str, Any] | None:
        status = s.status("drilled")
        return (
            status if "a rollback drill passed within 30d is required" in status.get("message", "") else None
        )

    before = wait_until("step 1 held by requireDrill", held, timeout_s=60)
    assert before["currentStep"] == 0 and before["weights"] == {"legacy": 70, "candidate": 30}
    assert s.route_weights() == {LEGACY: 70, CANDIDATE: 30}

    out = drill(cluster, s, "drilled")
    assert "drill requested: all traffic goes to legacy" in out, out

    status = last_drill(s, "drilled", "Passed", timeout_s=90)
    record = status["lastDrill"]
    print(
        f"\ndrill: route at legacy 100 after {record['routeSeconds']}s, legacy confirmed after "
        f"{record['confirmSeconds']}s (interval 5s, bound {record['bound']})"
    )
    assert record["step"] == 0 and record["weights"] == {"legacy": 70, "candidate": 30}
    assert record["bound"] == "15m"
    assert 0 <= record["routeSeconds"] <= record["confirmSeconds"] <= 15 * 60
    assert record["routeLegacyAt"] <= record["confirmedAt"]
    assert {g["name"]: g["verdict"] for g in record["evidence"]} == {"error-rate": "Pass", "p95": "Pass"}
    reasons = [d["reason"] for d in status["history"]]
    assert reasons.index("DrillStarted") < reasons.index("DrillPassed"), reasons
    # Who asked, as the apiserver authenticated the plugin's request (the chart's admission stamped it).
    asked = next(d for d in status["history"] if d["reason"] == "DrillStarted")
    assert (asked["actor"], "system:masters" in asked["actorGroups"]) == ("e2e-admin", True), asked
    passed = next(d for d in status["history"] if d["reason"] == "DrillPassed")
    assert passed["weights"] == {"legacy": 70, "candidate": 30} and passed["step"] == 0, passed
    assert "back to step 1/2" in passed["message"]
    harden = next(x for x in status["readiness"]["stages"] if x["stage"] == "Harden")
    criterion = next(c for c in harden["criteria"] if c["name"] == "harden/rollback-drill")
    assert criterion["score"] == "Met" and criterion["value"] == record["confirmSeconds"], criterion

    # With the drill passed, the step it returned to completes and the rollout is promoted.
    s.wait_for_phase("drilled", "Promoted", timeout_s=90)
    assert candidate_weights_seen(s) == [0, 30, 0, 30, 100]
    events = s.event_reasons("drilled")
    assert events.index("DrillStarted") < events.index("DrillPassed") < events.index("Promoted"), events


def test_a_drill_whose_legacy_fails_stays_on_legacy(
    scene: Callable[..., Scene], cluster: ClusterState
) -> None:
    s = scene(rps=40)
    s.apply(
        s.rollout_manifest(
            "bad-legacy",
            steps=[{"setWeight": 40}, {"pause": {"duration": "10m"}}, {"setWeight": 100}],
            minSamples=10,
            gates=[ERROR_GATE],
        )
    )
    wait_until("the pause step", lambda: s.status("bad-legacy").get("currentStep") == 1, timeout_s=90)
    s.agents[LEGACY].set_profile(error_ratio=1.0)  # legacy now answers every call with a 500

    drill(cluster, s, "bad-legacy", "--bound", "2m")

    status = last_drill(s, "bad-legacy", "Failed", timeout_s=90)
    assert status["phase"] == "RolledBack" and status["weights"] == {"legacy": 100, "candidate": 0}
    record = status["lastDrill"]
    assert "legacy out of bounds" in record["message"] and record["bound"] == "2m"
    assert [g["verdict"] for g in record["evidence"]] == ["Fail"]
    assert record["evidence"][0]["value"] > 0.05
    failed = status["history"][-1]
    assert failed["reason"] == "DrillFailed" and "stays on legacy" in failed["message"], failed
    assert "passedDrill" not in status
    harden = next(x for x in status["readiness"]["stages"] if x["stage"] == "Harden")
    criterion = next(c for c in harden["criteria"] if c["name"] == "harden/rollback-drill")
    assert criterion["score"] == "NotMet", criterion
    # Never back to the candidate: the route stays at legacy 100 from the drill on.
    wait_until("the route stays on legacy", lambda: s.route_weights() == {LEGACY: 100, CANDIDATE: 0}, 5)
    assert candidate_weights_seen(s) == [0, 40, 0]


def test_a_rollback_moves_traffic_back_as_legacys_ready_replicas_grow(scene: Callable[..., Scene]) -> None:
    s = scene(rps=40)
    scale_legacy(s, 4)  # legacy at 4 ready replicas when the rollout begins
    s.apply(
        s.rollout_manifest(
            "short",
            steps=[{"setWeight": 80}, {"pause": {"duration": "10m"}}, {"setWeight": 100}],
            minSamples=10,
            gates=[ERROR_GATE],
        )
    )
    wait_until("the pause step", lambda: s.status("short").get("currentStep") == 1, timeout_s=90)
    assert s.status("short")["legacyReplicasAtStart"] == 4
    scale_legacy(s, 1)  # an autoscaler shrinks legacy while it serves 20%
    s.agents[CANDIDATE].set_profile(error_ratio=0.5)

    # Legacy can take 1/4 of all traffic now: the rollback moves it from 20% to 25%, not to 100%.
    rolled = s.wait_for_phase("short", "RolledBack", timeout_s=60)
    assert rolled["weights"] == {"legacy": 25, "candidate": 75}, rolled["weights"]
    wait = rolled["capacityRollback"]
    assert (wait["required"], wait["ready"], wait["reason"]) == (4, 1, "GateFailed")
    capacity = next(c for c in rolled["conditions"] if c["type"] == "LegacyCapacity")
    assert (capacity["status"], capacity["reason"]) == ("False", "LegacyShortOfReplicas")
    assert "legacy has 1/4 ready replicas" in capacity["message"]
    assert s.route_weights() == {LEGACY: 25, CANDIDATE: 75}
    assert "LegacyShortOfReplicas" in s.event_reasons("short")

    for replicas, candidate in ((2, 50), (3, 25)):
        scale_legacy(s, replicas)
        wait_until(
            f"candidate {candidate} with {replicas} legacy replicas",
            lambda c=candidate: s.route_weights() == {LEGACY: 100 - c, CANDIDATE: c},
            timeout_s=30,
        )
    scale_legacy(s, 4)
    wait_until("all traffic on legacy", lambda: s.route_weights() == {LEGACY: 100, CANDIDATE: 0}, 30)

    def restored() -> dict[str, Any] | None:
        status = s.status("short")
        return status if "capacityRollback" not in status else None

    status = wait_until("the wait to end", restored, timeout_s=30)
    capacity = next(c for c in status["conditions"] if c["type"] == "LegacyCapacity")
    assert (capacity["status"], capacity["reason"]) == ("True", "LegacyReplicasReady")
    assert candidate_weights_seen(s) == [0, 80, 75, 50, 25, 0]
    steps = [d["reason"] for d in status["history"] if d["reason"].startswith("LegacyCapacity")]
    assert steps == ["LegacyCapacityStep", "LegacyCapacityStep", "LegacyCapacityRestored"], steps
    # The operator never touched legacy: its replica count is the one this test set last.
    dep: Any = s.kube.apps.read_namespaced_deployment(LEGACY, s.namespace)
    assert dep.spec.replicas == 4


def test_a_pending_drill_is_the_operators_to_clear_or_change(
    namespace: str,
    release_manager: Path,  # noqa: F811 (the fixture of test_rbac, imported above)
    operator: OperatorProcess,
    cluster: ClusterState,
    kubectl: Any,
) -> None:
    # With the operator stopped, a drill request stays pending: only the operator may consume it.
    manifest = {
        "apiVersion": f"{api.GROUP}/{api.VERSION}",
        "kind": api.KIND,
        "metadata": {"name": "pending-drill", "namespace": namespace},
        "spec": {
            "legacy": {"deployment": LEGACY},
            "candidate": {"deployment": CANDIDATE},
            "traffic": {
                "gatewayAPI": {"httpRoute": "triage", "legacyBackend": LEGACY, "candidateBackend": CANDIDATE}
            },
            "steps": [{"setWeight": 100}],
        },
    }
    operator.stop()
    writer = StatusWriter(release_manager, namespace, "pending-drill")
    try:
        kubectl("apply", "-f", "-", stdin=json.dumps(manifest))
        wait_until(
            "the status policy to be enforced",
            lambda: denied_by_policy(writer.merge({"currentStep": 0}, dry_run=True)),
            timeout_s=30,
        )
        assert writer.merge({"drill": {"stayRolledBack": False, "bound": "10m"}}) is None
        cleared = denied_by_policy(writer.merge({"drill": None}))
        assert "cleared: status.drill" in cleared, cleared
        changed = denied_by_policy(writer.merge({"drill": {"stayRolledBack": True}}))
        assert "status.drill" in changed, changed
        assert "status.weights" in denied_by_policy(
            writer.merge(
                {
                    "drill": {"stayRolledBack": False, "bound": "10m"},
                    "weights": {"legacy": 0, "candidate": 100},
                }
            )
        )
        stored = writer.custom.get_namespaced_custom_object(
            api.GROUP, api.VERSION, namespace, api.PLURAL, "pending-drill"
        )
        assert stored["status"]["drill"] == {"stayRolledBack": False, "bound": "10m"}
    finally:
        writer.close()
        kubectl("delete", f"{api.PLURAL}.{api.GROUP}", "pending-drill", "-n", namespace, "--wait=false")
        operator.start()
