"""The planner's rollout rules, one behaviour per test, at frozen times with no servers."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from agent_rollout.api import (
    HISTORY_LIMIT,
    AgentRolloutSpec,
    AgentRolloutStatus,
    AgentVersion,
    Condition,
    Decision,
    GateResult,
    Phase,
    Verdict,
    Weights,
)
from agent_rollout.domain import DeploymentState, EmitEvent, Observations, Plan, SetWeights, SpecProblem
from agent_rollout.planner import plan
from agent_rollout.validation import validate
from tests.specs import analysis_dict, spec_dict

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
T0_TEXT = "2026-03-01T12:00:00Z"
LEGACY = DeploymentState(
    "triage-rules", exists=True, template_hash="legacy-1", replicas=2, available_replicas=2
)
CANDIDATE = DeploymentState(
    "triage-agent", exists=True, template_hash="agent-1", replicas=2, available_replicas=2
)
ERROR_RATE = {"name": "error-rate", "template": "errorRate", "max": 0.01}


def make_spec(
    steps: list[dict[str, Any]] | None = None, gates: list[dict[str, Any]] | None = None, **analysis: Any
) -> AgentRolloutSpec:
    raw = spec_dict() if steps is None else spec_dict(steps=steps)
    if gates is not None:
        raw["analysis"] = analysis_dict(*gates, **analysis)
    return AgentRolloutSpec.model_validate(raw)


def w(candidate: int) -> Weights:
    return Weights(legacy=100 - candidate, candidate=candidate)


def observe(
    route: Weights | None = None, gates: tuple[GateResult, ...] | None = None, **kw: Any
) -> Observations:
    values: dict[str, Any] = {
        "legacy": LEGACY,
        "candidate": CANDIDATE,
        "route_weights": route or w(0),
        "generation": 1,
    }
    values.update(kw)
    return Observations(gates=gates, **values)


def acknowledged(spec: AgentRolloutSpec, obs: Observations | None = None) -> AgentRolloutStatus:
    """A new rollout's status after the operator's first reconcile, which only acknowledges it."""
    return plan(spec, AgentRolloutStatus(), obs or observe(), T0 - timedelta(seconds=1)).status


def result(verdict: Verdict, name: str = "error-rate", **kw: Any) -> GateResult:
    values: dict[str, Any] = {"value": 0.001, "bound": "<= 0.01", "samples": 400, "min_samples": 200}
    values.update(kw)
    return GateResult(name=name, verdict=verdict, **values)


def running(step: int = 0, weights: Weights | None = None, **kw: Any) -> AgentRolloutStatus:
    """A rollout that entered `step` at T0 and whose route already carries its weights."""
    values: dict[str, Any] = {
        "phase": Phase.PROGRESSING,
        "current_step": step,
        "step_started_at": T0_TEXT,
        "weights": weights or w(5),
        "candidate_revision": "agent-1",
        "observed_generation": 1,
    }
    values.update(kw)
    return AgentRolloutStatus(**values)


def condition(p: Plan, type_: str) -> Condition:
    return next(c for c in p.status.conditions if c.type == type_)


def reasons(p: Plan) -> list[str]:
    return [a.reason for a in p.actions]


# ---------------------------------------------------------------- 1. spec validation


def test_invalid_spec_fails_naming_field() -> None:
    spec = make_spec(steps=[{"setWeight": 25}, {"setWeight": 5}])
    p = plan(spec, AgentRolloutStatus(), observe(problems=tuple(validate(spec))), T0)
    assert p.status.phase is Phase.FAILED
    spec_valid = condition(p, "SpecValid")
    assert (spec_valid.status, spec_valid.reason) == ("False", "InvalidSpec")
    assert "spec.steps[1].setWeight" in spec_valid.message
    assert p.status.message.startswith("invalid spec: spec.steps[1].setWeight: setWeight 5 is lower than")
    assert p.status.weights == w(0)
    # Never started: the route is not ours, so nothing is routed.
    (event,) = p.actions
    assert isinstance(event, EmitEvent) and (event.type, event.reason) == ("Warning", "InvalidSpec")
    assert [d.reason for d in p.status.history] == ["InvalidSpec"]


def test_invalid_spec_mid_rollout_sends_traffic_to_legacy() -> None:
    spec = make_spec(steps=[{"setWeight": 25}, {"setWeight": 5}])
    p = plan(spec, running(0, w(25)), observe(route=w(25), problems=tuple(validate(spec))), T0)
    assert p.status.phase is Phase.FAILED
    assert p.status.weights == w(0)
    assert p.actions[0] == SetWeights(weights=w(0), reason="InvalidSpec")


def test_unparseable_spec_fails_with_the_shells_problem() -> None:
    problem = SpecProblem("spec.steps[0].setWeight", "Input should be less than or equal to 100")
    p = plan(None, running(1, w(25)), Observations(problems=(problem,), generation=2), T0)
    assert p.status.phase is Phase.FAILED
    assert p.status.observed_generation == 2
    assert p.status.weights == w(0)
    assert (
        condition(p, "SpecValid").message
        == "spec.steps[0].setWeight: Input should be less than or equal to 100"
    )


def test_fixed_spec_restarts_from_first_step() -> None:
    failed = running(2, w(0), phase=Phase.FAILED, gate_failures={"error-rate": 1})
    p = plan(make_spec(), failed, observe(route=w(0), generation=2), T0)
    assert (p.status.phase, p.status.current_step, p.status.weights) == (Phase.PROGRESSING, 0, w(5))
    assert p.status.gate_failures == {}
    assert [d.reason for d in p.status.history] == ["SpecValid", "Started"]
    assert condition(p, "SpecValid").status == "True"


# ---------------------------------------------------------------- 2-3. start and weights


def test_a_new_rollout_is_acknowledged_first_and_nothing_else_happens() -> None:
    """One status write says the rollout was seen and its spec is valid; no traffic moves, nothing is
    measured; the next reconcile follows at once."""
    p = plan(make_spec(), AgentRolloutStatus(), observe(), T0)
    assert (p.status.phase, p.status.current_step, p.status.weights, p.actions) == (
        Phase.PENDING,
        0,
        w(0),
        (),
    )
    assert p.status.message == "accepted: the spec is valid; step 1 starts next"
    valid = condition(p, "SpecValid")
    assert (valid.status, valid.reason) == ("True", "Valid")
    assert p.requeue_after == 0.0
    assert p.status.history == []
    # The small write every new rollout waits for: the readiness card comes with the next one.
    assert p.status.readiness is None


def test_first_valid_tick_after_the_acknowledgement_enters_step_zero() -> None:
    p = plan(make_spec(), acknowledged(make_spec()), observe(), T0)
    s = p.status
    assert s.readiness is not None and s.readiness.stages  # the card the acknowledgement left out
    assert (s.phase, s.current_step, s.step_started_at, s.candidate_revision) == (
        Phase.PROGRESSING,
        0,
        T0_TEXT,
        "agent-1",
    )
    assert s.weights == w(5)
    assert p.actions == (
        SetWeights(weights=w(5), reason="Started"),
        EmitEvent(
            type="Normal",
            reason="Started",
            message="started rolling out triage-agent revision agent-1: step 1/3 (setWeight 5)",
        ),
    )
    assert s.history == [
        Decision(
            time=T0_TEXT,
            reason="Started",
            message="started rolling out triage-agent revision agent-1: step 1/3 (setWeight 5)",
            step=0,
            weights=w(5),
            actor="operator",
            # The test's candidate has no template: every version part is unknown, never guessed.
            agent_version=AgentVersion(revision="agent-1"),
        )
    ]


def test_start_waits_for_an_observable_route() -> None:
    p = plan(
        make_spec(),
        acknowledged(make_spec()),
        observe(route_weights=None, route_error="HTTPRoute triage not found"),
        T0,
    )
    assert p.status.phase is Phase.PENDING
    assert p.actions == ()
    routed = condition(p, "TrafficRouted")
    assert (routed.status, routed.reason, routed.message) == (
        "False",
        "RouteNotFound",
        "HTTPRoute triage not found",
    )
    assert p.status.message == "waiting for the route: HTTPRoute triage not found"


def test_first_pause_step_keeps_all_traffic_on_legacy() -> None:
    spec = make_spec(steps=[{"pause": {"duration": "1h"}}, {"setWeight": 10}])
    p = plan(spec, acknowledged(spec), observe(), T0)
    assert (p.status.phase, p.status.weights) == (Phase.PROGRESSING, w(0))
    assert reasons(p) == ["Started"]  # the route already shows legacy 100: nothing to route


def test_route_drift_is_routed_again_and_holds_the_step() -> None:
    p = plan(make_spec(), running(0, w(5)), observe(route=w(0)), T0)
    assert p.status.current_step == 0
    assert p.actions == (SetWeights(weights=w(5), reason="Drift"),)
    assert p.status.message == "step 1/3 (setWeight 5): waiting for the route to show legacy 95 / candidate 5"
    # The condition tells the route as this tick's write leaves it (a refused write says otherwise).
    assert condition(p, "TrafficRouted").reason == "WeightsApplied"


# ---------------------------------------------------------------- 4. step completion


def test_set_weight_step_completes_when_route_shows_weights_and_gates_pass() -> None:
    passed = result(Verdict.PASS)
    p = plan(make_spec(gates=[ERROR_RATE]), running(0, w(5)), observe(route=w(5), gates=(passed,)), T0)
    s = p.status
    assert (s.phase, s.current_step, s.weights, s.step_started_at) == (Phase.PROGRESSING, 1, w(25), T0_TEXT)
    assert s.last_analysis == [] and s.last_analysis_at is None  # the next step is judged on its own evidence
    assert reasons(p) == ["StepCompleted", "StepCompleted"]
    assert p.actions[0] == SetWeights(weights=w(25), reason="StepCompleted")
    assert s.history[-1].evidence == [passed]
    assert s.history[-1].message == "step 1/3 completed; entering step 2/3 (setWeight 25)"


def test_step_without_gates_completes_on_route_alone_one_step_per_tick() -> None:
    spec = make_spec(steps=[{"setWeight": 10}, {"setWeight": 10}, {"setWeight": 10}])
    p = plan(spec, running(0, w(10)), observe(route=w(10)), T0)
    assert (p.status.phase, p.status.current_step) == (Phase.PROGRESSING, 1)  # not 2, not Promoted


def test_pause_step_waits_for_duration_then_requests() -> None:
    spec = make_spec(
        steps=[{"setWeight": 5}, {"pause": {"duration": "1h", "minRequests": 100}}, {"setWeight": 50}]
    )
    status = running(1, w(5))
    early = plan(spec, status, observe(route=w(5), candidate_requests=500), T0 + timedelta(minutes=20))
    assert early.status.current_step == 1
    assert early.requeue_after == 40 * 60
    assert early.status.message == "step 2/3 (pause 1h, 100 requests): pausing until 2026-03-01T13:00:00Z"
    few = plan(spec, status, observe(route=w(5), candidate_requests=37), T0 + timedelta(hours=1))
    assert few.status.current_step == 1
    assert few.status.message == "step 2/3 (pause 1h, 100 requests): waiting for candidate requests 37/100"
    done = plan(spec, status, observe(route=w(5), candidate_requests=100), T0 + timedelta(hours=1))
    assert (done.status.current_step, done.status.weights) == (2, w(50))


def test_pause_entered_mid_second_never_ends_early() -> None:
    # status times have whole seconds: the start is rounded up, so 15s are 15s at least, never 14.4s.
    spec = make_spec(steps=[{"setWeight": 5}, {"pause": {"duration": "15s"}}, {"setWeight": 50}])
    entered = T0 + timedelta(seconds=0.6)
    p = plan(spec, running(0, w(5)), observe(route=w(5)), entered)
    assert (p.status.current_step, p.status.step_started_at) == (1, "2026-03-01T12:00:01Z")
    assert p.requeue_after is not None and p.requeue_after >= 15
    early = plan(spec, p.status, observe(route=w(5)), entered + timedelta(seconds=14.9))
    assert early.status.current_step == 1, "the 15s pause ended after 14.9s"
    done = plan(spec, p.status, observe(route=w(5)), entered + timedelta(seconds=15.4))
    assert done.status.current_step == 2


def test_approval_step_pauses_until_a_human_promotes() -> None:
    spec = make_spec(steps=[{"setWeight": 5}, {"pause": {}}, {"setWeight": 50}])
    entered = plan(spec, running(0, w(5)), observe(route=w(5)), T0)
    assert (entered.status.phase, entered.status.current_step) == (Phase.PAUSED, 1)
    waiting = plan(spec, entered.status, observe(route=w(5)), T0 + timedelta(days=3))
    assert waiting.status == entered.status and waiting.actions == ()
    approved = waiting.status.model_copy(update={"promote": True})
    p = plan(spec, approved, observe(route=w(5)), T0 + timedelta(days=3))
    assert (p.status.phase, p.status.current_step, p.status.weights, p.status.promote) == (
        Phase.PROGRESSING,
        2,
        w(50),
        False,
    )
    assert p.status.history[-1].reason == "ManualPromotion"


def test_completing_the_last_step_promotes_the_candidate() -> None:
    p = plan(make_spec(), running(2, w(50)), observe(route=w(50)), T0)
    s = p.status
    assert (s.phase, s.current_step, s.weights) == (Phase.PROMOTED, 3, w(100))
    assert p.actions[0] == SetWeights(weights=w(100), reason="Promoted")
    completed = condition(p, "Completed")
    assert (completed.status, completed.reason) == ("True", "Promoted")
    assert s.message == "promoted: candidate triage-agent serves all traffic"


# ---------------------------------------------------------------- 5. gates


def test_inconclusive_gate_holds_step() -> None:
    few = result(Verdict.INCONCLUSIVE, samples=37, value=None)
    p = plan(make_spec(gates=[ERROR_RATE]), running(0, w(5)), observe(route=w(5), gates=(few,)), T0)
    assert (p.status.phase, p.status.current_step, p.status.weights) == (Phase.PROGRESSING, 0, w(5))
    assert p.actions == ()
    assert p.status.last_analysis == [few] and p.status.last_analysis_at == T0_TEXT
    assert p.status.message == "step 1/3 (setWeight 5): waiting for samples 37/200 on gate error-rate"


def test_inconclusive_gate_pauses_for_a_human_when_policy_is_pause() -> None:
    spec = make_spec(gates=[ERROR_RATE], onInconclusive="pause")
    few = result(Verdict.INCONCLUSIVE, samples=37)
    p = plan(spec, running(0, w(5)), observe(route=w(5), gates=(few,)), T0)
    assert (p.status.phase, p.status.current_step) == (Phase.PAUSED, 0)
    assert p.actions[0].reason == "Inconclusive" and p.status.history[-1].evidence == [few]
    # Passing later does not resume by itself: the policy asked for a human.
    later = plan(
        spec, p.status, observe(route=w(5), gates=(result(Verdict.PASS),)), T0 + timedelta(minutes=5)
    )
    assert later.status.phase is Phase.PAUSED
    promoted = plan(spec, later.status.model_copy(update={"promote": True}), observe(route=w(5)), T0)
    assert (promoted.status.phase, promoted.status.current_step) == (Phase.PROGRESSING, 1)


def test_failed_gate_sends_all_traffic_to_legacy() -> None:
    failed = result(Verdict.FAIL, value=0.031, query='sum(rate(errors{version="triage-agent"}[2m]))')
    p = plan(make_spec(gates=[ERROR_RATE]), running(1, w(25)), observe(route=w(25), gates=(failed,)), T0)
    s = p.status
    assert (s.phase, s.weights, s.gate_failures) == (Phase.ROLLED_BACK, w(0), {"error-rate": 1})
    assert p.actions[0] == SetWeights(weights=w(0), reason="GateFailed")
    event = p.actions[1]
    assert isinstance(event, EmitEvent) and (event.type, event.reason) == ("Warning", "GateFailed")
    for evidence in (
        "gate error-rate Fail",
        "value 0.031",
        "bound <= 0.01",
        "samples 400/200",
        "errors{version",
    ):
        assert evidence in event.message
    assert s.history[-1].reason == "GateFailed" and s.history[-1].evidence == [failed]
    assert s.message.startswith("rolled back to legacy: gate error-rate failed 1 time (limit 0) at step 2/3")


def test_gate_failures_up_to_the_limit_hold_the_step() -> None:
    spec = make_spec(gates=[{**ERROR_RATE, "failureLimit": 1}])
    failed = (result(Verdict.FAIL, value=0.05),)
    first = plan(spec, running(0, w(5)), observe(route=w(5), gates=failed), T0)
    assert (first.status.phase, first.status.current_step, first.status.gate_failures) == (
        Phase.PROGRESSING,
        0,
        {"error-rate": 1},
    )
    second = plan(spec, first.status, observe(route=w(5), gates=failed), T0 + timedelta(seconds=30))
    assert second.status.phase is Phase.ROLLED_BACK


def test_dry_run_gate_is_recorded_but_never_acts() -> None:
    spec = make_spec(
        gates=[ERROR_RATE, {"name": "cost", "template": "costPerRequest", "max": 0.03, "dryRun": True}]
    )
    gates = (result(Verdict.PASS), result(Verdict.FAIL, name="cost", value=0.09, dry_run=True))
    p = plan(spec, running(0, w(5)), observe(route=w(5), gates=gates), T0)
    assert (p.status.phase, p.status.current_step, p.status.gate_failures) == (Phase.PROGRESSING, 1, {})
    assert p.status.history[-1].evidence == list(gates)


# ---------------------------------------------------------------- 6. Prometheus unavailable


def test_prometheus_unreachable_holds_step() -> None:
    status = running(0, w(5), last_analysis=[result(Verdict.PASS)], last_analysis_at=T0_TEXT)
    p = plan(
        make_spec(gates=[ERROR_RATE]), status, observe(route=w(5), prometheus_error="connection refused"), T0
    )
    assert (p.status.phase, p.status.current_step, p.status.consecutive_errors) == (Phase.PROGRESSING, 0, 1)
    healthy = condition(p, "AnalysisHealthy")
    assert (healthy.status, healthy.reason) == ("Unknown", "PrometheusUnavailable")
    assert p.actions == ()


def test_a_pause_over_but_held_by_prometheus_is_tried_again_soon_not_an_interval_later() -> None:
    """The pause's end is a decision falling due: held only because Prometheus could not be read, it is
    due again in 5 s, then 10, 20, at most an interval (30s here), not left to the next interval run,
    which at 10,000 rollouts queued minutes behind the others (20 pauses ended 132-136 s late)."""
    spec = make_spec(
        steps=[{"setWeight": 5}, {"pause": {"duration": "60s"}}, {"setWeight": 50}], gates=[ERROR_RATE]
    )
    passed = dict(last_analysis=[result(Verdict.PASS)], last_analysis_at=T0_TEXT)
    status = running(1, w(5), **passed)
    down = observe(route=w(5), prometheus_error="timeout")
    over = T0 + timedelta(seconds=61)
    retries = []
    for _ in range(5):
        p = plan(spec, status, down, over)
        assert p.status.current_step == 1  # never promoted on missing data
        retries.append(p.requeue_after)
        status = p.status
    assert retries == [5.0, 10.0, 20.0, 30.0, 30.0]
    assert plan(spec, running(1, w(5), **passed), down, T0 + timedelta(seconds=20)).requeue_after == 40
    back = plan(spec, status, observe(route=w(5), gates=(result(Verdict.PASS),)), over)
    assert back.status.current_step == 2


def test_prometheus_errors_beyond_the_limit_roll_back_when_policy_is_rollback() -> None:
    spec = make_spec(gates=[ERROR_RATE], consecutiveErrorLimit=2, onPrometheusError="rollback")
    down = observe(route=w(5), prometheus_error="timeout")
    at_limit = plan(spec, running(0, w(5), consecutive_errors=1), down, T0)
    assert (at_limit.status.phase, at_limit.status.consecutive_errors) == (Phase.PROGRESSING, 2)
    beyond = plan(spec, at_limit.status, down, T0)
    assert (beyond.status.phase, beyond.status.weights) == (Phase.ROLLED_BACK, w(0))
    assert beyond.status.history[-1].reason == "PrometheusUnavailable"


def test_prometheus_errors_only_hold_when_policy_is_hold() -> None:
    spec = make_spec(gates=[ERROR_RATE], consecutiveErrorLimit=0)
    p = plan(
        spec, running(0, w(5), consecutive_errors=5), observe(route=w(5), prometheus_error="timeout"), T0
    )
    assert (p.status.phase, p.status.consecutive_errors) == (Phase.PROGRESSING, 6)


def test_a_successful_analysis_resets_consecutive_errors() -> None:
    gates = (result(Verdict.INCONCLUSIVE, samples=3),)
    p = plan(
        make_spec(gates=[ERROR_RATE]),
        running(0, w(5), consecutive_errors=2),
        observe(route=w(5), gates=gates),
        T0,
    )
    assert p.status.consecutive_errors == 0
    assert condition(p, "AnalysisHealthy").status == "True"


# ---------------------------------------------------------------- 7-8. rollback, abort, new candidate


def test_abort_rolls_back() -> None:
    p = plan(make_spec(), running(1, w(25), abort=True), observe(route=w(25)), T0)
    assert (p.status.phase, p.status.weights) == (Phase.ROLLED_BACK, w(0))
    assert p.actions == (
        SetWeights(weights=w(0), reason="Aborted"),
        EmitEvent(
            type="Warning",
            reason="Aborted",
            message="aborted by a human (status.abort): all traffic to legacy",
        ),
    )


def test_abort_after_promotion_returns_traffic_to_legacy() -> None:
    promoted = running(3, w(100), phase=Phase.PROMOTED, abort=True)
    p = plan(make_spec(), promoted, observe(route=w(100)), T0)
    assert (p.status.phase, p.status.weights) == (Phase.ROLLED_BACK, w(0))


def test_rolled_back_stays_on_legacy_until_a_new_candidate_revision() -> None:
    rolled_back = running(1, w(0), phase=Phase.ROLLED_BACK, abort=True)
    for status in (rolled_back, rolled_back.model_copy(update={"promote": True})):
        p = plan(make_spec(), status, observe(route=w(0)), T0 + timedelta(days=1))
        assert (p.status.phase, p.status.weights, p.actions) == (Phase.ROLLED_BACK, w(0), ())
    p = plan(
        make_spec(),
        rolled_back,
        observe(route=w(0), candidate=DeploymentState("triage-agent", True, "agent-2", 2, 2)),
        T0,
    )
    assert (p.status.phase, p.status.current_step, p.status.weights) == (Phase.PROGRESSING, 0, w(5))
    assert (p.status.abort, p.status.candidate_revision) == (False, "agent-2")


def test_retry_restarts_a_rolled_back_rollout_from_step_one_with_the_same_candidate() -> None:
    rolled_back = running(1, w(0), phase=Phase.ROLLED_BACK, gate_failures={"error-rate": 1}, retry=True)
    p = plan(make_spec(gates=[ERROR_RATE]), rolled_back, observe(route=w(0)), T0)
    s = p.status
    assert (s.phase, s.current_step, s.weights) == (Phase.PROGRESSING, 0, w(5))
    assert (s.retry, s.gate_failures, s.candidate_revision) == (False, {}, "agent-1")
    assert s.history[-1].reason == "Retried"
    assert SetWeights(weights=w(5), reason="Retried") in p.actions


def test_retry_outside_a_rollback_is_consumed_without_effect() -> None:
    progressing = running(1, w(25))
    without = plan(make_spec(), progressing, observe(route=w(25)), T0)
    asked = plan(make_spec(), progressing.model_copy(update={"retry": True}), observe(route=w(25)), T0)
    assert asked.status.retry is False
    assert (asked.status, asked.actions) == (without.status, without.actions)


def test_new_candidate_restarts_from_first_step() -> None:
    status = running(2, w(50), gate_failures={"error-rate": 1}, consecutive_errors=2, promote=True)
    new = DeploymentState(
        "triage-agent", exists=True, template_hash="agent-2", replicas=2, available_replicas=2
    )
    p = plan(make_spec(gates=[ERROR_RATE]), status, observe(route=w(50), candidate=new), T0)
    s = p.status
    assert (s.phase, s.current_step, s.weights, s.candidate_revision) == (
        Phase.PROGRESSING,
        0,
        w(5),
        "agent-2",
    )
    assert (s.gate_failures, s.consecutive_errors, s.promote, s.abort) == ({}, 0, False, False)
    assert p.actions[0] == SetWeights(weights=w(5), reason="NewCandidate")
    assert (
        s.history[-1].message
        == "new candidate revision agent-2 (was agent-1), restarting: step 1/3 (setWeight 5)"
    )


# ---------------------------------------------------------------- 9. missing targets and route


def test_missing_candidate_sends_traffic_to_legacy_and_holds() -> None:
    gone = DeploymentState("triage-agent", exists=False)
    p = plan(make_spec(), running(1, w(25)), observe(route=w(25), candidate=gone), T0)
    s = p.status
    assert (s.phase, s.current_step, s.weights) == (Phase.PROGRESSING, 1, w(0))
    assert p.actions[0] == SetWeights(weights=w(0), reason="CandidateNotFound")
    targets = condition(p, "TargetsReady")
    assert (targets.status, targets.reason) == ("False", "DeploymentNotFound")
    assert s.history[-1].reason == "CandidateNotFound"
    back = plan(make_spec(), s, observe(route=w(0)), T0 + timedelta(minutes=1))
    assert (back.status.current_step, back.status.weights) == (1, w(25))  # same revision: step resumes


def test_abort_with_legacy_missing_is_recorded_but_routes_nowhere_until_legacy_returns() -> None:
    gone = DeploymentState("triage-rules", exists=False)
    status = running(1, w(25), abort=True)
    p = plan(make_spec(), status, observe(route=w(25), legacy=gone), T0)
    assert (p.status.phase, p.status.weights) == (Phase.ROLLED_BACK, w(25))
    assert not [a for a in p.actions if isinstance(a, SetWeights)]
    assert [d.reason for d in p.status.history] == ["LegacyNotFound", "Aborted"]
    traffic = condition(p, "TrafficRouted")
    assert (traffic.status, traffic.reason) == ("False", "TargetUnavailable")
    assert "legacy Deployment triage-rules is missing" in traffic.message
    back = plan(make_spec(), p.status, observe(route=w(25)), T0 + timedelta(seconds=5))
    assert back.status.weights == w(0)
    assert SetWeights(weights=w(0), reason="Aborted") not in back.actions  # a reconcile, not a new decision
    assert next(a for a in back.actions if isinstance(a, SetWeights)).weights == w(0)


def test_a_rollback_with_legacy_missing_never_reasserts_weights_towards_the_rolled_back_candidate() -> None:
    """Property counter-example (hypothesis): legacy gone, someone moved the route to legacy, a gate
    fails. Re-asserting status.weights as drift would hand the rolled-back candidate all traffic again."""
    spec = make_spec(steps=[{"setWeight": 100}], gates=[ERROR_RATE])
    started = plan(spec, acknowledged(spec), observe(route=w(0)), T0)
    assert (started.status.phase, started.status.weights) == (Phase.PROGRESSING, w(100))
    gone = DeploymentState("triage-rules", exists=False)
    failed = (result(Verdict.FAIL, value=0.05),)
    rolled_back = plan(
        spec, started.status, observe(route=w(0), legacy=gone, gates=failed), T0 + timedelta(seconds=30)
    )
    s = rolled_back.status
    assert s.phase is Phase.ROLLED_BACK
    assert [a for a in rolled_back.actions if isinstance(a, SetWeights)] == []
    assert s.weights == w(0)  # what the route shows: the candidate's share only goes down
    assert [d.reason for d in s.history[-3:]] == ["LegacyNotFound", "GateFailed", "WeightsReconciled"]
    # Legacy returns: nothing to route, the candidate stays out.
    back = plan(spec, s, observe(route=w(0), gates=failed), T0 + timedelta(minutes=1))
    assert (back.status.phase, back.status.weights) == (Phase.ROLLED_BACK, w(0))
    assert back.actions == ()


def test_a_candidate_restored_and_rolled_back_in_one_tick_with_legacy_missing_keeps_no_traffic() -> None:
    """The candidate serves again (its step weight is restored) and a gate fails in the same tick, with
    legacy gone: the rollback cannot route to legacy, and the restore must not stand either."""
    spec = make_spec(steps=[{"setWeight": 100}], gates=[ERROR_RATE])
    held = running(0, w(0))  # the candidate had no available replica: all traffic went to legacy
    gone = DeploymentState("triage-rules", exists=False)
    failed = (result(Verdict.FAIL, value=0.05),)
    p = plan(spec, held, observe(route=w(0), legacy=gone, gates=failed), T0)
    assert (p.status.phase, p.status.weights) == (Phase.ROLLED_BACK, w(0))
    assert all(a.weights.candidate == 0 for a in p.actions if isinstance(a, SetWeights)), p.actions


def test_a_failed_spec_with_legacy_missing_never_reasserts_weights_towards_the_candidate() -> None:
    gone = DeploymentState("triage-rules", exists=False)
    problem = SpecProblem("spec.steps[0].setWeight", "Input should be less than or equal to 100")
    failed = plan(None, running(0, w(100)), observe(route=w(100), legacy=gone, problems=(problem,)), T0)
    assert (failed.status.phase, failed.status.weights) == (Phase.FAILED, w(100))  # held: legacy is gone
    drifted = plan(None, failed.status, observe(route=w(0), legacy=gone, problems=(problem,)), T0)
    assert all(a.weights.candidate == 0 for a in drifted.actions if isinstance(a, SetWeights)), (
        drifted.actions
    )
    assert drifted.status.weights == w(0)


def test_a_capacity_safe_rollback_keeps_a_route_someone_moved_to_legacy() -> None:
    """Legacy is short of replicas, so the rollback moves back only half; someone (a GitOps sync, a
    human) then sends everything to legacy. Re-asserting 50/50 would give the rolled-back candidate
    traffic again: the route's legacy-only is kept, and the wait ends as it would have."""
    short = DeploymentState(
        "triage-rules", True, "legacy-1", replicas=5, available_replicas=5, ready_replicas=5
    )
    spec = make_spec(steps=[{"setWeight": 70}], gates=[ERROR_RATE])
    at_70 = running(0, w(70), legacy_replicas_at_start=10)
    failed = (result(Verdict.FAIL, value=0.3),)
    p = plan(spec, at_70, observe(route=w(70), legacy=short, gates=failed), T0)
    assert (p.status.phase, p.status.weights) == (Phase.ROLLED_BACK, w(50))
    moved = plan(spec, p.status, observe(route=w(0), legacy=short), T0 + timedelta(seconds=10))
    assert moved.status.weights == w(0)
    assert not [a for a in moved.actions if isinstance(a, SetWeights)]  # the route already shows it
    assert moved.status.history[-1].reason == "WeightsReconciled"


def test_route_error_holds_the_step() -> None:
    p = plan(
        make_spec(),
        running(0, w(5)),
        observe(route_weights=None, route_error="backendRef triage-agent missing"),
        T0,
    )
    assert (p.status.current_step, p.actions) == (0, ())
    assert condition(p, "TrafficRouted").reason == "RouteNotFound"


# ---------------------------------------------------------------- 10-11. status hygiene


def test_steady_state_changes_nothing() -> None:
    spec = make_spec(gates=[ERROR_RATE])
    obs = observe(route=w(5), gates=(result(Verdict.INCONCLUSIVE, samples=10),))
    first = plan(spec, running(0, w(5)), obs, T0)
    again = plan(spec, first.status, obs, T0 + timedelta(minutes=10))
    assert again.status == first.status
    assert again.actions == ()


def test_last_analysis_is_rewritten_on_a_verdict_change_or_when_stale_not_on_every_new_value() -> None:
    spec = make_spec(steps=[{"setWeight": 5}, {"pause": {"duration": "1h"}}], gates=[ERROR_RATE])
    status = running(
        1, w(5), last_analysis=[result(Verdict.INCONCLUSIVE, samples=10)], last_analysis_at=T0_TEXT
    )

    def at(minutes: float, samples: int, verdict: Verdict = Verdict.INCONCLUSIVE) -> AgentRolloutStatus:
        obs = observe(route=w(5), gates=(result(verdict, samples=samples),))
        return plan(spec, status, obs, T0 + timedelta(minutes=minutes)).status

    assert at(1, 20).last_analysis_at == T0_TEXT  # a new value, same verdict: no status write for it
    assert at(1, 20).last_analysis[0].samples == 10
    assert at(1, 400, Verdict.PASS).last_analysis_at == "2026-03-01T12:01:00Z"  # a verdict changed
    assert at(9, 20).last_analysis_at == T0_TEXT  # within the 10 minutes values may lag
    assert at(10, 20).last_analysis_at == "2026-03-01T12:10:00Z"  # refreshed after 10 minutes
    assert at(10, 20).last_analysis[0].samples == 20


def test_condition_transition_time_moves_only_when_status_flips() -> None:
    spec = make_spec(gates=[ERROR_RATE])  # no evaluation yet: the step holds, so weights stay put
    first = plan(spec, running(0, w(5)), observe(route_weights=None, route_error="route not found"), T0)
    assert condition(first, "TrafficRouted").last_transition_time == T0_TEXT
    later = T0 + timedelta(minutes=5)
    # Another error changes the message, not the status: the transition time stays.
    still = plan(spec, first.status, observe(route_weights=None, route_error="no backendRef"), later)
    assert condition(still, "TrafficRouted").last_transition_time == T0_TEXT
    flipped = plan(spec, first.status, observe(route=w(5)), later)
    assert condition(flipped, "TrafficRouted").status == "True"
    assert condition(flipped, "TrafficRouted").last_transition_time == "2026-03-01T12:05:00Z"


def test_history_keeps_only_the_newest_decisions() -> None:
    old = [
        Decision(time=T0_TEXT, reason="StepCompleted", message=str(i), step=0, weights=w(5))
        for i in range(HISTORY_LIMIT)
    ]
    p = plan(make_spec(), running(0, w(5), history=old), observe(route=w(5)), T0)
    assert len(p.status.history) == HISTORY_LIMIT
    assert p.status.history[0].message == "1" and p.status.history[-1].reason == "StepCompleted"


def test_plan_does_not_mutate_its_inputs() -> None:
    status = running(0, w(5), gate_failures={"error-rate": 0})
    before = status.model_dump()
    plan(make_spec(gates=[ERROR_RATE]), status, observe(route=w(5), gates=(result(Verdict.FAIL),)), T0)
    assert status.model_dump() == before


def test_observed_generation_follows_the_observation() -> None:
    p = plan(make_spec(), running(0, w(5)), observe(route=w(5), generation=7), T0)
    assert p.status.observed_generation == 7
    assert {c.observed_generation for c in p.status.conditions} == {7}


def test_approval_as_first_step_starts_paused() -> None:
    spec = make_spec(steps=[{"pause": {}}, {"setWeight": 10}])
    p = plan(spec, acknowledged(spec), observe(), T0)
    assert (p.status.phase, p.status.current_step, p.status.weights) == (Phase.PAUSED, 0, w(0))
    assert (
        p.status.message
        == "step 1/2 (approval): waiting for approval: set status.promote (kubectl agentrollout promote)"
    )


def test_abort_before_start_rolls_back_without_starting() -> None:
    p = plan(make_spec(), AgentRolloutStatus(abort=True), observe(route=w(30)), T0)
    assert (p.status.phase, p.status.weights, p.status.candidate_revision) == (
        Phase.ROLLED_BACK,
        w(0),
        "agent-1",
    )
    # Status weights were legacy-only all along; the route, now ours, is brought back to them.
    assert p.actions[0] == SetWeights(weights=w(0), reason="Drift")
    assert reasons(p) == ["Drift", "Aborted"]
