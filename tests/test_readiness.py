"""The readiness scorecard, step milestones and required stages, as planner rules at frozen times."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from agent_rollout.api import AgentRolloutSpec, AgentRolloutStatus, GateResult, Phase, Score, Stage, Verdict
from agent_rollout.cli import readiness_line
from agent_rollout.domain import BaselineObservation, EmitEvent, MilestoneObservation, Observations, Plan
from agent_rollout.planner import plan
from agent_rollout.readiness import BASELINE_SIGNALS
from agent_rollout.validation import validate
from tests.specs import analysis_dict, spec_dict
from tests.test_planner import (
    CANDIDATE,
    ERROR_RATE,
    LEGACY,
    T0,
    T0_TEXT,
    condition,
    observe,
    result,
    running,
    w,
)

LATENCY = {"name": "p95", "template": "latencyQuantile", "max": 8}


def make_spec(steps: list[dict[str, Any]], readiness: dict[str, Any] | None = None) -> AgentRolloutSpec:
    raw = spec_dict(steps=steps, analysis=analysis_dict(ERROR_RATE, LATENCY))
    if readiness is not None:
        raw["readiness"] = readiness
    return AgentRolloutSpec.model_validate(raw)


PASSING = (result(Verdict.PASS), result(Verdict.PASS, "p95", value=2.0, bound="<= 8"))
HARDEN_BEFORE_25 = {"requireStages": [{"stage": "Harden", "before": 25}]}
# Deploy can be Met today: its other criterion (an answered alert) has no step to measure it yet.
DEPLOY_BEFORE_25 = {
    "requireStages": [{"stage": "Deploy", "before": 25}],
    "criteria": {"waive": ["deploy/alert-answered"]},
}


def milestone_seen(step: int = 0, requests: int = 120, gates: tuple[GateResult, ...] = PASSING) -> Any:
    return MilestoneObservation(step=step, requests=requests, window_seconds=60, gates=gates)


def stage(p: Plan, name: Stage) -> Any:
    assert p.status.readiness is not None
    return next(s for s in p.status.readiness.stages if s.stage is name)


def events(p: Plan) -> list[EmitEvent]:
    return [a for a in p.actions if isinstance(a, EmitEvent)]


# ---------------------------------------------------------------- the scorecard


def test_scorecard_has_five_stages_not_measured_without_evidence() -> None:
    spec = make_spec([{"setWeight": 10}, {"setWeight": 50}])
    p = plan(spec, running(0, w(10)), observe(route=w(10), gates=PASSING), T0 + timedelta(seconds=30))
    card = p.status.readiness
    assert card is not None
    assert [s.stage for s in card.stages] == list(Stage)
    assert all(s.score is Score.NOT_MEASURED for s in card.stages)
    assert all(
        c.score is Score.NOT_MEASURED and c.message and c.at is None for s in card.stages for c in s.criteria
    )
    assert card.stage is Stage.PILOT
    assert card.next.startswith("pilot/accuracy NotMeasured (accuracy >= 0.95 on >= 200 inputs)")
    status = {"readiness": card.model_dump(mode="json", by_alias=True)}
    assert readiness_line(status).startswith("stage=Pilot  next: pilot/accuracy NotMeasured")


def test_waived_criteria_leave_their_stage_and_move_the_current_stage() -> None:
    waive = ["pilot/accuracy", "validate/edge-cases"]
    spec = make_spec([{"setWeight": 10}], {"criteria": {"waive": waive, "minAccuracy": 0.9}})
    p = plan(spec, running(0, w(10)), observe(route=w(10)), T0)
    assert p.status.readiness is not None
    # A stage with every criterion waived is never Met by default: it is simply not measured.
    assert stage(p, Stage.PILOT).score is Score.NOT_MEASURED
    assert [c.value for c in stage(p, Stage.PILOT).waived] == ["pilot/accuracy"]
    assert stage(p, Stage.PILOT).criteria == []


# ---------------------------------------------------------------- milestones


def test_a_milestone_holds_its_step_until_the_first_n_transactions_are_recorded() -> None:
    spec = make_spec([{"setWeight": 10, "milestone": {"transactions": 100}}, {"setWeight": 50}])
    p = plan(spec, running(0, w(10)), observe(route=w(10), gates=PASSING, candidate_requests=40), T0)
    assert p.status.current_step == 0
    assert p.status.message.endswith("waiting for milestone: candidate requests 40/100")
    criterion = stage(p, Stage.DEPLOY).criteria[0]
    assert (criterion.name.value, criterion.score) == ("deploy/first-transactions", Score.NOT_MEASURED)


def test_a_milestone_records_the_gates_over_its_window_as_deploy_evidence() -> None:
    spec = make_spec([{"setWeight": 10, "milestone": {"transactions": 100}}, {"setWeight": 50}])
    now = T0 + timedelta(seconds=60)
    obs = observe(route=w(10), gates=PASSING, candidate_requests=120, milestone=milestone_seen())
    p = plan(spec, running(0, w(10)), obs, now)
    assert p.status.readiness is not None
    (record,) = p.status.readiness.milestones
    assert (record.step, record.transactions, record.requests, record.score) == (0, 100, 120, Score.MET)
    assert (record.window_start, record.window_seconds, record.error_rate) == (T0_TEXT, 60, 0.001)
    assert [g.name for g in record.gates] == ["error-rate", "p95"]
    criterion = stage(p, Stage.DEPLOY).criteria[0]
    assert criterion.score is Score.MET
    assert (criterion.value, criterion.bound, criterion.samples) == (0.001, "<= 0.01", 120)
    assert criterion.at == "2026-03-01T12:01:00Z" and criterion.source.startswith("milestone of step 1")
    # Deploy stays NotMeasured: an answered alert is not measured yet, never guessed.
    assert stage(p, Stage.DEPLOY).score is Score.NOT_MEASURED
    assert [d.reason for d in p.status.history][-2:] == ["MilestoneRecorded", "StepCompleted"]
    assert p.status.current_step == 1
    assert any(e.reason == "MilestoneRecorded" and "gate p95 Pass" in e.message for e in events(p))


def test_a_gate_failing_over_the_milestone_window_makes_deploy_not_met() -> None:
    spec = make_spec([{"setWeight": 10, "milestone": {"transactions": 100}}, {"setWeight": 50}])
    bad = (result(Verdict.FAIL, value=0.05), PASSING[1])
    obs = observe(route=w(10), gates=PASSING, candidate_requests=120, milestone=milestone_seen(gates=bad))
    p = plan(spec, running(0, w(10)), obs, T0 + timedelta(seconds=60))
    assert stage(p, Stage.DEPLOY).criteria[0].score is Score.NOT_MET
    assert stage(p, Stage.DEPLOY).score is Score.NOT_MET
    assert p.status.readiness is not None and p.status.readiness.stage is Stage.PILOT


def test_a_milestone_seen_for_another_step_or_short_of_n_is_not_recorded() -> None:
    spec = make_spec([{"setWeight": 10, "milestone": {"transactions": 100}}, {"setWeight": 50}])
    for seen in (milestone_seen(step=1), milestone_seen(requests=99)):
        obs = observe(route=w(10), gates=PASSING, candidate_requests=120, milestone=seen)
        p = plan(spec, running(0, w(10)), obs, T0 + timedelta(seconds=60))
        assert p.status.readiness is not None and p.status.readiness.milestones == []
        assert p.status.current_step == 0


def test_the_scorecard_does_not_change_while_nothing_is_recorded() -> None:
    """No status write for the scorecard in a steady state: nothing in it moves with the clock."""
    spec = make_spec(
        [{"setWeight": 10, "milestone": {"transactions": 100}}, {"setWeight": 50}], HARDEN_BEFORE_25
    )
    obs = observe(route=w(10), gates=PASSING, candidate_requests=120, milestone=milestone_seen())
    first = plan(spec, running(0, w(10)), obs, T0 + timedelta(seconds=60)).status
    assert first.readiness is not None and first.readiness.milestones
    later = plan(spec, first, observe(route=w(10), gates=PASSING), T0 + timedelta(minutes=30))
    assert later.status.readiness == first.readiness
    again = plan(spec, later.status, observe(route=w(10), gates=PASSING), T0 + timedelta(minutes=31))
    assert again.status == later.status and again.actions == ()


def test_a_new_candidate_revision_starts_without_the_old_evidence() -> None:
    spec = make_spec([{"setWeight": 10, "milestone": {"transactions": 100}}, {"setWeight": 50}])
    obs = observe(route=w(10), gates=PASSING, candidate_requests=120, milestone=milestone_seen())
    recorded = plan(spec, running(0, w(10)), obs, T0 + timedelta(seconds=60)).status
    new = CANDIDATE.__class__(CANDIDATE.name, True, "agent-2", 2, 2)
    p = plan(spec, recorded, observe(route=w(50), candidate=new), T0 + timedelta(minutes=2))
    assert p.status.readiness is not None and p.status.readiness.milestones == []


# ---------------------------------------------------------------- required stages


def test_a_required_stage_not_met_holds_the_weight_raise_with_a_condition_and_one_event() -> None:
    spec = make_spec([{"setWeight": 10}, {"setWeight": 50}], HARDEN_BEFORE_25)
    p = plan(spec, running(0, w(10)), observe(route=w(10), gates=PASSING), T0 + timedelta(seconds=30))
    assert (p.status.current_step, p.status.weights) == (0, w(10))
    ready = condition(p, "StagesReady")
    assert (ready.status, ready.reason) == ("False", "StageNotMet")
    assert "stage Harden must be Met before the candidate weight exceeds 25" in ready.message
    assert "next: harden/alerts NotMeasured" in ready.message
    (event,) = events(p)
    assert (event.type, event.reason) == ("Warning", "StageRequired")
    assert "step 2/2 (setWeight 50) would raise the candidate weight to 50" in event.message
    assert "holding: step 2/2" in p.status.message
    # Held on: the same reason is not announced again, and nothing else changes.
    again = plan(spec, p.status, observe(route=w(10), gates=PASSING), T0 + timedelta(seconds=35))
    assert again.actions == () and again.status == p.status


def test_a_step_within_the_required_stages_bound_is_not_held() -> None:
    spec = make_spec([{"setWeight": 10}, {"setWeight": 25}, {"setWeight": 50}], HARDEN_BEFORE_25)
    p = plan(spec, running(0, w(10)), observe(route=w(10), gates=PASSING), T0 + timedelta(seconds=30))
    assert p.status.current_step == 1
    # The next raise (to 50) is the one that will be held: the condition says so ahead of time.
    assert condition(p, "StagesReady").status == "False"


def test_the_promotion_itself_is_held_by_a_required_stage() -> None:
    spec = make_spec([{"setWeight": 10}], {"requireStages": [{"stage": "Harden", "before": 99}]})
    p = plan(spec, running(0, w(10)), observe(route=w(10), gates=PASSING), T0 + timedelta(seconds=30))
    assert p.status.phase is Phase.PROGRESSING
    assert "the promotion would raise the candidate weight to 100" in p.status.message


def test_promote_does_not_bypass_a_required_stage() -> None:
    spec = make_spec([{"setWeight": 10}, {"pause": {}}, {"setWeight": 50}], HARDEN_BEFORE_25)
    status = running(1, w(10), phase=Phase.PAUSED, promote=True)
    p = plan(spec, status, observe(route=w(10), gates=PASSING), T0 + timedelta(seconds=30))
    assert (p.status.current_step, p.status.weights, p.status.promote) == (1, w(10), False)
    assert p.status.history[-1].reason == "StageRequired"
    assert p.status.history[-1].message.startswith("status.promote not applied: step 3/3")


def test_a_required_stage_met_by_a_milestone_releases_the_raise() -> None:
    steps = [{"setWeight": 10, "milestone": {"transactions": 100}}, {"setWeight": 50}]
    spec = make_spec(steps, DEPLOY_BEFORE_25)
    obs = observe(route=w(10), gates=PASSING, candidate_requests=120, milestone=milestone_seen())
    p = plan(spec, running(0, w(10)), obs, T0 + timedelta(seconds=60))
    assert stage(p, Stage.DEPLOY).score is Score.MET
    assert (p.status.current_step, p.status.weights) == (1, w(50))
    assert "StageRequired" not in [d.reason for d in p.status.history]


def test_a_milestone_not_met_keeps_the_required_stage_holding() -> None:
    steps = [{"setWeight": 10, "milestone": {"transactions": 100}}, {"setWeight": 50}]
    spec = make_spec(steps, DEPLOY_BEFORE_25)
    bad = (result(Verdict.FAIL, value=0.05), PASSING[1])
    obs = observe(route=w(10), gates=PASSING, candidate_requests=120, milestone=milestone_seen(gates=bad))
    p = plan(spec, running(0, w(10)), obs, T0 + timedelta(seconds=60))
    assert (p.status.current_step, p.status.weights) == (0, w(10))
    assert "next: deploy/first-transactions NotMet" in condition(p, "StagesReady").message


# ---------------------------------------------------------------- validation


def test_validation_refuses_milestones_and_requirements_that_could_never_be_satisfied() -> None:
    spec = make_spec(
        [{"pause": {"duration": "1m"}, "milestone": {"transactions": 5}}, {"setWeight": 30}],
        {
            "requireStages": [{"stage": "Pilot", "before": 10}, {"stage": "Pilot", "before": 50}],
            "criteria": {"waive": ["pilot/accuracy"]},
        },
    )
    fields = sorted(p.field for p in validate(spec))
    assert fields == [
        "spec.readiness.requireStages[0].stage",
        "spec.readiness.requireStages[1].stage",
        "spec.readiness.requireStages[1].stage",
        "spec.steps[0].milestone",
    ]
    first_weight = make_spec([{"setWeight": 30}], {"requireStages": [{"stage": "Harden", "before": 20}]})
    assert [p.field for p in validate(first_weight)] == ["spec.readiness.requireStages[0].before"]


# ---------------------------------------------------------------- property


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[AgentRolloutSpec, list[tuple[bool, bool, int, bool]]]:
    weights = sorted(draw(st.lists(st.integers(1, 100), min_size=1, max_size=5)))
    steps: list[dict[str, Any]] = []
    for weight in weights:
        step: dict[str, Any] = {"setWeight": weight}
        if draw(st.booleans()):
            step["milestone"] = {"transactions": draw(st.integers(1, 200))}
        steps.append(step)
        if draw(st.booleans()):
            steps.append({"pause": {}})
    required = draw(st.sampled_from([HARDEN_BEFORE_25, DEPLOY_BEFORE_25]))
    before = draw(st.integers(weights[0], 100))
    readiness = {**required, "requireStages": [{**required["requireStages"][0], "before": before}]}
    # Each tick: gates pass?, the milestone window's gates pass?, requests counted, a human's promote?
    ticks = draw(
        st.lists(st.tuples(st.booleans(), st.booleans(), st.integers(0, 300), st.booleans()), max_size=25)
    )
    return make_spec(steps, readiness), ticks


@settings(max_examples=150, deadline=None)
@given(scenarios())
def test_the_candidate_never_exceeds_before_while_the_required_stage_is_not_met(
    scenario: tuple[AgentRolloutSpec, list[tuple[bool, bool, int, bool]]],
) -> None:
    spec, ticks = scenario
    required = spec.readiness.require_stages[0]
    status, now = AgentRolloutStatus(), T0
    for gates_pass, window_pass, requests, promote in ticks:
        now += timedelta(seconds=10)
        if promote:
            status = status.model_copy(update={"promote": True})
        verdict = Verdict.PASS if gates_pass else Verdict.INCONCLUSIVE
        window = PASSING if window_pass else (result(Verdict.FAIL, value=0.05), PASSING[1])
        seen = MilestoneObservation(status.current_step, requests, 10, window)
        obs = Observations(
            legacy=LEGACY,
            candidate=CANDIDATE,
            route_weights=status.weights,
            gates=(result(verdict), PASSING[1]),
            candidate_requests=requests,
            milestone=seen,
            generation=1,
        )
        before_card = status.readiness
        status = plan(spec, status, obs, now).status
        if status.weights.candidate > required.before:
            # Raised past `before` only on a scorecard (the one this tick built) with the stage Met.
            assert status.readiness is not None
            met = {s.stage: s.score for s in status.readiness.stages}[required.stage]
            assert met is Score.MET, (before_card, status)


# ---------------------------------------------------------------- baselines


def baseline_seen(revision: str = "agent-1", cost: float = 0.02, legacy_cost: float = 0.03) -> Any:
    """What the shell measures for a promoted revision: every signal, candidate and legacy, over 600 s."""
    gates = []
    for name in BASELINE_SIGNALS:
        gate = "baseline-" + name.lower()
        if name == "costPerTransaction":
            values = {"value": cost, "legacy_value": legacy_cost}
        elif name == "errorRate":
            values = {"value": 0.001, "legacy_value": 0.002}
        else:
            values = {"value": None, "legacy_value": None}  # no such series: no data, never a guess
        gates.append(
            GateResult(name=gate, verdict=Verdict.INCONCLUSIVE, samples=1200, legacy_samples=600, **values)
        )
    return BaselineObservation(revision=revision, window_seconds=600, gates=tuple(gates))


def promoted(**kw: Any) -> AgentRolloutStatus:
    return running(2, w(100), phase=Phase.PROMOTED, **kw)


def metric(status: AgentRolloutStatus, name: str) -> Any:
    assert status.baseline is not None
    return next(m for m in status.baseline.metrics if m.name == name)


def test_a_promoted_revision_records_its_baseline_against_legacy_once() -> None:
    spec = make_spec([{"setWeight": 10}, {"setWeight": 50}, {"setWeight": 100}])
    p = plan(spec, promoted(), observe(route=w(100), baseline=baseline_seen()), T0 + timedelta(minutes=10))
    baseline = p.status.baseline
    assert baseline is not None and (baseline.revision, baseline.window_seconds) == ("agent-1", 600)
    assert baseline.recorded_at == "2026-03-01T12:10:00Z" and baseline.previous_revision is None
    cost = metric(p.status, "costPerTransaction")
    assert (cost.candidate, cost.legacy, cost.candidate_samples, cost.legacy_samples) == (
        0.02,
        0.03,
        1200,
        600,
    )
    assert (cost.previous, cost.change) == (None, None)
    throughput = metric(p.status, "throughput")
    assert (throughput.candidate, throughput.legacy) == (2.0, 1.0)  # 1200 and 600 requests over 600 s
    assert metric(p.status, "latencyP95").candidate is None
    optimize = stage(p, Stage.OPTIMIZE)
    assert optimize.score is Score.MET
    assert (optimize.criteria[0].value, optimize.criteria[0].samples) == (0.02, 1200)
    assert "no previous baseline" in optimize.criteria[0].message
    # Evidence, not a decision: no history entry, no Event.
    assert p.actions == () and p.status.history == []
    # Recorded once: later measurements of the same revision change nothing.
    later = plan(
        spec, p.status, observe(route=w(100), baseline=baseline_seen(cost=0.5)), T0 + timedelta(hours=1)
    )
    assert later.status == p.status


def test_a_baseline_measured_for_another_revision_is_not_recorded() -> None:
    spec = make_spec([{"setWeight": 10}, {"setWeight": 50}, {"setWeight": 100}])
    p = plan(spec, promoted(), observe(route=w(100), baseline=baseline_seen("agent-0")), T0)
    assert p.status.baseline is None
    assert stage(p, Stage.OPTIMIZE).score is Score.NOT_MEASURED


def test_a_later_rollout_shows_its_change_against_the_stored_baseline_and_the_target() -> None:
    spec = make_spec([{"setWeight": 10}, {"setWeight": 50}, {"setWeight": 100}])
    first = plan(spec, promoted(), observe(route=w(100), baseline=baseline_seen()), T0).status
    # A new revision rolls out: the old baseline stays, but it is not the new revision's evidence.
    rolling = first.model_copy(
        update={
            "phase": Phase.PROGRESSING,
            "candidate_revision": "agent-2",
            "current_step": 0,
            "weights": w(10),
        }
    )
    new = CANDIDATE.__class__(CANDIDATE.name, True, "agent-2", 2, 2)
    p = plan(spec, rolling, observe(route=w(10), candidate=new, gates=PASSING), T0 + timedelta(minutes=1))
    assert p.status.baseline == first.baseline
    assert stage(p, Stage.OPTIMIZE).score is Score.NOT_MEASURED
    done = promoted(candidate_revision="agent-2", baseline=first.baseline)
    seen = baseline_seen("agent-2", cost=0.015)
    p = plan(spec, done, observe(route=w(100), candidate=new, baseline=seen), T0 + timedelta(hours=2))
    cost = metric(p.status, "costPerTransaction")
    assert (cost.candidate, cost.previous, cost.change) == (0.015, 0.02, -0.25)
    assert p.status.baseline is not None and p.status.baseline.previous_revision == "agent-1"
    message = stage(p, Stage.OPTIMIZE).criteria[0].message
    assert "-25.0% against the previous baseline (target -20%: reached)" in message


def test_a_change_short_of_the_target_says_so() -> None:
    spec = make_spec([{"setWeight": 10}, {"setWeight": 100}])
    first = plan(spec, promoted(), observe(route=w(100), baseline=baseline_seen()), T0).status
    new = CANDIDATE.__class__(CANDIDATE.name, True, "agent-2", 2, 2)
    done = promoted(candidate_revision="agent-2", baseline=first.baseline)
    seen = baseline_seen("agent-2", cost=0.019)
    p = plan(spec, done, observe(route=w(100), candidate=new, baseline=seen), T0 + timedelta(hours=2))
    assert "-5.0% against the previous baseline (target -20%: not reached)" in (
        stage(p, Stage.OPTIMIZE).criteria[0].message
    )


# ---------------------------------------------------------------- baselines on demand (status.recordBaseline)


def test_a_baseline_asked_for_mid_rollout_is_recorded_once_with_a_decision_and_the_verb_consumed() -> None:
    spec = make_spec([{"setWeight": 10}, {"setWeight": 50}, {"setWeight": 100}])
    asked = running(1, w(50), record_baseline=True)
    obs = observe(route=w(50), gates=PASSING, baseline=baseline_seen())
    p = plan(spec, asked, obs, T0 + timedelta(minutes=10))
    baseline = p.status.baseline
    assert baseline is not None and (baseline.revision, baseline.phase, baseline.on_demand) == (
        "agent-1",
        Phase.PROGRESSING,
        True,
    )
    assert (
        metric(p.status, "costPerTransaction").candidate,
        metric(p.status, "costPerTransaction").legacy,
    ) == (
        0.02,
        0.03,
    )
    assert p.status.record_baseline is False and p.status.phase is Phase.PROGRESSING
    (event,) = [e for e in events(p) if e.reason == "BaselineRecorded"]
    assert (
        event.type == "Normal"
        and "recorded on demand (status.recordBaseline) in Progressing" in event.message
    )
    assert "cost per transaction 0.02 (legacy 0.03)" in event.message
    assert p.status.history[-1].reason == "BaselineRecorded"
    # Not yet measured (Prometheus failed): the verb stays set, nothing is recorded.
    waiting = plan(spec, asked, observe(route=w(50), gates=PASSING), T0 + timedelta(minutes=10))
    assert waiting.status.record_baseline is True and waiting.status.baseline is None
    assert not [e for e in events(waiting) if e.reason.startswith("Baseline")]


def test_the_promotion_still_records_its_own_baseline_after_one_on_demand() -> None:
    spec = make_spec([{"setWeight": 10}, {"setWeight": 100}])
    mid = plan(
        spec,
        running(0, w(10), record_baseline=True),
        observe(route=w(10), gates=PASSING, baseline=baseline_seen(cost=0.05)),
        T0 + timedelta(minutes=5),
    ).status
    done = promoted(baseline=mid.baseline)
    p = plan(spec, done, observe(route=w(100), baseline=baseline_seen(cost=0.02)), T0 + timedelta(minutes=10))
    assert p.status.baseline is not None
    assert (p.status.baseline.phase, p.status.baseline.on_demand) == (Phase.PROMOTED, False)
    # Compared with no earlier promoted revision, never with its own mid-rollout record.
    assert p.status.baseline.previous_revision is None
    assert metric(p.status, "costPerTransaction").previous is None


def test_a_re_record_in_promoted_keeps_comparing_with_the_previous_promoted_revision() -> None:
    spec = make_spec([{"setWeight": 10}, {"setWeight": 100}])
    first = plan(spec, promoted(), observe(route=w(100), baseline=baseline_seen()), T0).status
    new = CANDIDATE.__class__(CANDIDATE.name, True, "agent-2", 2, 2)
    done = promoted(candidate_revision="agent-2", baseline=first.baseline)
    second = plan(
        spec, done, observe(route=w(100), candidate=new, baseline=baseline_seen("agent-2", cost=0.015)), T0
    ).status
    again = second.model_copy(update={"record_baseline": True})
    seen = baseline_seen("agent-2", cost=0.016)
    p = plan(spec, again, observe(route=w(100), candidate=new, baseline=seen), T0 + timedelta(hours=1))
    assert p.status.baseline is not None and p.status.baseline.on_demand
    assert p.status.baseline.previous_revision == "agent-1"
    cost = metric(p.status, "costPerTransaction")
    assert (cost.candidate, cost.previous, cost.change) == (0.016, 0.02, -0.2)
    assert p.status.record_baseline is False


def test_a_baseline_asked_for_without_traffic_to_compare_is_refused_with_a_warning() -> None:
    spec = make_spec([{"setWeight": 0}, {"setWeight": 50}, {"setWeight": 100}])
    cases = [
        (running(0, w(0), record_baseline=True), observe(route=w(0)), "weight 0"),
        (
            running(1, w(0), phase=Phase.ROLLED_BACK, record_baseline=True),
            observe(route=w(0)),
            "it is RolledBack",
        ),
    ]
    for status, obs, why in cases:
        obs = observe(route=obs.route_weights, gates=obs.gates, baseline=baseline_seen())
        p = plan(spec, status, obs, T0 + timedelta(minutes=1))
        assert p.status.record_baseline is False and p.status.baseline is None, why
        (event,) = [e for e in events(p) if e.reason == "BaselineRefused"]
        assert event.type == "Warning" and "status.recordBaseline not applied" in event.message
        assert why in event.message


def test_a_promoted_rollout_without_its_baseline_stays_on_its_interval_until_it_lands() -> None:
    """A finished rollout rests (no timer) until something changes: not while its promotion baseline is
    still to measure (a Prometheus answer away), or it would wait for the 10-minute resync."""
    spec = make_spec([{"setWeight": 10}, {"setWeight": 50}, {"setWeight": 100}])
    waiting = plan(spec, promoted(), observe(route=w(100)), T0 + timedelta(minutes=10))
    assert waiting.status.baseline is None and waiting.requeue_after == 30.0  # the spec's interval
    landed = plan(spec, promoted(), observe(route=w(100), baseline=baseline_seen()), T0)
    assert landed.status.baseline is not None
    assert plan(spec, landed.status, observe(route=w(100)), T0).requeue_after is None  # now it rests
