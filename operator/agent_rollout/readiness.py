"""The readiness scorecard: the playbook's five stages, each with its exit criteria and their evidence.

Pure functions of the spec and of the evidence the planner has recorded in status (milestones); the
planner calls them and stays the one place that decides. Rules:
- A criterion is Met or NotMet only on recorded evidence; without it, NotMeasured, never guessed. Accuracy
  and edge cases are measured by an evaluate step (status.evaluations: the latest finished run for the
  candidate revision); alerts have no recorded evidence yet, so they are NotMeasured with the reason.
  The rollback drill is measured by
  `kubectl agentrollout drill` (drill.py): the latest finished drill is the evidence (a passed one
  stands while a newer drill runs or is interrupted), Met when it passed within maxRollbackTime.
- A stage is Met when every criterion it keeps (not waived) is Met, NotMet when any is NotMet, and
  NotMeasured otherwise; a stage with every criterion waived is NotMeasured (validation refuses to
  require such a stage, so no rollout can wait on it).
- The current stage is the first one not Met: each stage is a prerequisite of the next.
- Every text here is a function of the spec and the recorded evidence only (no counts, no clock), so
  the scorecard changes only when evidence does and a steady rollout writes no status for it.
"""

from __future__ import annotations

from agent_rollout import api
from agent_rollout.api import (
    AgentRolloutSpec,
    AgentRolloutStatus,
    Baseline,
    BaselineMetric,
    Comparison,
    Criterion,
    CriterionScore,
    DrillRecord,
    DrillResult,
    EvaluationRecord,
    GateResult,
    Milestone,
    MilestoneRecord,
    ReadinessStatus,
    RequireStage,
    Score,
    Stage,
    StageScore,
    Template,
    Verdict,
)

STAGE_CRITERIA: dict[Stage, tuple[Criterion, ...]] = {
    Stage.PILOT: (Criterion.ACCURACY,),
    Stage.VALIDATE: (Criterion.EDGE_CASES,),
    Stage.HARDEN: (Criterion.ALERTS, Criterion.ROLLBACK_DRILL),
    Stage.DEPLOY: (Criterion.FIRST_TRANSACTIONS, Criterion.ALERT_ANSWERED),
    Stage.OPTIMIZE: (Criterion.BASELINE,),
}

# Why a criterion has no evidence yet: the step or record that would measure it.
_NOT_MEASURED = {
    Criterion.ACCURACY: "no evaluation recorded (needs an evaluate step)",
    Criterion.EDGE_CASES: "no edge-case results recorded (needs an evaluate step with the named cases)",
    Criterion.ALERTS: "no alert configuration observed",
    Criterion.ROLLBACK_DRILL: "no rollback drill recorded",
    Criterion.ALERT_ANSWERED: "no answered alert recorded",
    Criterion.BASELINE: "no baseline recorded",
}

# The shell measures the error rate over a milestone's window with this gate when the spec has no
# errorRate gate of its own: a value to record, no bound, never a verdict that acts.
MILESTONE_ERROR_GATE = "milestone-error-rate"


def requirement(criterion: Criterion, spec: AgentRolloutSpec) -> str:
    c = spec.readiness.criteria
    if criterion is Criterion.ACCURACY:
        return f"accuracy >= {c.min_accuracy:g} on >= {c.min_cases} inputs"
    if criterion is Criterion.EDGE_CASES:
        named = ", ".join(c.edge_cases) if c.edge_cases else "none named"
        return f"the named edge cases pass ({named})"
    if criterion is Criterion.ALERTS:
        return f"alerts configured for {' and '.join(c.alerts) or 'nothing'}"
    if criterion is Criterion.ROLLBACK_DRILL:
        return f"a rollback to legacy tested and done within {c.max_rollback_time}"
    if criterion is Criterion.FIRST_TRANSACTIONS:
        n = first_milestone(spec)
        count = f"{n.transactions:,}" if n is not None else "N (no step has a milestone)"
        return f"the first {count} candidate transactions within every gate's bound"
    if criterion is Criterion.ALERT_ANSWERED:
        return f"at least {c.alerts_answered} alert answered"
    return "a baseline (cost, latency, error and flag rates, accuracy) recorded"


def first_milestone(spec: AgentRolloutSpec) -> Milestone | None:
    return next((s.milestone for s in spec.steps if s.milestone is not None), None)


def scorecard(
    spec: AgentRolloutSpec,
    milestones: list[MilestoneRecord],
    baseline: Baseline | None = None,
    revision: str | None = None,
    drill: DrillRecord | None = None,
    evaluation: EvaluationRecord | None = None,
) -> ReadinessStatus:
    """`baseline` counts for Optimize only when it is the baseline of `revision` (the candidate's)."""
    waived = set(spec.readiness.criteria.waive)
    own = baseline if baseline is not None and baseline.revision == revision else None
    stages = []
    for stage, names in STAGE_CRITERIA.items():
        kept = [
            _score(name, spec, milestones, own, drill, evaluation) for name in names if name not in waived
        ]
        stages.append(
            StageScore(
                stage=stage,
                score=_stage_score(kept),
                criteria=kept,
                waived=[name for name in names if name in waived],
            )
        )
    current = next((s for s in stages if s.score is not Score.MET), None)
    if current is None:
        return ReadinessStatus(
            stage=Stage.OPTIMIZE, next="every stage Met", stages=stages, milestones=milestones
        )
    return ReadinessStatus(
        stage=current.stage, next=unmet_text(current), stages=stages, milestones=milestones
    )


def unmet_text(stage: StageScore) -> str:
    """The stage's first criterion that is not Met, in one line."""
    unmet = next((c for c in stage.criteria if c.score is not Score.MET), None)
    if unmet is None:
        return f"{stage.stage.value}: every criterion is waived"
    detail = f": {unmet.message}" if unmet.message else ""
    return f"{unmet.name.value} {unmet.score.value} ({unmet.requirement}){detail}"


def _stage_score(criteria: list[CriterionScore]) -> Score:
    if any(c.score is Score.NOT_MET for c in criteria):
        return Score.NOT_MET
    if criteria and all(c.score is Score.MET for c in criteria):
        return Score.MET
    return Score.NOT_MEASURED


def _score(
    name: Criterion,
    spec: AgentRolloutSpec,
    milestones: list[MilestoneRecord],
    baseline: Baseline | None,
    drill: DrillRecord | None = None,
    evaluation: EvaluationRecord | None = None,
) -> CriterionScore:
    text = requirement(name, spec)
    if name is Criterion.ACCURACY and evaluation is not None:
        return _accuracy_score(spec, evaluation, text)
    if name is Criterion.EDGE_CASES and evaluation is not None:
        return _edge_case_score(spec, evaluation, text)
    if name is Criterion.BASELINE and baseline is not None:
        return _baseline_score(spec, baseline, text)
    if name is Criterion.ROLLBACK_DRILL and drill is not None:
        return _drill_score(spec, drill, text)
    if name is not Criterion.FIRST_TRANSACTIONS:
        return CriterionScore(
            name=name, score=Score.NOT_MEASURED, requirement=text, message=_NOT_MEASURED[name]
        )
    if not milestones:
        waiting = "waiting for a step's milestone" if first_milestone(spec) else "no step has a milestone"
        return CriterionScore(name=name, score=Score.NOT_MEASURED, requirement=text, message=waiting)
    first = milestones[0]
    error_gate = next((r for r in first.gates if _is_error_gate(r.name, spec)), None)
    return CriterionScore(
        name=name,
        score=first.score,
        requirement=text,
        value=first.error_rate,
        bound=error_gate.bound if error_gate is not None else "",
        samples=first.requests,
        at=first.recorded_at,
        source=f"milestone of step {first.step + 1}: {first.window_seconds}s from {first.window_start}",
        message=_gates_text(first.gates),
    )


def evaluation_evidence(status: AgentRolloutStatus) -> EvaluationRecord | None:
    """The evaluation the scorecard judges: the latest finished run for the candidate revision."""
    finished = [
        r
        for r in status.evaluations
        if r.phase != "Running" and r.total is not None and r.revision == status.candidate_revision
    ]
    return finished[-1] if finished else None


def _evaluation_source(record: EvaluationRecord) -> str:
    return f"evaluation Job {record.job} (step {record.step + 1})"


def _accuracy_score(spec: AgentRolloutSpec, record: EvaluationRecord, text: str) -> CriterionScore:
    c = spec.readiness.criteria
    total, passed = record.total or 0, record.passed or 0
    accuracy = passed / total if total else 0.0
    met = total >= c.min_cases and accuracy >= c.min_accuracy
    return CriterionScore(
        name=Criterion.ACCURACY,
        score=Score.MET if met else Score.NOT_MET,
        requirement=text,
        value=round(accuracy, 4),
        bound=f">= {c.min_accuracy:g} on >= {c.min_cases}",
        samples=total,
        at=record.finished_at,
        source=_evaluation_source(record),
        message=f"{passed}/{total} cases passed",
    )


def _edge_case_score(spec: AgentRolloutSpec, record: EvaluationRecord, text: str) -> CriterionScore:
    """Met when every named edge case (criteria.edgeCases, else the step's requiredCases) was required
    by the step that ran (so a missing one counted as failed) and none failed; NotMet when one failed."""
    step = spec.steps[record.step] if record.step < len(spec.steps) else None
    required = list(step.evaluate.required_cases) if step is not None and step.evaluate is not None else []
    named = list(spec.readiness.criteria.edge_cases) or required
    failed = [n for n in named if n in record.failed_cases]
    unchecked = [n for n in named if n not in required]

    def score(value: Score, message: str) -> CriterionScore:
        return CriterionScore(
            name=Criterion.EDGE_CASES,
            score=value,
            requirement=text,
            value=float(len(named) - len(failed)),
            bound=f"all {len(named)} pass",
            samples=len(named),
            at=record.finished_at,
            source=_evaluation_source(record),
            message=message,
        )

    if failed:
        return score(Score.NOT_MET, f"failed: {', '.join(failed)}")
    if not named:
        return score(
            Score.NOT_MEASURED, "no edge case named (criteria.edgeCases or the step's requiredCases)"
        )
    if unchecked:
        return score(
            Score.NOT_MEASURED, f"not among the evaluate step's requiredCases: {', '.join(unchecked)}"
        )
    return score(Score.MET, f"all {len(named)} named edge cases passed")


def _gates_text(gates: list[GateResult]) -> str:
    if not gates:
        return "error rate only: no gates configured"
    return "; ".join(
        f"{g.name} {g.verdict.value}" + ("" if g.value is None else f" {g.value:.4g}") for g in gates
    )


def _is_error_gate(name: str, spec: AgentRolloutSpec) -> bool:
    gates = spec.analysis.gates if spec.analysis is not None else []
    return any(g.name == name and g.template is Template.ERROR_RATE for g in gates)


def drill_evidence(status: AgentRolloutStatus) -> DrillRecord | None:
    """The drill the scorecard judges: the latest finished one, else the latest that passed."""
    last = status.last_drill
    if last is not None and last.result in (DrillResult.PASSED, DrillResult.FAILED):
        return last
    return status.passed_drill


def _drill_score(spec: AgentRolloutSpec, drill: DrillRecord, text: str) -> CriterionScore:
    bound = spec.readiness.criteria.max_rollback_time
    seconds = drill.confirm_seconds
    within = seconds is not None and seconds <= api.duration_seconds(bound)
    met = drill.result is DrillResult.PASSED and within
    route = "route never at legacy 100" if drill.route_seconds is None else f"route {drill.route_seconds}s"
    confirmed = "unconfirmed" if seconds is None else f"confirmed {seconds}s"
    return CriterionScore(
        name=Criterion.ROLLBACK_DRILL,
        score=Score.MET if met else Score.NOT_MET,
        requirement=text,
        value=float(seconds) if seconds is not None else None,
        bound=f"<= {bound}",
        at=drill.finished_at,
        source=f"rollback drill started {drill.started_at} at step {drill.step + 1}",
        message=f"{drill.result.value}: {route}, {confirmed}; {drill.message}",
    )


# ---------------------------------------------------------------- milestones


def milestone_due(spec: AgentRolloutSpec, status: AgentRolloutStatus) -> Milestone | None:
    """The current step's milestone while its evidence is not recorded yet (the shell then counts
    candidate requests and, once there are enough, measures the gates over the step's window)."""
    if status.phase not in (api.Phase.PROGRESSING, api.Phase.PAUSED) or status.current_step >= len(
        spec.steps
    ):
        return None
    milestone = spec.steps[status.current_step].milestone
    recorded = status.readiness.milestones if status.readiness is not None else []
    if milestone is None or any(r.step == status.current_step for r in recorded):
        return None
    return milestone


def milestone_spec(spec: AgentRolloutSpec, seconds: int) -> AgentRolloutSpec:
    """The spec whose gates measure exactly the last `seconds` (the milestone's window), with an
    unbounded errorRate gate added when the spec has none, so the error rate is always recorded."""
    if spec.analysis is None:
        return spec
    window = f"{max(1, seconds)}s"
    gates = [g.model_copy(update={"window": window}) for g in spec.analysis.gates]
    if not any(g.template is Template.ERROR_RATE for g in gates) and all(
        g.name != MILESTONE_ERROR_GATE for g in gates
    ):
        gates.append(api.Gate(name=MILESTONE_ERROR_GATE, template=Template.ERROR_RATE, window=window))
    return spec.model_copy(update={"analysis": spec.analysis.model_copy(update={"gates": gates})})


def milestone_record(
    spec: AgentRolloutSpec,
    step: int,
    window_start: str,
    window_seconds: int,
    requests: int,
    results: tuple[GateResult, ...],
    now_text: str,
) -> MilestoneRecord:
    """Met when every acting gate passed over the window, NotMet when one failed, else NotMeasured
    (a gate without data, or no gate at all: no bound says the transactions were within bounds)."""
    milestone = spec.steps[step].milestone
    assert milestone is not None
    error = next((r for r in results if r.name == MILESTONE_ERROR_GATE or _is_error_gate(r.name, spec)), None)
    gates = [r for r in results if r.name != MILESTONE_ERROR_GATE]
    dry = {g.name for g in (spec.analysis.gates if spec.analysis else []) if g.dry_run}
    acting = [r for r in gates if r.name not in dry]
    if any(r.verdict is Verdict.FAIL for r in acting):
        score = Score.NOT_MET
    elif acting and all(r.verdict is Verdict.PASS for r in acting):
        score = Score.MET
    else:
        score = Score.NOT_MEASURED
    return MilestoneRecord(
        step=step,
        transactions=milestone.transactions,
        requests=requests,
        window_start=window_start,
        window_seconds=window_seconds,
        recorded_at=now_text,
        error_rate=error.value if error is not None else None,
        score=score,
        gates=gates,
    )


# ---------------------------------------------------------------- required stages


def unmet_requirement(
    spec: AgentRolloutSpec, card: ReadinessStatus, weight: int
) -> tuple[RequireStage, StageScore] | None:
    """The first required stage not Met whose `before` a candidate weight of `weight` would exceed."""
    scores = {s.stage: s for s in card.stages}
    for required in spec.readiness.require_stages:
        stage = scores.get(required.stage)
        if weight > required.before and (stage is None or stage.score is not Score.MET):
            return required, stage or StageScore(stage=required.stage, score=Score.NOT_MEASURED)
    return None


def hold_text(required: RequireStage, stage: StageScore) -> str:
    return (
        f"stage {required.stage.value} must be Met before the candidate weight exceeds {required.before} "
        f"(it is {stage.score.value}; next: {unmet_text(stage)})"
    )


# ---------------------------------------------------------------- baselines

# Seconds of data a baseline is measured over at most: the rollout's last hour (or all of it).
BASELINE_WINDOW_MAX = 3600
COST = "costPerTransaction"
THROUGHPUT = "throughput"
# Signal name -> (template, quantile): each measured for candidate and legacy over the same window.
BASELINE_SIGNALS: dict[str, tuple[Template, float]] = {
    COST: (Template.COST_PER_REQUEST, 0.95),
    "tokensPerTransaction": (Template.TOKENS_PER_REQUEST, 0.95),
    "latencyP50": (Template.LATENCY_QUANTILE, 0.5),
    "latencyP95": (Template.LATENCY_QUANTILE, 0.95),
    "errorRate": (Template.ERROR_RATE, 0.95),
    "flagRate": (Template.FLAG_RATE, 0.95),
    "evalAccuracy": (Template.EVAL_ACCURACY, 0.95),
}
_GATE_PREFIX = "baseline-"


# Phases in which a human may ask for a baseline (status.recordBaseline): both versions have served in
# the window then. Progressing and Paused only while the candidate takes traffic; Promoted, because
# legacy served until the promotion (within the window: at most BASELINE_WINDOW_MAX back).
BASELINE_ON_DEMAND_PHASES = frozenset({api.Phase.PROGRESSING, api.Phase.PAUSED, api.Phase.PROMOTED})


def baseline_due(spec: AgentRolloutSpec, status: AgentRolloutStatus) -> bool:
    """A baseline to measure: a human asked for one (and may have it, baseline_refusal), or a promoted
    revision has no baseline of its own recorded at promotion yet (the shell measures until it lands)."""
    if spec.analysis is None:
        return False
    if status.record_baseline and baseline_refusal(spec, status) is None:
        return True
    return promotion_baseline_due(status)


def promotion_baseline_due(status: AgentRolloutStatus) -> bool:
    """Promoted, and the stored baseline is not one recorded in Promoted for this revision (one recorded
    on demand mid-rollout does not stand in for the promotion's: it saw less of the candidate)."""
    if status.phase is not api.Phase.PROMOTED:
        return False
    stored = status.baseline
    return stored is None or stored.revision != status.candidate_revision or not _promoted(stored)


def baseline_refusal(spec: AgentRolloutSpec, status: AgentRolloutStatus) -> str | None:
    """Why a baseline cannot be recorded on demand now, or None when it can."""
    if spec.analysis is None:
        return "the spec has no analysis section: there is no Prometheus to measure with"
    if status.phase not in BASELINE_ON_DEMAND_PHASES:
        return (
            f"it is {status.phase.value}: a baseline compares a candidate serving traffic with legacy "
            "(Progressing or Paused with candidate traffic, or Promoted)"
        )
    if status.phase is not api.Phase.PROMOTED and status.weights.candidate == 0:
        return f"the candidate takes no traffic at step {status.current_step + 1} (weight 0)"
    return None


def comparison_base(stored: Baseline | None, revision: str | None) -> Baseline | None:
    """The baseline a new baseline of `revision` compares with: the stored one when it is another
    revision's promoted baseline, else the one the stored baseline itself compared with (a re-record of
    the same revision, or the on-demand baseline of a revision that was never promoted)."""
    if stored is None:
        return None
    if stored.revision != revision and _promoted(stored):
        return stored
    if stored.previous_revision is None:
        return None
    return Baseline(
        revision=stored.previous_revision,
        recorded_at=stored.previous_recorded_at or stored.recorded_at,
        window_seconds=stored.window_seconds,
        phase=api.Phase.PROMOTED,
        metrics=[m.model_copy(update={"candidate": m.previous}) for m in stored.metrics],
    )


def _promoted(baseline: Baseline) -> bool:
    return baseline.phase in (None, api.Phase.PROMOTED)


def baseline_window(seconds_since_start: float) -> int:
    """Whole seconds since the attempt began, at most BASELINE_WINDOW_MAX, at least 1."""
    return max(1, min(BASELINE_WINDOW_MAX, int(seconds_since_start)))


def baseline_spec(spec: AgentRolloutSpec, seconds: int) -> AgentRolloutSpec:
    """One unbounded, comparing gate per signal over the window: candidate and legacy are both measured,
    and the verdicts mean nothing (a baseline records, it never judges)."""
    assert spec.analysis is not None
    gates = [
        api.Gate(
            name=_GATE_PREFIX + name.lower(),
            template=template,
            quantile=quantile,
            window=f"{seconds}s",
            compare=Comparison(max_ratio=1e9),
        )
        for name, (template, quantile) in BASELINE_SIGNALS.items()
    ]
    return spec.model_copy(update={"analysis": spec.analysis.model_copy(update={"gates": gates})})


def baseline_record(
    results: tuple[GateResult, ...],
    seconds: int,
    revision: str | None,
    previous: Baseline | None,
    now_text: str,
    phase: api.Phase = api.Phase.PROMOTED,
    on_demand: bool = False,
) -> Baseline:
    """`previous` is what the new baseline compares with (comparison_base of the stored one)."""
    by_name = {r.name: r for r in results}
    before = {m.name: m.candidate for m in previous.metrics} if previous is not None else {}
    metrics = []
    for name in BASELINE_SIGNALS:
        r = by_name.get(_GATE_PREFIX + name.lower())
        if r is None:
            continue
        metrics.append(_metric(name, r.value, r.legacy_value, r.samples, r.legacy_samples, before.get(name)))
    # Requests per second over the window, from the error rate's request counts.
    errors = by_name.get(_GATE_PREFIX + "errorrate")
    if errors is not None:
        candidate = errors.samples / seconds if errors.samples is not None else None
        legacy = errors.legacy_samples / seconds if errors.legacy_samples is not None else None
        metrics.append(
            _metric(
                THROUGHPUT, candidate, legacy, errors.samples, errors.legacy_samples, before.get(THROUGHPUT)
            )
        )
    return Baseline(
        revision=revision,
        recorded_at=now_text,
        window_seconds=seconds,
        phase=phase,
        on_demand=on_demand,
        metrics=metrics,
        previous_revision=previous.revision if previous is not None else None,
        previous_recorded_at=previous.recorded_at if previous is not None else None,
    )


def _metric(
    name: str,
    candidate: float | None,
    legacy: float | None,
    samples: int | None,
    legacy_samples: int | None,
    previous: float | None,
) -> BaselineMetric:
    change = None
    if candidate is not None and previous:
        change = round((candidate - previous) / abs(previous), 6)
    return BaselineMetric(
        name=name,
        candidate=candidate,
        legacy=legacy,
        candidate_samples=samples,
        legacy_samples=legacy_samples,
        previous=previous,
        change=change,
    )


def _baseline_score(spec: AgentRolloutSpec, baseline: Baseline, text: str) -> CriterionScore:
    cost = next((m for m in baseline.metrics if m.name == COST), None)
    target = spec.readiness.criteria.improvement_target
    parts = []
    if cost is not None and cost.candidate is not None:
        parts.append(f"cost per transaction {cost.candidate:.4g}")
        if cost.legacy is not None:
            parts.append(f"legacy {cost.legacy:.4g}")
        if cost.change is not None:
            reached = "reached" if cost.change <= -target else "not reached"
            parts.append(
                f"{cost.change:+.1%} against the previous baseline (target -{target:.0%}: {reached})"
            )
        else:
            parts.append("no previous baseline to compare with")
    else:
        parts.append("no cost data in the window")
    return CriterionScore(
        name=Criterion.BASELINE,
        score=Score.MET,
        requirement=text,
        value=cost.candidate if cost is not None else None,
        bound=f"-{target:.0%} against the previous baseline",
        samples=cost.candidate_samples if cost is not None else None,
        at=baseline.recorded_at,
        source=f"baseline of revision {baseline.revision}: the last {baseline.window_seconds}s",
        message=", ".join(parts),
    )
