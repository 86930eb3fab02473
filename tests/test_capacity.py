"""Capacity-safe rollback (agent_rollout.capacity, agent_rollout.rollback): an automatic rollback moves
traffic back to legacy only as fast as legacy's ready replicas allow, within capacityTimeout; abort
moves everything at once; the operator never touches legacy, it reports the shortfall."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from agent_rollout import api
from agent_rollout.api import AgentRolloutStatus, Phase, Verdict, Weights
from agent_rollout.capacity import legacy_share, rollback_weights
from agent_rollout.domain import DeploymentState, EmitEvent, Plan, SetWeights
from agent_rollout.planner import plan
from tests.test_planner import CANDIDATE, ERROR_RATE, LEGACY, T0, make_spec, observe, result, running, w


def legacy(ready: int) -> DeploymentState:
    return DeploymentState(
        LEGACY.name, True, "legacy-1", replicas=ready, available_replicas=ready, ready_replicas=ready
    )


def spec(**rollback: Any) -> api.AgentRolloutSpec:
    s = make_spec(steps=[{"setWeight": 20}, {"setWeight": 70}, {"setWeight": 100}], gates=[ERROR_RATE])
    return s.model_copy(update={"rollback": api.Rollback.model_validate(rollback)}) if rollback else s


def at_70(**kw: Any) -> AgentRolloutStatus:
    """Candidate at 70%, legacy had 10 ready replicas when the rollout began."""
    return running(step=1, weights=w(70), legacy_replicas_at_start=10, **kw)


FAILING = (result(Verdict.FAIL, value=0.3),)


def routed(p: Plan) -> list[Weights]:
    return [a.weights for a in p.actions if isinstance(a, SetWeights)]


def events(p: Plan) -> list[tuple[str, str]]:
    return [(a.type, a.reason) for a in p.actions if isinstance(a, EmitEvent)]


def condition(p: Plan) -> api.Condition | None:
    return next((c for c in p.status.conditions if c.type == "LegacyCapacity"), None)


def rolled_back_short(ready: int = 5, **rollback: Any) -> Plan:
    return plan(spec(**rollback), at_70(), observe(route=w(70), gates=FAILING, legacy=legacy(ready)), T0)


def tick(p: Plan, ready: int, seconds: float, s: api.AgentRolloutSpec | None = None, **status: Any) -> Plan:
    st_ = p.status.model_copy(update=status) if status else p.status
    return plan(
        s or spec(),
        st_,
        observe(route=p.status.weights, legacy=legacy(ready)),
        T0 + timedelta(seconds=seconds),
    )


def test_legacy_share_is_proportional_to_its_ready_replicas() -> None:
    assert [legacy_share(r, 10) for r in (0, 3, 5, 9, 10, 12)] == [0, 30, 50, 90, 100, 100]
    assert rollback_weights(w(70), 5, 10) == w(50)  # legacy 30 -> 50
    assert rollback_weights(w(40), 5, 10) == w(40)  # never less legacy than now
    assert rollback_weights(w(70), 10, 10) == w(0)


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 100), st.integers(0, 50), st.integers(1, 50), st.integers(0, 50))
def test_rollback_weights_never_take_traffic_from_legacy_and_grow_with_its_replicas(
    candidate: int, ready: int, required: int, more: int
) -> None:
    current = w(candidate)
    now = rollback_weights(current, ready, required)
    later = rollback_weights(now, ready + more, required)
    assert now.legacy >= current.legacy
    assert later.legacy >= now.legacy
    assert (now.legacy == 100) == (current.legacy == 100 or ready >= required)


def test_the_ready_replicas_of_legacy_are_recorded_when_the_rollout_starts() -> None:
    seen = observe(route=w(0), legacy=legacy(7), candidate=CANDIDATE)
    status = plan(spec(), AgentRolloutStatus(), seen, T0).status  # the acknowledgement (first_sight)
    p = plan(spec(), status, seen, T0)
    assert p.status.phase is Phase.PROGRESSING and p.status.legacy_replicas_at_start == 7


def test_a_failed_gate_with_legacy_short_moves_back_only_what_legacy_can_take() -> None:
    p = rolled_back_short(ready=5)
    assert p.status.phase is Phase.ROLLED_BACK
    assert p.status.weights == w(50) and routed(p) == [w(50)]
    assert [r for _, r in events(p)] == ["GateFailed", "LegacyShortOfReplicas"]
    assert ("Warning", "LegacyShortOfReplicas") in events(p)
    wait = p.status.capacity_rollback
    assert wait is not None and (wait.required, wait.ready, wait.reason) == (10, 5, "GateFailed")
    assert wait.deadline == "2026-03-01T12:05:00Z"
    c = condition(p)
    assert c is not None and (c.status, c.reason) == ("False", "LegacyShortOfReplicas")
    assert "legacy has 5/10 ready replicas" in c.message
    assert p.requeue_after is not None and p.requeue_after <= 300


def test_more_ready_legacy_replicas_take_more_traffic_back_until_all_of_it() -> None:
    p = rolled_back_short(ready=5)
    same = tick(p, 5, 10)
    assert routed(same) == [] and same.status.history == p.status.history  # nothing new, nothing written
    grown = tick(same, 8, 20)
    assert grown.status.weights == w(20) and routed(grown) == [w(20)]
    assert grown.status.history[-1].reason == "LegacyCapacityStep"
    ready = tick(grown, 10, 30)
    assert ready.status.weights == w(0) and ready.status.capacity_rollback is None
    assert ready.status.history[-1].reason == "LegacyCapacityRestored"
    c = condition(ready)
    assert c is not None and (c.status, c.reason) == ("True", "LegacyReplicasReady")
    assert ready.status.phase is Phase.ROLLED_BACK


def test_after_capacity_timeout_all_traffic_goes_to_legacy_anyway() -> None:
    p = rolled_back_short(ready=5, capacityTimeout="2m")
    before = tick(p, 6, 119)
    assert before.status.weights == w(40)
    after = tick(before, 6, 120)
    assert after.status.weights == w(0) and routed(after) == [w(0)]
    assert after.status.capacity_rollback is None
    assert ("Warning", "LegacyCapacityTimeout") in events(after)
    c = condition(after)
    assert c is not None and (c.status, c.reason) == ("False", "LegacyCapacityTimeout")


def test_abort_during_a_capacity_safe_rollback_moves_everything_at_once() -> None:
    p = rolled_back_short(ready=5)
    aborted = tick(p, 5, 5, abort=True)
    assert aborted.status.weights == w(0) and routed(aborted) == [w(0)]
    assert aborted.status.abort is False and aborted.status.capacity_rollback is None
    assert aborted.status.history[-1].reason == "Aborted"


def test_abort_never_waits_for_legacy_capacity() -> None:
    p = plan(spec(), at_70(abort=True), observe(route=w(70), legacy=legacy(2)), T0)
    assert p.status.phase is Phase.ROLLED_BACK and p.status.weights == w(0)
    assert p.status.capacity_rollback is None and "LegacyShortOfReplicas" not in [r for _, r in events(p)]


def test_min_legacy_ready_replicas_overrides_the_count_at_start() -> None:
    p = plan(
        spec(minLegacyReadyReplicas=4), at_70(), observe(route=w(70), gates=FAILING, legacy=legacy(2)), T0
    )
    assert p.status.weights == w(50)
    assert p.status.capacity_rollback is not None and p.status.capacity_rollback.required == 4


def test_a_zero_capacity_timeout_turns_the_wait_off() -> None:
    p = rolled_back_short(ready=1, capacityTimeout="0s")
    assert p.status.weights == w(0) and p.status.capacity_rollback is None


def test_a_legacy_with_every_replica_ready_takes_everything_at_once() -> None:
    p = rolled_back_short(ready=10)
    assert p.status.weights == w(0) and p.status.capacity_rollback is None
    assert condition(p) is None


def test_a_candidate_that_stops_serving_during_the_wait_sends_everything_to_legacy() -> None:
    p = rolled_back_short(ready=5)
    down = DeploymentState(CANDIDATE.name, True, "agent-1", replicas=2, available_replicas=0)
    gone = plan(
        spec(), p.status, observe(route=w(50), legacy=legacy(5), candidate=down), T0 + timedelta(seconds=5)
    )
    assert gone.status.weights == w(0) and gone.status.capacity_rollback is None


def test_a_retry_during_the_wait_starts_over_without_it() -> None:
    p = rolled_back_short(ready=5)
    retried = tick(p, 10, 5, retry=True)
    assert retried.status.phase is Phase.PROGRESSING and retried.status.capacity_rollback is None
    assert retried.status.weights == w(20) and condition(retried) is None
    assert retried.status.legacy_replicas_at_start == 10
