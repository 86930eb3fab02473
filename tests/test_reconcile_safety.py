"""Regression tests of the reconcile shell's safety rules (issue 7), against the in-memory fakes.

Each test reproduces a failure seen on the landed operator: stale bodies after a foreign write, a
refused route write that lost the rollback decision, traffic sent to a Deployment that cannot answer,
a crash between the route write and the status write, windows reaching back into an earlier step.
"""

from __future__ import annotations

import contextlib
import copy
from typing import Any

import pytest

from agent_rollout import api
from agent_rollout.analysis.prometheus import QueryRejected
from agent_rollout.domain import DeploymentState
from agent_rollout.kube import RouteWriteError, template_hash
from tests.specs import CANDIDATE, LEGACY
from tests.test_reconcile import NAME, NS, THREE_WEIGHTS, World, rollout_body

PAUSED_STEPS: list[dict[str, Any]] = [
    {"setWeight": 10},
    {"pause": {"duration": "5m"}},
    {"setWeight": 25},
    {"pause": {"duration": "5m"}},
    {"setWeight": 50},
]


def _route_weights_seen(world: World) -> list[int]:
    """Candidate weight after each route write, in order: what the traffic would have seen."""
    return [
        op["value"]
        for write in world.kube.writes_of("route")
        for op in write.body
        if op["op"] == "add" and op["path"].endswith("backendRefs/1/weight")
    ]


# ---------------------------------------------------------------- 1. stale reads


def test_foreign_write_between_read_and_status_write_does_not_undo_a_rollback() -> None:
    world = World(rollout_body(THREE_WEIGHTS))
    world.tick()
    world.tick()
    assert world.route_weights() == {LEGACY: 75, CANDIDATE: 25}
    world.metrics.error_rate = 0.2

    def argo_cd_labels() -> None:  # lands after our read, before our status write
        world.kube.edit_rollout(
            NS, NAME, lambda stored: stored["metadata"].setdefault("labels", {}).update(app="x")
        )
        world.kube.before_status_patch = None

    stale = world.body()  # the watch delivers the foreign write's body, which carries the old status
    world.kube.before_status_patch = argo_cd_labels
    world.tick(stale)
    assert world.status["phase"] == "RolledBack"
    assert world.route_weights() == {LEGACY: 100, CANDIDATE: 0}
    stale_after_foreign_write = copy.deepcopy(stale)
    stale_after_foreign_write["metadata"]["resourceVersion"] = "999999"  # a version we never saw
    stale_after_foreign_write["metadata"]["labels"] = {"app": "x"}
    world.metrics.error_rate = 0.001

    world.tick(stale_after_foreign_write, advance=5)

    assert world.route_weights() == {LEGACY: 100, CANDIDATE: 0}
    assert world.status["phase"] == "RolledBack"
    assert world.history_reasons().count("GateFailed") == 1


# ---------------------------------------------------------------- 2. a refused route write


def test_refused_route_write_still_records_the_rollback_and_says_why() -> None:
    world = World(rollout_body(THREE_WEIGHTS))
    world.tick()
    world.metrics.error_rate = 0.2
    world.kube.route_refusal = RouteWriteError(
        "HTTPRoute support/triage: 422 Unprocessable Entity: denied by policy no-weights", permanent=True
    )

    delay = world.tick()

    assert world.status["phase"] == "RolledBack"
    assert world.history_reasons()[-1] == "GateFailed"
    assert ("Warning", "GateFailed") in [(t, r) for t, r, _ in world.events.events]
    traffic = world.condition("TrafficRouted")
    assert (traffic["status"], traffic["reason"]) == ("False", "RouteWriteRefused")
    assert "denied by policy no-weights" in traffic["message"]
    assert world.events.reasons().count("RouteWriteFailed") == 1
    assert delay <= 2.0  # retried quickly at first

    delays = [world.tick(advance=1) for _ in range(6)]

    assert world.events.reasons().count("RouteWriteFailed") == 1  # one Event, not one per retry
    assert delays == sorted(delays) and delays[-1] == 30.0  # a repeated refusal backs off
    world.kube.route_refusal = None
    world.tick(advance=1)
    assert world.route_weights() == {LEGACY: 100, CANDIDATE: 0}
    assert world.condition("TrafficRouted")["reason"] == "WeightsApplied"


def test_server_error_on_route_write_is_retried_within_seconds() -> None:
    world = World(rollout_body(THREE_WEIGHTS))
    world.kube.route_refusal = RouteWriteError("HTTPRoute support/triage: 500 Internal Server Error", False)

    delay = world.tick()

    assert world.status["phase"] == "Progressing"  # the decision to start stands
    assert world.condition("TrafficRouted")["reason"] == "RouteWriteFailed"
    assert delay == 2.0
    world.kube.route_refusal = None
    world.tick(advance=delay)
    assert world.route_weights() == {LEGACY: 95, CANDIDATE: 5}


# ---------------------------------------------------------------- 3. never route to nowhere


def test_unparsable_spec_with_legacy_deleted_does_not_route_to_the_missing_legacy() -> None:
    world = World(rollout_body(THREE_WEIGHTS))
    world.tick()
    world.tick()
    assert world.route_weights() == {LEGACY: 75, CANDIDATE: 25}
    del world.deployments[(NS, LEGACY)]

    def unparsable(stored: dict[str, Any]) -> None:
        stored["spec"]["analysis"]["interval"] = "1s"
        stored["metadata"]["generation"] += 1

    world.kube.edit_rollout(NS, NAME, unparsable)
    world.tick()

    assert world.status["phase"] == "Failed"
    assert world.route_weights() == {LEGACY: 75, CANDIDATE: 25}  # legacy 100 would be nowhere
    assert world.condition("TrafficRouted")["reason"] == "TargetUnavailable"


def test_candidate_without_available_replica_gets_no_traffic() -> None:
    world = World(rollout_body(THREE_WEIGHTS))
    world.deployments[(NS, CANDIDATE)] = DeploymentState(CANDIDATE, True, "agent-1", 1, 0)

    world.tick()

    assert world.status["phase"] == "Pending"
    assert "available replica" in world.status["message"]
    assert world.route_weights() == {LEGACY: 100, CANDIDATE: 0}


def test_candidate_losing_its_replicas_mid_step_sends_its_share_to_legacy_and_restarts_the_step() -> None:
    world = World(rollout_body(THREE_WEIGHTS))
    world.tick()
    world.tick()
    assert world.route_weights() == {LEGACY: 75, CANDIDATE: 25}
    world.deployments[(NS, CANDIDATE)] = DeploymentState(CANDIDATE, True, "agent-1", 1, 0)

    world.tick()

    assert world.route_weights() == {LEGACY: 100, CANDIDATE: 0}
    assert world.status["currentStep"] == 1  # held, not completed on a candidate that cannot answer
    assert world.history_reasons()[-1] == "CandidateUnavailable"
    world.tick()
    assert world.status["currentStep"] == 1
    world.deployments[(NS, CANDIDATE)] = DeploymentState(CANDIDATE, True, "agent-1", 1, 1)
    world.tick()
    assert world.route_weights() == {LEGACY: 75, CANDIDATE: 25}
    assert world.status["stepStartedAt"] == api.parse_status(world.status).step_started_at
    assert world.status["currentStep"] == 1


def test_inconclusive_limit_rolls_back_a_candidate_that_serves_but_exports_nothing() -> None:
    body = rollout_body([{"setWeight": 5}, {"pause": {"duration": "1h"}}, {"setWeight": 50}])
    body["spec"]["analysis"]["inconclusiveLimit"] = 2
    world = World(body)
    world.tick()
    world.tick()
    world.metrics.samples = 0  # serving, but no data at all

    for _ in range(3):
        world.tick()

    assert world.status["phase"] == "RolledBack"
    assert world.history_reasons()[-1] == "InconclusiveLimit"
    assert world.route_weights() == {LEGACY: 100, CANDIDATE: 0}


# ---------------------------------------------------------------- 7. one owner per route


def test_second_rollout_on_the_same_route_is_held_and_names_the_first() -> None:
    world = World(rollout_body(THREE_WEIGHTS))
    world.route_owner = "older-rollout"

    world.tick()

    assert world.status["phase"] == "Pending"
    assert world.kube.writes_of("route") == []
    traffic = world.condition("TrafficRouted")
    assert (traffic["status"], traffic["reason"]) == ("False", "RouteClaimed")
    assert "older-rollout" in traffic["message"]


# ---------------------------------------------------------------- 10. crash between the two writes


def test_lost_status_write_after_a_forward_route_write_resumes_forward() -> None:
    world = World(rollout_body(PAUSED_STEPS))
    world.tick()  # step 1: 10%
    world.tick()  # step 2: pause
    world.tick(advance=301)  # step 3: 25%
    world.tick()  # judged at 25%: step 4, a pause
    assert (world.status["currentStep"], world.route_weights()[CANDIDATE]) == (3, 25)
    world.kube.status_refusal = RuntimeError("operator killed between the route write and the status write")
    with pytest.raises(RuntimeError):
        world.tick(advance=301)  # the pause is over: step 5 wants 50%
    world.kube.status_refusal = None
    assert (world.status["currentStep"], world.route_weights()[CANDIDATE]) == (3, 50)
    world.written = type(world.written)()  # a restarted operator remembers nothing

    world.tick(advance=1)

    assert world.route_weights()[CANDIDATE] == 50  # never backwards to 25
    assert world.status["currentStep"] == 4
    assert "recovered from the route's write-ahead record" in world.status["history"][-1]["message"]
    assert _route_weights_seen(world) == [10, 25, 50]


def test_lost_status_write_after_a_rollback_never_sends_traffic_back_to_the_candidate() -> None:
    world = World(rollout_body(THREE_WEIGHTS))
    world.tick()
    world.tick()
    world.metrics.error_rate = 0.2
    world.kube.status_refusal = RuntimeError("operator killed")
    with contextlib.suppress(RuntimeError):
        world.tick()
    world.kube.status_refusal = None
    assert world.route_weights() == {LEGACY: 100, CANDIDATE: 0}
    world.metrics.error_rate = 0.001  # the burst is over by the time the operator is back
    world.written = type(world.written)()

    world.tick(advance=1)
    world.tick(advance=30)

    assert world.route_weights() == {LEGACY: 100, CANDIDATE: 0}
    assert world.status["phase"] == "RolledBack"
    assert world.history_reasons()[-1] == "GateFailed"


# ---------------------------------------------------------------- 11, 12. windows


def test_gate_windows_never_reach_back_before_the_step_began() -> None:
    world = World(rollout_body([{"setWeight": 5}, {"pause": {"duration": "1h"}}]))
    world.tick()
    world.tick()  # step 2 entered now
    asked = len(world.metrics.asked)

    world.tick(advance=20)

    windows = {q.split("[")[1].split("]")[0] for q in world.metrics.asked[asked:] if "[" in q}
    assert windows == {"20s"}


def _paused_with_a_full_window() -> World:
    """failureLimit 1, interval 5s, in a pause step whose 2m gate window is all its own, gates passing."""
    body = rollout_body([{"setWeight": 5}, {"pause": {"duration": "1h"}}], interval="5s")
    body["spec"]["analysis"]["failureLimit"] = 1
    world = World(body)
    world.tick(advance=5)
    world.tick(advance=120)
    world.tick(advance=120)
    return world


def test_one_burst_is_one_failure_however_many_evaluations_overlap_it() -> None:
    world = _paused_with_a_full_window()

    world.metrics.error_rate = 0.2  # a burst seen by this evaluation ...
    world.tick(advance=5)
    assert world.status["gateFailures"] == {"error-rate": 1}
    # ... and by the overlapping 2m windows after it, unless they start after the failure.
    answers = world.prometheus.answer

    def burst_only_in_long_windows(promql: str) -> Any:
        world.metrics.error_rate = 0.2 if "[120s]" in promql or "[2m]" in promql else 0.001
        return answers(promql)  # type: ignore[operator]

    world.prometheus.answer = burst_only_in_long_windows
    for _ in range(6):
        world.tick(advance=5)

    assert world.status["phase"] == "Progressing"
    assert world.status["gateFailures"] == {"error-rate": 1}


def test_the_tail_of_a_burst_seen_while_it_goes_on_is_not_a_second_failure() -> None:
    world = _paused_with_a_full_window()
    world.metrics.error_rate = 0.2

    world.tick(advance=2)  # the fast check saw the burst 2 s in: the first failure
    # 5 s later a window of 5 s still holds the burst's last seconds: they are the same burst.
    world.tick(advance=5)
    world.metrics.error_rate = 0.001
    for _ in range(4):
        world.tick(advance=5)

    assert world.status["phase"] == "Progressing"
    assert world.status["gateFailures"] == {"error-rate": 1}


def test_sustained_breach_still_rolls_back_within_ten_seconds_of_the_first_failure() -> None:
    world = _paused_with_a_full_window()
    world.metrics.error_rate = 0.2

    world.tick(advance=5)  # the first failure
    world.tick(advance=5)  # its grace: the tail of a burst is not counted again
    assert world.status["phase"] == "Progressing"
    world.tick(advance=5)  # 10 s after it: a window of its own, still breached

    assert world.status["phase"] == "RolledBack"


# ---------------------------------------------------------------- 13. missing legacy


def test_missing_legacy_keeps_the_analysis_and_records_a_failing_candidate_at_once() -> None:
    world = World(rollout_body(THREE_WEIGHTS))
    world.tick()
    world.tick()
    del world.deployments[(NS, LEGACY)]

    world.tick()

    assert ("Warning", "LegacyNotFound") in [(t, r) for t, r, _ in world.events.events]
    assert world.condition("AnalysisHealthy")["status"] == "True"
    world.metrics.error_rate = 0.2
    world.tick(advance=5)
    assert world.status["phase"] == "RolledBack"
    assert world.route_weights() == {LEGACY: 75, CANDIDATE: 25}  # nowhere else to send it yet
    assert world.condition("TrafficRouted")["reason"] == "TargetUnavailable"
    world.deployments[(NS, LEGACY)] = DeploymentState(LEGACY, True, "rules-1", 1, 1)
    world.tick(advance=5)
    assert world.route_weights() == {LEGACY: 100, CANDIDATE: 0}


# ---------------------------------------------------------------- 15. candidate revisions


def test_kubectl_rollout_restart_is_not_a_new_candidate_revision() -> None:
    template = {"metadata": {"labels": {"app": "agent"}}, "spec": {"containers": [{"image": "agent:2"}]}}
    restarted = copy.deepcopy(template)
    restarted["metadata"]["annotations"] = {"kubectl.kubernetes.io/restartedAt": "2026-11-26T10:00:00Z"}
    new_prompt = copy.deepcopy(restarted)
    new_prompt["metadata"]["annotations"]["agent/prompt"] = "v2"

    assert template_hash(restarted) == template_hash(template)
    assert template_hash(new_prompt) != template_hash(template)


# ---------------------------------------------------------------- 5. nothing moves before analysis can run


def test_query_prometheus_rejects_fails_the_spec_before_any_traffic_moves() -> None:
    world = World(rollout_body(THREE_WEIGHTS))
    world.prometheus.rejects = lambda promql: 'parse error: unexpected "}"'

    world.tick()

    assert world.status["phase"] == "Failed"
    spec_valid = world.condition("SpecValid")
    assert "spec.analysis.gates[0]" in spec_valid["message"] and "unexpected" in spec_valid["message"]
    assert world.kube.writes_of("route") == []


def test_unreachable_prometheus_holds_the_start_until_the_queries_are_checked() -> None:
    world = World(rollout_body(THREE_WEIGHTS))
    world.prometheus.down = "http://prometheus:9090: connection refused"

    world.tick()

    assert world.status["phase"] == "Pending"
    assert "waiting to check the gates' queries" in world.status["message"]
    assert world.kube.writes_of("route") == []
    world.prometheus.down = None
    world.tick()
    assert world.route_weights() == {LEGACY: 95, CANDIDATE: 5}
    checked = len(world.prometheus.checked)
    world.tick()
    assert len(world.prometheus.checked) == checked  # a generation is checked once


def test_query_rejected_mid_rollout_rolls_back_at_once() -> None:
    world = World(rollout_body(THREE_WEIGHTS))
    world.tick()

    def rejecting(promql: str) -> Any:
        raise QueryRejected("bad_data: unknown function", query=promql)

    world.prometheus.answer = rejecting
    world.tick()

    assert world.status["phase"] == "RolledBack"
    assert world.history_reasons()[-1] == "QueryRejected"
    analysis = world.condition("AnalysisHealthy")
    assert (analysis["status"], analysis["reason"]) == ("False", "QueryRejected")
    assert world.route_weights() == {LEGACY: 100, CANDIDATE: 0}


# ---------------------------------------------------------------- evaluation Jobs


EVALUATE_STEPS: list[dict[str, Any]] = [
    {"evaluate": {"job": {"image": "eval:1"}, "minCases": 10, "requiredCases": ["edge-a"]}},
    {"setWeight": 10},
]


def test_a_crash_between_the_job_create_and_the_status_write_starts_no_second_suite() -> None:
    world = World(rollout_body(EVALUATE_STEPS))
    world.tick()  # started: step 1, an evaluation, no user traffic
    world.kube.status_refusal = RuntimeError("operator killed between the Job create and the status write")
    with pytest.raises(RuntimeError):
        world.tick(advance=1)  # creates the Job
    world.kube.status_refusal = None
    assert len(world.kube.jobs) == 1 and not world.status.get("evaluations")
    world.written = type(world.written)()  # a restarted operator remembers nothing

    world.tick(advance=1)  # finds its Job (same name): records it running, creates nothing
    world.tick(advance=1)

    assert len(world.kube.jobs) == 1 and world.kube.job_creates == 1
    ((key, job),) = world.kube.jobs.items()
    assert [r["job"] for r in world.status["evaluations"]] == [key[1]]
    job["status"] = {"conditions": [{"type": "Complete", "status": "True"}]}
    world.kube.pod_messages[key] = '{"total": 10, "passed": 10, "cases": {"edge-a": true}}'
    world.tick(advance=1)
    assert world.status["currentStep"] == 1 and world.route_weights()[CANDIDATE] == 10
    assert world.status["evaluations"][0]["phase"] == "Passed"


def test_an_evaluation_job_deleted_while_it_runs_is_created_again() -> None:
    world = World(rollout_body(EVALUATE_STEPS))
    world.tick()
    world.tick(advance=1)
    assert world.kube.job_creates == 1
    world.kube.jobs.clear()  # someone deleted it (kubectl delete job)
    world.tick(advance=1)
    assert len(world.kube.jobs) == 1 and world.kube.job_creates == 2
    assert world.route_weights()[CANDIDATE] == 0


def test_a_new_rollout_is_acknowledged_by_one_status_write_that_waits_for_no_prometheus() -> None:
    """planner.first_sight: its first reconcile checks no query and measures nothing, so a Prometheus
    that is down (or busy with 10,000 rollouts) does not keep the author from learning it was seen."""
    world = World(rollout_body(THREE_WEIGHTS), acknowledged=False)
    world.prometheus.down = "http://prometheus:9090: connection refused"

    assert world.tick() == 0.5  # the next reconcile follows at once (the shell's shortest requeue)

    assert (world.status["phase"], world.status["message"]) == (
        "Pending",
        "accepted: the spec is valid; step 1 starts next",
    )
    assert [w.kind for w in world.kube.writes] == ["status"]
    assert world.prometheus.checked == []
    world.tick(advance=0.5)  # the next one checks the queries first, and waits for Prometheus
    assert "waiting to check the gates' queries" in world.status["message"]
    world.prometheus.down = None
    world.tick()
    assert world.route_weights() == {LEGACY: 95, CANDIDATE: 5}
