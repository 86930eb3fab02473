"""Drill and capacity-safe rollback invariants over random worlds (the shell of
tests/test_planner_properties.py, plus a legacy whose ready replicas an autoscaler changes at random,
drill requests at random times and legacy's drill gates passing, failing or without data)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from agent_rollout import api
from agent_rollout.api import (
    AgentRolloutStatus,
    DrillRequest,
    DrillResult,
    GateResult,
    Phase,
    Verdict,
    Weights,
)
from agent_rollout.domain import DeploymentState, EmitEvent, Observations, Plan, SetWeights
from agent_rollout.drill import drill_gates
from agent_rollout.planner import plan
from agent_rollout.routing import drilling
from agent_rollout.tick import LIVE_PHASES
from tests.test_planner_properties import (
    PROPERTY_SETTINGS,
    T0,
    Moment,
    Version,
    histories,
    moments,
    observe,
)


@dataclass(frozen=True)
class Extra:
    legacy_ready: int  # what an autoscaler left of legacy
    drill: bool  # a human asks for a drill before this tick
    stay: bool
    drill_verdict: Verdict | None  # legacy's drill gates this tick (None: not measured)


extras = st.builds(
    Extra,
    legacy_ready=st.sampled_from([6, 6, 6, 5, 3, 1, 0]),
    drill=st.sampled_from([False] * 4 + [True]),
    stay=st.booleans(),
    drill_verdict=st.sampled_from([None, *[Verdict.PASS] * 4, Verdict.INCONCLUSIVE, Verdict.FAIL]),
)
worlds = st.lists(st.tuples(moments, extras), min_size=1, max_size=30)


@dataclass(frozen=True)
class Tick:
    version: Version
    before: AgentRolloutStatus
    obs: Observations
    now: datetime
    result: Plan

    @property
    def after(self) -> AgentRolloutStatus:
        return self.result.status

    @property
    def decided(self) -> list[str]:
        return [a.reason for a in self.result.actions if isinstance(a, EmitEvent)]

    @property
    def requested(self) -> list[Weights]:
        return [a.weights for a in self.result.actions if isinstance(a, SetWeights)]


def simulate(versions: list[Version], world: list[tuple[Moment, Extra]]) -> list[Tick]:
    status, route, now, revision, current = AgentRolloutStatus(), Weights(), T0, 1, 0
    ticks = []
    for moment, extra in world:
        now += timedelta(seconds=moment.advance % 240)  # drills and capacity waits last minutes, not hours
        revision += moment.new_revision
        if moment.edit is not None:
            current = moment.edit % len(versions)
        if moment.route == "drift":
            route = Weights(legacy=100 - moment.drift_to, candidate=moment.drift_to)
        request = DrillRequest(stay_rolled_back=extra.stay) if extra.drill else status.drill
        status = status.model_copy(
            update={"abort": status.abort or moment.abort, "retry": moment.retry, "drill": request}
        )
        v = versions[current]
        obs = observe(v, moment, route, revision, generation=current + 1)
        legacy = obs.legacy
        assert legacy is not None
        ready = extra.legacy_ready if legacy.exists else 0
        gates = None
        if extra.drill_verdict is not None and v.spec is not None:
            gates = tuple(GateResult(name=g.name, verdict=extra.drill_verdict) for g in drill_gates(v.spec))
        obs = Observations(
            **{
                **obs.__dict__,
                "legacy": DeploymentState(legacy.name, legacy.exists, "legacy-1", 6, ready, ready),
                "drill_gates": gates,
            }
        )
        result = plan(v.spec, status, obs, now)
        ticks.append(Tick(v, status, obs, now, result))
        requested = [a.weights for a in result.actions if isinstance(a, SetWeights)]
        if requested and moment.route == "applied":
            route = requested[-1]
        status = result.status
    return ticks


@PROPERTY_SETTINGS
@given(histories(), worlds)
def test_a_rollback_never_gives_the_candidate_more_traffic_and_ends_by_its_deadline(
    versions: list[Version], world: list[tuple[Moment, Extra]]
) -> None:
    for t in simulate(versions, world):
        if t.before.phase is not Phase.ROLLED_BACK or t.after.phase is not Phase.ROLLED_BACK:
            continue
        assert all(w.candidate <= t.before.weights.candidate for w in t.requested), (
            t.before.weights,
            t.requested,
        )
        assert t.after.weights.candidate <= t.before.weights.candidate
        wait = t.after.capacity_rollback
        assert t.obs.legacy is not None
        if wait is None and t.obs.legacy.exists:
            assert t.after.weights.candidate == 0, t.decided
        if wait is not None:
            assert t.now < datetime.fromisoformat(wait.deadline), wait
            assert t.obs.legacy.ready_replicas < wait.required


@PROPERTY_SETTINGS
@given(histories(), worlds)
def test_an_abort_or_a_drill_moves_all_traffic_to_legacy_at_once(
    versions: list[Version], world: list[tuple[Moment, Extra]]
) -> None:
    for t in simulate(versions, world):
        assert t.obs.legacy is not None
        if not t.obs.legacy.exists:
            continue
        if "Aborted" in t.decided or "DrillStarted" in t.decided:
            assert t.after.weights == Weights(legacy=100, candidate=0), t.decided
            assert t.after.capacity_rollback is None
        if drilling(t.after):
            assert t.after.weights == Weights(legacy=100, candidate=0)


@PROPERTY_SETTINGS
@given(histories(), worlds)
def test_a_failed_drill_stays_on_legacy_and_a_passed_one_returns_to_its_step(
    versions: list[Version], world: list[tuple[Moment, Extra]]
) -> None:
    for t in simulate(versions, world):
        drill = t.after.last_drill
        if "DrillFailed" in t.decided:
            assert drill is not None and drill.result is DrillResult.FAILED
            assert t.after.phase is Phase.ROLLED_BACK and all(w.candidate == 0 for w in t.requested)
        if "DrillPassed" in t.decided:
            assert drill is not None and drill.result is DrillResult.PASSED
            assert t.after.current_step == drill.step and t.after.phase in (Phase.PROGRESSING, Phase.PAUSED)
            bound = api.duration_seconds(drill.bound)
            assert drill.confirm_seconds is not None and drill.confirm_seconds <= bound
            assert t.after.passed_drill == drill
        if t.after.drill is not None:  # a request waits only while the rollout is live (candidate gone)
            assert t.after.phase in LIVE_PHASES and "DrillStarted" not in t.decided


@PROPERTY_SETTINGS
@given(histories(), worlds)
def test_every_decision_is_one_history_entry_and_one_event(
    versions: list[Version], world: list[tuple[Moment, Extra]]
) -> None:
    for t in simulate(versions, world):
        decided = t.decided
        appended = t.after.history[len(t.after.history) - len(decided) :] if decided else []
        assert (t.before.history + appended)[-api.HISTORY_LIMIT :] == t.after.history
        assert [d.reason for d in appended] == decided
        if t.after.weights != t.before.weights:
            assert decided, (t.before.weights, t.after.weights)


CAPACITY_SPEC = api.AgentRolloutSpec.model_validate(
    {
        "legacy": {"deployment": "legacy"},
        "candidate": {"deployment": "candidate"},
        "traffic": {
            "gatewayAPI": {"httpRoute": "route", "legacyBackend": "legacy", "candidateBackend": "candidate"}
        },
        "analysis": {
            "prometheus": {"url": "http://prometheus:9090"},
            "gates": [{"name": "error-rate", "template": "errorRate", "max": 0.01}],
        },
        "steps": [{"setWeight": 30}, {"setWeight": 70}, {"pause": {"duration": "1h"}}],
        "rollback": {"capacityTimeout": "10m"},
    }
)


@PROPERTY_SETTINGS
@given(
    st.integers(1, 8),
    st.lists(
        st.tuples(
            st.integers(0, 8),
            st.sampled_from([Verdict.PASS] * 3 + [Verdict.FAIL]),
            st.booleans(),
            st.integers(0, 200),
        ),
        min_size=1,
        max_size=25,
    ),
)
def test_legacy_takes_back_what_its_ready_replicas_allow_and_all_of_it_by_the_deadline(
    at_start: int, world: list[tuple[int, Verdict, bool, int]]
) -> None:
    status, route, now = AgentRolloutStatus(), Weights(), T0
    candidate = DeploymentState("candidate", True, "rev-1", 2, 2, 2)
    # The first two reconciles acknowledge the rollout (planner.first_sight), then start it.
    start = [(at_start, Verdict.PASS, False, 0)] * 2
    for i, (ready, verdict, abort, advance) in enumerate([*start, *world]):
        now += timedelta(seconds=advance * 5)
        legacy = DeploymentState("legacy", True, "legacy-1", 8, ready, ready)
        gates = (GateResult(name="error-rate", verdict=verdict, value=0.5, samples=100),)
        before = status.model_copy(update={"abort": status.abort or (abort and i % 5 == 0)})
        obs = Observations(legacy=legacy, candidate=candidate, route_weights=route, gates=gates, generation=1)
        result = plan(CAPACITY_SPEC, before, obs, now)
        after = result.status
        requested = [a.weights for a in result.actions if isinstance(a, SetWeights)]
        decided = [a.reason for a in result.actions if isinstance(a, EmitEvent)]
        route = requested[-1] if requested else route
        status = after
        if i == 1:
            assert after.legacy_replicas_at_start == at_start
        if after.phase is not Phase.ROLLED_BACK:
            continue
        # Never less legacy than before, never more than its ready replicas allow unless it must (abort,
        # deadline), and all of it once legacy has the replicas it began with.
        assert after.weights.legacy >= before.weights.legacy
        share = 100 if ready >= at_start else ready * 100 // at_start
        wait = after.capacity_rollback
        if wait is not None:
            assert after.weights.legacy == max(before.weights.legacy, share), (ready, at_start, after.weights)
            assert "LegacyShortOfReplicas" in [c.reason for c in after.conditions]
        else:
            assert after.weights == Weights(legacy=100, candidate=0), decided
        if "Aborted" in decided:
            assert wait is None
        if "GateFailed" in decided and ready < at_start and before.weights.legacy < share < 100:
            assert wait is not None and "LegacyShortOfReplicas" in decided
