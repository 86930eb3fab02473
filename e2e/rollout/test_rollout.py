"""AgentRollout end to end: the real operator process, apiserver, controller-manager, kwok and Prometheus."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from prometheus_api_client import PrometheusConnect

from e2e.rollout.breach import watch_breach_to_rollback
from e2e.rollout.scene import CANDIDATE, LEGACY, OperatorProcess, Scene, wait_until

ERROR_GATE = {"name": "error-rate", "template": "errorRate", "max": 0.05, "window": "30s"}


def step_sequence(status: dict[str, Any]) -> list[tuple[str, int]]:
    return [(d["reason"], d["step"]) for d in status.get("history", [])]


def test_healthy_candidate_walks_every_step_and_is_promoted(scene: Callable[..., Scene]) -> None:
    s = scene()
    s.apply(
        s.rollout_manifest(
            "healthy",
            steps=[{"setWeight": 10}, {"setWeight": 50}, {"setWeight": 100}],
            minSamples=10,
            gates=[ERROR_GATE],
        )
    )

    status = s.wait_for_phase("healthy", "Promoted", timeout_s=120)

    assert s.route_weights() == {LEGACY: 0, CANDIDATE: 100}
    assert status["weights"] == {"legacy": 0, "candidate": 100}
    # The driver saw the route walk through every step in order: 10 -> 50 -> 100, nothing skipped.
    seen = [w.weights.get(CANDIDATE, 0) for w in s.driver.weight_history]
    walked = [w for i, w in enumerate(seen) if i == 0 or w != seen[i - 1]]
    assert walked == [0, 10, 50, 100]
    assert [g["verdict"] for g in status["lastAnalysis"]] == ["Pass"]
    reasons = s.event_reasons("healthy")
    assert reasons[0] == "Started" and reasons[-1] == "Promoted"


def test_candidate_serving_errors_is_rolled_back_to_legacy(
    scene: Callable[..., Scene], prometheus: PrometheusConnect
) -> None:
    s = scene(candidate={"error_ratio": 0.2})
    manifest = s.rollout_manifest(
        "bad",
        steps=[{"setWeight": 20}, {"pause": {"duration": "5m"}}, {"setWeight": 100}],
        minSamples=10,
        gates=[ERROR_GATE],
    )
    s.apply(manifest)

    timing = watch_breach_to_rollback(manifest, prometheus, lambda: s.route_weights()[CANDIDATE])
    print(f"\nbreach visible in Prometheus -> candidate weight 0: {timing.seconds:.2f}s (interval 5s)")

    status = s.wait_for_phase("bad", "RolledBack", timeout_s=10)
    assert s.route_weights() == {LEGACY: 100, CANDIDATE: 0}
    failed = [d for d in status["history"] if d["reason"] == "GateFailed"]
    assert failed, status["history"]
    evidence = failed[-1]["evidence"][0]
    assert evidence["name"] == "error-rate" and evidence["verdict"] == "Fail"
    assert evidence["value"] > 0.05 and evidence["samples"] >= 10 and "error_type" in evidence["query"]
    assert "GateFailed" in s.event_reasons("bad")
    # The legacy Deployment is untouched: still there, still fully available.
    legacy = s.kube.apps.read_namespaced_deployment(LEGACY, s.namespace)
    assert legacy.spec.replicas == 1 and legacy.status.available_replicas == 1


def test_operator_killed_during_a_pause_resumes_at_the_same_step(
    scene: Callable[..., Scene], operator: OperatorProcess
) -> None:
    s = scene()
    s.apply(
        s.rollout_manifest(
            "restart",
            steps=[{"setWeight": 10}, {"pause": {"duration": "30s"}}, {"setWeight": 100}],
            minSamples=10,
            gates=[ERROR_GATE],
        )
    )
    paused = wait_until(
        "the pause step", lambda: (st := s.status("restart")).get("currentStep") == 1 and st, 90
    )
    history_before = step_sequence(paused)

    operator.kill()
    time.sleep(4)
    during_outage = s.status("restart")
    operator.start()
    time.sleep(8)  # more than one interval with the new process

    resumed = s.status("restart")
    assert during_outage["currentStep"] == resumed["currentStep"] == 1
    assert resumed["stepStartedAt"] == paused["stepStartedAt"], "the pause clock was restarted"
    assert step_sequence(resumed)[: len(history_before)] == history_before
    assert s.route_weights()[CANDIDATE] == 10

    final = s.wait_for_phase("restart", "Promoted", timeout_s=90)
    steps_completed = [step for reason, step in step_sequence(final) if reason == "StepCompleted"]
    assert steps_completed == sorted(set(steps_completed)), f"a step was repeated: {step_sequence(final)}"


def test_invalid_specs_are_refused_naming_the_field(scene: Callable[..., Scene]) -> None:
    s = scene(rps=5)
    manifest = s.rollout_manifest("invalid", steps=[{"setWeight": 150}], gates=[ERROR_GATE])
    refused = s.apply(manifest, check=False)
    assert refused.returncode != 0 and "spec.steps[0].setWeight" in refused.stderr, refused.stderr

    manifest = s.rollout_manifest("invalid", steps=[{"setWeight": 10}], interval="1s", gates=[ERROR_GATE])
    refused = s.apply(manifest, check=False)
    assert refused.returncode != 0 and "spec.analysis.interval" in refused.stderr, refused.stderr

    manifest = s.rollout_manifest("invalid", steps=[{"setWeight": 10}], gates=[ERROR_GATE])
    del manifest["spec"]["traffic"]["gatewayAPI"]
    refused = s.apply(manifest, check=False)
    assert refused.returncode != 0 and "spec.traffic" in refused.stderr, refused.stderr

    # What the schema cannot express: weights that go down. Accepted, then Failed with InvalidSpec.
    manifest = s.rollout_manifest("invalid", steps=[{"setWeight": 50}, {"setWeight": 10}], gates=[ERROR_GATE])
    s.apply(manifest)
    status = s.wait_for_phase("invalid", "Failed", timeout_s=30)
    condition = next(c for c in status["conditions"] if c["type"] == "SpecValid")
    assert condition["status"] == "False" and condition["reason"] == "InvalidSpec"
    assert "spec.steps[1].setWeight" in condition["message"]
    assert s.route_weights()[CANDIDATE] == 0, "an invalid rollout must not route to the candidate"
