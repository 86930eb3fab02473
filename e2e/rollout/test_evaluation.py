"""Evaluation steps on the real control plane: the Job really runs, as a process, against the candidate.

The operator creates the Job; the real scheduler binds its pod to the pod runner's node; the runner
(e2e/cluster/podrunner.py, a kubelet for that node) runs the Job's command, the e2e.sim.evaluation suite,
against the simulated candidate and writes the pod's status with the suite's termination message; the
real Job controller completes the Job; the operator judges the result. No step of that is faked.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from agent_rollout import api, evaluation
from e2e.cluster.kubeapi import KubeApi
from e2e.cluster.podrunner import RUNNER_LABEL, PodRunner
from e2e.rollout.scene import CANDIDATE, LEGACY, Scene, wait_until
from e2e.sim.evaluation import EDGE_CASES

SUITE_CASES = 200


def evaluate_step(**overrides: Any) -> dict[str, Any]:
    key, value = RUNNER_LABEL
    return {
        "evaluate": {
            "job": {
                "image": "agent-rollout-sim:dev",  # not pulled: the runner runs the command locally
                "command": ["python", "-m", "e2e.sim.evaluation", "--cases", str(SUITE_CASES)],
                "nodeSelector": {key: value},
            },
            "minAccuracy": 0.9,
            "minCases": SUITE_CASES,
            "requiredCases": list(EDGE_CASES),
            "timeout": "2m",
            **overrides,
        }
    }


def jobs_of(kube_api: KubeApi, namespace: str) -> list[dict[str, Any]]:
    listed: Any = kube_api.custom.list_namespaced_custom_object("batch", "v1", namespace, "jobs")
    return list(listed["items"])


def test_a_good_candidate_passes_its_evaluation_then_takes_traffic(
    scene: Callable[..., Scene], runner: Callable[[Scene], PodRunner], kube_api: KubeApi
) -> None:
    s = scene(candidate={"eval_accuracy": 0.99}, rps=10)
    runner(s)
    s.apply(s.rollout_manifest("evaluated", steps=[evaluate_step(), {"setWeight": 50}, {"setWeight": 100}]))
    status = s.wait_for_phase("evaluated", "Promoted", timeout_s=120)
    record = status["evaluations"][0]
    assert record["phase"] == "Passed" and record["total"] == SUITE_CASES + len(EDGE_CASES), record
    assert record["accuracy"] >= 0.9 and record["failedCases"] == [], record
    history = status["history"]
    started = next(d for d in history if d["reason"] == "EvaluationStarted")
    assert started["weights"] == {"legacy": 100, "candidate": 0}
    completed = next(
        d for d in history if d["reason"] == "StepCompleted" and d["message"].startswith("step 1/")
    )
    assert {e["name"] for e in completed["evidence"]} >= {"evaluation:accuracy", "evaluation:requiredCases"}
    # One Job, owned by the rollout (garbage-collected with it), that really ran to completion.
    (job,) = jobs_of(kube_api, s.namespace)
    owner = job["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["name"]) == (api.KIND, "evaluated")
    assert job["metadata"]["name"] == record["job"] and job["status"].get("succeeded") == 1


def test_failing_named_edge_cases_roll_back_before_any_user_traffic(
    scene: Callable[..., Scene], runner: Callable[[Scene], PodRunner], kube_api: KubeApi
) -> None:
    failing = [EDGE_CASES[1], EDGE_CASES[6]]
    s = scene(candidate={"eval_accuracy": 0.99, "failing_cases": ",".join(failing)}, rps=10)
    runner(s)
    s.apply(s.rollout_manifest("refused", steps=[evaluate_step(), {"setWeight": 50}, {"setWeight": 100}]))
    status = s.wait_for_phase("refused", "RolledBack", timeout_s=120)
    decision = status["history"][-1]
    assert decision["reason"] == "EvaluationFailed" and decision["step"] == 0, decision
    for case in failing:
        assert case in decision["message"], decision["message"]
    assert status["evaluations"][0]["failedCases"] == sorted(failing)
    required = next(e for e in decision["evidence"] if e["name"] == "evaluation:requiredCases")
    assert required["verdict"] == "Fail"
    # No user ever reached the candidate: every decision kept it at 0, and the candidate served only
    # the suite's requests (the traffic driver sends users by the route's weights).
    assert all(d["weights"]["candidate"] == 0 for d in status["history"])
    assert s.route_weights() == {LEGACY: 100, CANDIDATE: 0}
    assert s.agents[CANDIDATE].stats()["requests"] == SUITE_CASES + len(EDGE_CASES)


def test_a_suite_that_cannot_finish_times_out_and_rolls_back(
    scene: Callable[..., Scene], runner: Callable[[Scene], PodRunner], kube_api: KubeApi
) -> None:
    s = scene(rps=10)
    runner(s)
    s.agents.kill(CANDIDATE)  # the suite cannot reach the candidate... and the candidate cannot serve
    wait_until("candidate unavailable", lambda: not _available(kube_api, s.namespace, CANDIDATE), 30)
    s.agents.start(CANDIDATE)
    never = evaluate_step(timeout="5s")
    never["evaluate"]["job"]["command"] = ["sleep", "600"]
    s.apply(s.rollout_manifest("slow", steps=[never, {"setWeight": 100}]))
    status = s.wait_for_phase("slow", "RolledBack", timeout_s=120)
    decision = status["history"][-1]
    assert decision["reason"] == "EvaluationFailed" and "DeadlineExceeded" in decision["message"], decision
    assert s.route_weights() == {LEGACY: 100, CANDIDATE: 0}


def _available(kube_api: KubeApi, namespace: str, name: str) -> bool:
    d = kube_api.apps.read_namespaced_deployment(name, namespace)
    return bool(d.status.available_replicas)


def test_job_name_is_what_the_operator_uses() -> None:
    # The e2e tests above read the Job by the record's name; the name must stay a valid label value.
    assert len(evaluation.job_name("evaluated", 0, "abc", "2026-01-01T00:00:00Z")) <= 63
