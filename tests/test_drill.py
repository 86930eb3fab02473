"""Rollback drills (agent_rollout.drill): rehearse the rollback to legacy at a weighted step, confirm it
from legacy's own metrics, record it, and return to the step or stay on legacy."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from agent_rollout import api
from agent_rollout.api import (
    AgentRolloutStatus,
    Criterion,
    DrillRecord,
    DrillRequest,
    DrillResult,
    Phase,
    Score,
    Verdict,
)
from agent_rollout.domain import DeploymentState, EmitEvent, Plan, SetWeights
from agent_rollout.drill import drill_gates, drill_spec, drill_window
from agent_rollout.planner import plan
from agent_rollout.routing import drilling
from agent_rollout.validation import validate
from tests.test_planner import (
    CANDIDATE,
    ERROR_RATE,
    LEGACY,
    T0,
    T0_TEXT,
    make_spec,
    observe,
    reasons,
    result,
    running,
    w,
)

LATENCY: dict[str, Any] = {"name": "p95", "template": "latencyQuantile", "quantile": 0.95, "max": 2.0}
STEPS: list[dict[str, Any]] = [{"setWeight": 25}, {"pause": {"duration": "10m"}}, {"setWeight": 60}]
READY_LEGACY = DeploymentState(
    LEGACY.name, True, "legacy-1", replicas=2, available_replicas=2, ready_replicas=2
)


def spec(**readiness: Any) -> api.AgentRolloutSpec:
    s = make_spec(steps=STEPS, gates=[ERROR_RATE, LATENCY])
    if readiness:
        s = s.model_copy(update={"readiness": api.Readiness.model_validate(readiness)})
    return s


def at_weighted_step(**kw: Any) -> AgentRolloutStatus:
    return running(step=1, weights=w(25), **kw)


def events(p: Plan) -> list[EmitEvent]:
    return [a for a in p.actions if isinstance(a, EmitEvent)]


def routed(p: Plan) -> list[SetWeights]:
    return [a for a in p.actions if isinstance(a, SetWeights)]


def legacy_gates(verdict: Verdict = Verdict.PASS) -> tuple[api.GateResult, ...]:
    return (result(verdict, "error-rate"), result(verdict, "p95", value=0.4, bound="<= 2"))


def started(stay: bool = False, bound: str | None = None, at: Any = T0) -> Plan:
    status = at_weighted_step(drill=DrillRequest(stay_rolled_back=stay, bound=bound))
    return plan(spec(), status, observe(route=w(25), legacy=READY_LEGACY), at)


def confirmed_route(p: Plan, at: Any) -> Plan:
    """The next tick: the route shows legacy 100."""
    return plan(spec(), p.status, observe(route=w(0), legacy=READY_LEGACY), at)


def test_a_drill_sends_all_traffic_to_legacy_before_anything_else() -> None:
    p = started()
    assert routed(p)[0].weights == w(0)
    assert isinstance(p.actions[0], SetWeights)  # the route first: a rollback must not wait on status
    assert p.status.weights == w(0)
    assert p.status.phase is Phase.PROGRESSING and p.status.current_step == 1
    assert p.status.drill is None  # the request is consumed
    drill = p.status.last_drill
    assert drill is not None and drill.result is DrillResult.RUNNING
    assert (drill.started_at, drill.step, drill.weights, drill.bound) == (T0_TEXT, 1, w(25), "15m")
    assert p.status.history[-1].reason == "DrillStarted"
    assert [e.reason for e in events(p)] == ["DrillStarted"]


def test_the_drill_notes_when_the_route_showed_legacy_100() -> None:
    p = started()
    still = plan(spec(), p.status, observe(route=w(25), legacy=READY_LEGACY), T0 + timedelta(seconds=1))
    assert still.status.last_drill is not None and still.status.last_drill.route_legacy_at is None
    shown = confirmed_route(still, T0 + timedelta(seconds=3))
    drill = shown.status.last_drill
    assert drill is not None and drill.route_legacy_at == "2026-03-01T12:00:03Z" and drill.route_seconds == 3
    assert shown.status.weights == w(0)


def test_a_drill_that_legacy_confirms_returns_to_the_step_it_left_and_the_step_starts_over() -> None:
    p = confirmed_route(started(), T0 + timedelta(seconds=2))
    at = T0 + timedelta(seconds=40)
    done = plan(spec(), p.status, observe(route=w(0), legacy=READY_LEGACY, drill_gates=legacy_gates()), at)
    st = done.status
    assert st.phase is Phase.PROGRESSING and st.current_step == 1 and st.weights == w(25)
    assert routed(done)[0].weights == w(25)
    assert st.step_started_at == "2026-03-01T12:00:40Z"  # the pause counts from the return
    assert st.last_drill is not None and st.last_drill.result is DrillResult.PASSED
    assert st.last_drill.confirmed_at == "2026-03-01T12:00:40Z" and st.last_drill.confirm_seconds == 40
    assert st.passed_drill == st.last_drill
    assert st.history[-1].reason == "DrillPassed" and "back to step 2/3" in st.history[-1].message
    assert [r.name for r in st.history[-1].evidence] == ["error-rate", "p95"]


def test_a_passed_drill_can_stay_rolled_back_when_asked() -> None:
    p = confirmed_route(started(stay=True), T0 + timedelta(seconds=2))
    at = T0 + timedelta(seconds=20)
    done = plan(spec(), p.status, observe(route=w(0), legacy=READY_LEGACY, drill_gates=legacy_gates()), at)
    assert done.status.phase is Phase.ROLLED_BACK and done.status.weights == w(0)
    assert not [a for a in routed(done) if a.weights.candidate > 0]
    assert done.status.history[-1].reason == "DrillRolledBack"
    assert done.status.last_drill is not None and done.status.last_drill.result is DrillResult.PASSED


def test_a_drill_whose_legacy_is_out_of_bounds_fails_and_stays_on_legacy() -> None:
    p = confirmed_route(started(), T0 + timedelta(seconds=2))
    bad = (result(Verdict.FAIL, "error-rate", value=0.4, message="0.4 > max 0.01"), legacy_gates()[1])
    at = T0 + timedelta(seconds=20)
    done = plan(spec(), p.status, observe(route=w(0), legacy=READY_LEGACY, drill_gates=bad), at)
    assert done.status.phase is Phase.ROLLED_BACK and done.status.weights == w(0)
    assert not [a for a in routed(done) if a.weights.candidate > 0]
    drill = done.status.last_drill
    assert (
        drill is not None and drill.result is DrillResult.FAILED and "legacy out of bounds" in drill.message
    )
    assert done.status.passed_drill is None
    last = done.status.history[-1]
    assert last.reason == "DrillFailed" and "stays on legacy" in last.message
    assert [e.type for e in events(done)] == ["Warning"]
    # And later ticks never give the candidate traffic back.
    later = plan(spec(), done.status, observe(route=w(0), legacy=READY_LEGACY), at + timedelta(minutes=5))
    assert later.status.weights == w(0) and not routed(later)


def test_a_drill_not_confirmed_within_its_bound_fails() -> None:
    p = confirmed_route(started(bound="1m"), T0 + timedelta(seconds=2))
    waiting = (result(Verdict.INCONCLUSIVE, "error-rate", value=None, message="waiting for samples 3/200"),)
    mid = plan(
        spec(),
        p.status,
        observe(route=w(0), legacy=READY_LEGACY, drill_gates=waiting),
        T0 + timedelta(seconds=30),
    )
    assert mid.status.last_drill is not None and mid.status.last_drill.result is DrillResult.RUNNING
    assert "drill: waiting for legacy's gates" in mid.status.message
    late = plan(
        spec(),
        mid.status,
        observe(route=w(0), legacy=READY_LEGACY, drill_gates=waiting),
        T0 + timedelta(seconds=61),
    )
    drill = late.status.last_drill
    assert drill is not None and drill.result is DrillResult.FAILED and "bound 1m exceeded" in drill.message
    assert late.status.phase is Phase.ROLLED_BACK and late.status.weights == w(0)


def test_a_confirmation_after_the_bound_fails_the_drill() -> None:
    p = confirmed_route(started(bound="30s"), T0 + timedelta(seconds=2))
    # Prometheus was down until now: the first measurement passes, but too late.
    at = T0 + timedelta(seconds=30)
    done = plan(spec(), p.status, observe(route=w(0), legacy=READY_LEGACY, drill_gates=legacy_gates()), at)
    assert done.status.last_drill is not None and done.status.last_drill.result is DrillResult.PASSED
    at = T0 + timedelta(seconds=31)
    p2 = confirmed_route(started(bound="30s"), T0 + timedelta(seconds=2))
    late = plan(spec(), p2.status, observe(route=w(0), legacy=READY_LEGACY, drill_gates=legacy_gates()), at)
    drill = late.status.last_drill
    assert (
        drill is not None and drill.result is DrillResult.FAILED and "beyond the bound 30s" in drill.message
    )
    assert late.status.weights == w(0)


def test_the_candidate_is_not_judged_while_a_drill_runs() -> None:
    p = confirmed_route(started(), T0 + timedelta(seconds=2))
    failing = (result(Verdict.FAIL, value=0.5),)
    tick = plan(
        spec(), p.status, observe(route=w(0), legacy=READY_LEGACY, gates=failing), T0 + timedelta(seconds=10)
    )
    assert tick.status.phase is Phase.PROGRESSING and tick.status.gate_failures == {}


def test_abort_during_a_drill_rolls_back_and_interrupts_the_drill() -> None:
    p = confirmed_route(started(), T0 + timedelta(seconds=2))
    status = p.status.model_copy(update={"abort": True})
    done = plan(spec(), status, observe(route=w(0), legacy=READY_LEGACY), T0 + timedelta(seconds=5))
    assert done.status.phase is Phase.ROLLED_BACK and done.status.weights == w(0)
    assert reasons(done)[-2:] == ["Aborted", "DrillInterrupted"]
    assert done.status.last_drill is not None and done.status.last_drill.result is DrillResult.INTERRUPTED


def test_a_new_candidate_revision_during_a_drill_interrupts_it_and_restarts() -> None:
    p = confirmed_route(started(), T0 + timedelta(seconds=2))
    new = DeploymentState(CANDIDATE.name, True, "agent-2", replicas=2, available_replicas=2)
    done = plan(
        spec(), p.status, observe(route=w(0), legacy=READY_LEGACY, candidate=new), T0 + timedelta(seconds=5)
    )
    assert done.status.current_step == 0 and done.status.weights == w(25)
    assert not drilling(done.status)
    assert done.status.last_drill is not None and done.status.last_drill.result is DrillResult.INTERRUPTED


def test_a_drill_is_refused_where_it_cannot_run() -> None:
    cases = {
        "no weighted step": (
            running(step=0, weights=w(0)),
            READY_LEGACY,
            make_spec(steps=[{"pause": {"duration": "1m"}}, *STEPS], gates=[ERROR_RATE, LATENCY]),
        ),
        "promoted": (running(phase=Phase.PROMOTED, weights=w(100), current_step=3), READY_LEGACY, spec()),
        "no drill gate": (
            at_weighted_step(),
            READY_LEGACY,
            make_spec(steps=STEPS, gates=[{**ERROR_RATE, "dryRun": True}]),
        ),
        "legacy short": (
            at_weighted_step(legacy_replicas_at_start=4),
            READY_LEGACY,
            spec(),
        ),
    }
    for case, (status, legacy, s) in cases.items():
        status = status.model_copy(update={"drill": DrillRequest()})
        p = plan(s, status, observe(route=status.weights, legacy=legacy), T0)
        assert p.status.drill is None, case
        assert p.status.last_drill is None, case
        assert p.status.weights == status.weights, case
        assert "DrillRefused" in reasons(p), case
        assert not [a for a in routed(p) if a.weights != status.weights], case


def test_drill_gates_measure_legacy_with_the_specs_error_rate_and_latency_bounds() -> None:
    s = make_spec(
        steps=STEPS,
        gates=[
            {**ERROR_RATE, "window": "2m", "compare": {"maxRatio": 1.5}},
            LATENCY,
            {"name": "cost", "template": "costPerRequest", "max": 1.0},
            {"name": "ratio-only", "template": "errorRate", "compare": {"maxRatio": 2}},
        ],
    )
    assert [g.name for g in drill_gates(s)] == ["error-rate", "p95"]
    measured = drill_spec(s, 45)
    assert measured.analysis is not None
    assert measured.analysis.metrics.candidate_version == LEGACY.name  # legacy measured as the subject
    assert [(g.window, g.compare) for g in measured.analysis.gates] == [("45s", None), ("45s", None)]
    assert [g.window for g in drill_spec(s, 600).analysis.gates] == ["120s", "120s"]  # type: ignore[union-attr]


def test_legacy_is_measured_only_from_when_the_route_showed_it_all_traffic() -> None:
    p = started()
    assert drill_window(p.status, T0 + timedelta(seconds=30)) is None  # the route not seen at legacy 100 yet
    shown = confirmed_route(p, T0 + timedelta(seconds=2))
    assert drill_window(shown.status, T0 + timedelta(seconds=6)) is None  # under 5 s of legacy-only data
    assert drill_window(shown.status, T0 + timedelta(seconds=9)) == 7


# ---------------------------------------------------------------- readiness


def passed_drill(finished: str = T0_TEXT, confirm: int = 60) -> DrillRecord:
    return DrillRecord(
        result=DrillResult.PASSED,
        started_at=T0_TEXT,
        bound="15m",
        step=1,
        weights=w(25),
        route_seconds=2,
        confirm_seconds=confirm,
        finished_at=finished,
        confirmed_at=finished,
    )


def test_require_drill_holds_a_raise_above_its_weight_until_a_recent_drill_passed() -> None:
    s = make_spec(
        steps=[{"setWeight": 25}, {"setWeight": 60}],
        gates=[ERROR_RATE],
    ).model_copy(
        update={"readiness": api.Readiness.model_validate({"requireDrill": {"before": 50, "maxAge": "30d"}})}
    )
    gates = (result(Verdict.PASS),)
    status = running(step=0, weights=w(25))
    held = plan(s, status, observe(route=w(25), gates=gates, legacy=READY_LEGACY), T0 + timedelta(minutes=1))
    assert held.status.current_step == 0
    assert "a rollback drill passed within 30d is required" in held.status.message
    assert held.status.history[-1].reason == "StageRequired"
    fresh = status.model_copy(update={"passed_drill": passed_drill()})
    moved = plan(s, fresh, observe(route=w(25), gates=gates, legacy=READY_LEGACY), T0 + timedelta(days=29))
    assert moved.status.current_step == 1
    old = plan(s, fresh, observe(route=w(25), gates=gates, legacy=READY_LEGACY), T0 + timedelta(days=31))
    assert old.status.current_step == 0 and "the last passed at 2026-03-01T12:00:00Z" in old.status.message


def test_require_drill_without_a_gate_a_drill_could_use_is_a_spec_problem() -> None:
    s = make_spec(steps=STEPS, gates=[{"name": "cost", "template": "costPerRequest", "max": 1.0}])
    s = s.model_copy(update={"readiness": api.Readiness.model_validate({"requireDrill": {"before": 50}})})
    problems = validate(s)
    assert [p.field for p in problems] == ["spec.readiness.requireDrill"]


def drill_criterion(status: AgentRolloutStatus) -> api.CriterionScore:
    p = plan(spec(), status, observe(route=status.weights, legacy=READY_LEGACY), T0)
    assert p.status.readiness is not None
    harden = next(s for s in p.status.readiness.stages if s.stage is api.Stage.HARDEN)
    return next(c for c in harden.criteria if c.name is Criterion.ROLLBACK_DRILL)


def test_the_harden_scorecard_uses_the_recorded_drill() -> None:
    assert drill_criterion(at_weighted_step()).score is Score.NOT_MEASURED
    met = drill_criterion(at_weighted_step(last_drill=passed_drill(), passed_drill=passed_drill()))
    assert met.score is Score.MET and met.value == 60 and met.bound == "<= 15m"
    slow = passed_drill(confirm=1200)
    assert drill_criterion(at_weighted_step(last_drill=slow, passed_drill=slow)).score is Score.NOT_MET
    failed = passed_drill().model_copy(update={"result": DrillResult.FAILED, "confirm_seconds": None})
    assert (
        drill_criterion(at_weighted_step(last_drill=failed, passed_drill=passed_drill())).score
        is Score.NOT_MET
    )
    # A drill in progress does not hide the one that passed before it.
    running_drill = passed_drill().model_copy(update={"result": DrillResult.RUNNING})
    kept = drill_criterion(at_weighted_step(last_drill=running_drill, passed_drill=passed_drill()))
    assert kept.score is Score.MET


def test_a_drill_is_recorded_with_who_asked_for_it_and_the_record_is_consumed() -> None:
    asked = api.Requests(drill=api.VerbRequest(by="oncall-ana", groups=["sre"], reason="quarterly drill"))
    status = at_weighted_step(drill=DrillRequest(), requests=asked)
    p = plan(spec(), status, observe(route=w(25), legacy=READY_LEGACY), T0)
    started_by = p.status.history[-1]
    assert (started_by.reason, started_by.actor, started_by.actor_groups) == (
        "DrillStarted",
        "oncall-ana",
        ["sre"],
    )
    assert p.status.requests is None or p.status.requests.drill is None
    # Without the admission's record (policies not installed), the author is unverified, never the operator.
    p = plan(spec(), at_weighted_step(drill=DrillRequest()), observe(route=w(25), legacy=READY_LEGACY), T0)
    assert p.status.history[-1].actor == "unverified"
    # A refused drill names who asked too.
    refused = running(phase=Phase.PROMOTED, weights=w(100), current_step=3)
    refused = refused.model_copy(update={"drill": DrillRequest(), "requests": asked})
    p = plan(spec(), refused, observe(route=w(100), legacy=READY_LEGACY), T0)
    assert (p.status.history[-1].reason, p.status.history[-1].actor) == ("DrillRefused", "oncall-ana")
