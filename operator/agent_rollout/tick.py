"""One planner tick's working state and the primitives every rollout rule uses to change it.

`Tick` holds the inputs and the status being built (a deep copy, so the caller's status is never
mutated). Rules in `planner` change phase only through `transition`, which routes, records a
Decision and emits its Event in one place, so no phase change can go unaudited.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Literal

from agent_rollout import api
from agent_rollout.api import (
    AgentRolloutSpec,
    AgentRolloutStatus,
    Decision,
    GateResult,
    Pause,
    Phase,
    Step,
    Verdict,
    Weights,
)
from agent_rollout.capacity import begin_wait, ready, rollback_weights, wait_text
from agent_rollout.conditions import ConditionReason as CR
from agent_rollout.conditions import ConditionStatus, set_condition
from agent_rollout.conditions import ConditionType as CT
from agent_rollout.domain import (
    Action,
    DeploymentState,
    EmitEvent,
    Observations,
    SetWeights,
    SpecProblem,
    iso,
)
from agent_rollout.evidence import event_text, is_approval, step_text, weights_text
from agent_rollout.traffic.value import Mirror


class Reason(StrEnum):
    """Why a Decision was taken: the reason of both the history entry and its Kubernetes Event."""

    STARTED = "Started"
    STEP_COMPLETED = "StepCompleted"
    MANUAL_PROMOTION = "ManualPromotion"  # a human's status.promote ended the step
    AWAITING_APPROVAL = "AwaitingApproval"
    INCONCLUSIVE = "Inconclusive"
    PROMOTED = "Promoted"
    GATE_FAILED = "GateFailed"
    PROMETHEUS_UNAVAILABLE = "PrometheusUnavailable"
    ABORTED = "Aborted"
    NEW_CANDIDATE = "NewCandidate"
    RETRIED = "Retried"  # a human's status.retry restarted a rolled-back rollout
    INVALID_SPEC = "InvalidSpec"
    SPEC_VALID = "SpecValid"  # Failed -> Pending once the spec is fixed
    CANDIDATE_NOT_FOUND = "CandidateNotFound"
    CANDIDATE_UNAVAILABLE = "CandidateUnavailable"  # exists, but no replica is available
    LEGACY_NOT_FOUND = "LegacyNotFound"  # a rollback would have nowhere to go
    INCONCLUSIVE_LIMIT = "InconclusiveLimit"  # the candidate serves but its gates give no verdict
    ROUTE_WRITE_FAILED = "RouteWriteFailed"  # the API server did not take a weight change
    QUERY_REJECTED = "QueryRejected"  # Prometheus refuses a gate's query: the candidate cannot be judged
    ALERT_FIRED = "AlertFired"  # an incident alert naming the rollout fired (Alertmanager webhook)
    RECOVERED = "Recovered"  # resumed from the route's write-ahead record after a lost status write
    WEIGHTS_RECONCILED = "WeightsReconciled"
    MILESTONE_RECORDED = "MilestoneRecorded"  # a step's first N transactions, with the gates over them
    STAGE_REQUIRED = "StageRequired"  # a step holds: a required stage is not Met (spec.readiness)
    BASELINE_RECORDED = "BaselineRecorded"  # a human's status.recordBaseline: the baseline is in status
    BASELINE_REFUSED = "BaselineRefused"  # a human's status.recordBaseline in a phase with nothing to compare
    EVALUATION_STARTED = "EvaluationStarted"  # an evaluation step's Job was created
    EVALUATION_FAILED = "EvaluationFailed"  # failed, timed out or unreadable: rolled back or paused
    APPROVAL_GIVEN = "ApprovalGiven"  # an allowed user's approval counted for the current step and revision
    APPROVAL_REFUSED = "ApprovalRefused"  # an approval that does not count (wrong step, revision, approver)
    APPROVAL_EXPIRED = "ApprovalExpired"  # an approval step's `expires` passed without enough approvals
    PROMOTE_REFUSED = "PromoteRefused"  # status.promote on an approval step: only approvals end it
    ESCALATED = "Escalated"  # a step stuck on inconclusive gates for `escalate.after`: handed to a human
    DRIFT = "Drift"  # SetWeights only: re-assert weights the route lost; nothing was decided
    DRILL_STARTED = "DrillStarted"  # a human's status.drill: all traffic to legacy, to be confirmed
    DRILL_PASSED = "DrillPassed"  # legacy confirmed within bounds in time: back to the step it left
    DRILL_ROLLED_BACK = "DrillRolledBack"  # passed, and the human asked to stay rolled back
    DRILL_FAILED = "DrillFailed"  # legacy out of bounds, or not confirmed within the bound: stays on legacy
    DRILL_REFUSED = "DrillRefused"  # status.drill where no drill can run
    DRILL_INTERRUPTED = "DrillInterrupted"  # the rollout left the drill's step meanwhile
    LEGACY_SHORT_OF_REPLICAS = "LegacyShortOfReplicas"  # a rollback waits for legacy's ready replicas
    LEGACY_CAPACITY_STEP = "LegacyCapacityStep"  # more ready legacy replicas: more traffic back
    LEGACY_CAPACITY_RESTORED = "LegacyCapacityRestored"  # legacy ready again: all traffic to legacy
    LEGACY_CAPACITY_TIMEOUT = "LegacyCapacityTimeout"  # capacityTimeout over: all traffic to legacy anyway


WARNING_REASONS = frozenset(
    {
        Reason.GATE_FAILED,
        Reason.PROMETHEUS_UNAVAILABLE,
        Reason.ABORTED,
        Reason.INVALID_SPEC,
        Reason.CANDIDATE_NOT_FOUND,
        Reason.CANDIDATE_UNAVAILABLE,
        Reason.LEGACY_NOT_FOUND,
        Reason.INCONCLUSIVE,
        Reason.INCONCLUSIVE_LIMIT,
        Reason.ROUTE_WRITE_FAILED,
        Reason.RECOVERED,
        Reason.QUERY_REJECTED,
        Reason.ALERT_FIRED,
        Reason.STAGE_REQUIRED,
        Reason.BASELINE_REFUSED,
        Reason.EVALUATION_FAILED,
        Reason.DRILL_FAILED,
        Reason.DRILL_REFUSED,
        Reason.DRILL_INTERRUPTED,
        Reason.LEGACY_SHORT_OF_REPLICAS,
        Reason.LEGACY_CAPACITY_TIMEOUT,
        Reason.APPROVAL_REFUSED,
        Reason.APPROVAL_EXPIRED,
        Reason.PROMOTE_REFUSED,
        Reason.ESCALATED,
    }
)
ROLLBACK_REASONS = frozenset(
    {
        Reason.GATE_FAILED,
        Reason.PROMETHEUS_UNAVAILABLE,
        Reason.ABORTED,
        Reason.INCONCLUSIVE_LIMIT,
        Reason.QUERY_REJECTED,
        Reason.ALERT_FIRED,
        Reason.EVALUATION_FAILED,
        Reason.DRILL_FAILED,
        Reason.DRILL_ROLLED_BACK,
        Reason.APPROVAL_EXPIRED,
    }
)
# Automatic rollbacks: they move traffic back only as fast as legacy's ready replicas allow (capacity.py).
# A human's abort, a drill and an invalid spec move all of it at once.
CAPACITY_SAFE_REASONS = frozenset(
    {
        Reason.GATE_FAILED,
        Reason.PROMETHEUS_UNAVAILABLE,
        Reason.INCONCLUSIVE_LIMIT,
        Reason.QUERY_REJECTED,
        Reason.ALERT_FIRED,
        Reason.APPROVAL_EXPIRED,
    }
)
LIVE_PHASES = frozenset({Phase.PROGRESSING, Phase.PAUSED})


@dataclass
class Tick:
    """One reconcile in progress: inputs, the status being built (a copy) and the actions so far."""

    obs: Observations
    now: datetime
    st: AgentRolloutStatus
    actions: list[Action] = field(default_factory=list)
    weights_reason: str | None = None  # set when status.weights changed this tick
    latest: list[GateResult] | None = None  # this tick's gate results (status.lastAnalysis may lag)
    waiting: str = ""  # what holds the rollout, for status.message
    history_limit: int = api.HISTORY_LIMIT  # spec.historyLimit


@dataclass(frozen=True)
class Actor:
    """Who a decision is attributed to: the operator, or the user the apiserver authenticated."""

    name: str = api.OPERATOR
    groups: tuple[str, ...] = ()


OPERATOR = Actor()
ACTOR_GROUPS = 20
ACTOR_TEXT_LIMIT = 253
UNVERIFIED = Actor("unverified")


def take_request(st: AgentRolloutStatus, verb: str) -> Actor:
    """The author of a human verb being acted on; its record in status.requests is consumed with it."""
    request = getattr(st.requests, verb, None) if st.requests is not None else None
    if st.requests is not None:
        setattr(st.requests, verb, None)
    return requester(request)


def requester(request: api.VerbRequest | None) -> Actor:
    """The author of a human verb, from its admission-stamped record; `unverified` without one (the
    chart's policies not installed, or a writer the policies exempt)."""
    if request is None or not request.by:
        return UNVERIFIED
    # A user may be in hundreds of groups: the record keeps the first ACTOR_GROUPS, bounded in length.
    groups = tuple(g[:ACTOR_TEXT_LIMIT] for g in request.groups[:ACTOR_GROUPS])
    return Actor(request.by[:ACTOR_TEXT_LIMIT], groups)


def legacy_only() -> Weights:
    return Weights(legacy=100, candidate=0)


def candidate_only() -> Weights:
    return Weights(legacy=0, candidate=100)


def step_weights(steps: list[Step], index: int) -> Weights:
    """Weights in effect at step `index`: the last setWeight at or before it, legacy-only before any."""
    candidate = 0
    for step in steps[: index + 1]:
        if step.set_weight is not None:
            candidate = step.set_weight
    return Weights(legacy=100 - candidate, candidate=candidate)


# ---------------------------------------------------------------- decisions


def transition(
    t: Tick,
    spec: AgentRolloutSpec | None,
    phase: Phase,
    reason: Reason,
    message: str,
    evidence: list[GateResult] | None = None,
    actor: Actor = OPERATOR,
) -> None:
    t.st.phase = phase
    wait = None
    if phase is Phase.ROLLED_BACK:
        t.st.rolled_back_revision = t.st.candidate_revision
        if reason in CAPACITY_SAFE_REASONS:
            wait = begin_wait(spec, t.st, t.obs.legacy, t.obs.candidate, reason.value, t.now)
    t.st.capacity_rollback = wait
    route(t, spec, reason)
    if wait is None:
        record(t, reason, message, evidence or [], actor)
        return
    record(t, reason, f"{message}, as legacy's capacity allows", evidence or [], actor)
    shortfall = f"rollback ({reason.value}) waits for legacy: {wait_text(wait, t.st.weights)}"
    record(t, Reason.LEGACY_SHORT_OF_REPLICAS, shortfall, [])


def record(
    t: Tick, reason: Reason, message: str, evidence: list[GateResult], actor: Actor = OPERATOR
) -> None:
    """A Decision in the bounded history (oldest dropped first) and the Event that announces it, both
    with the evidence, who decided and which candidate agent it was about."""
    st = t.st
    decision = Decision(
        time=iso(t.now),
        reason=reason.value,
        message=bounded(message),
        step=st.current_step,
        weights=st.weights.model_copy(),
        evidence=[history_evidence(r) for r in evidence],
        actor=actor.name,
        actor_groups=list(actor.groups),
        agent_version=candidate_version(t),
    )
    st.history = [*st.history, decision][-t.history_limit :]
    # The Event names a verified author; the history says `unverified` where there is none.
    by = f" (by {actor.name})" if actor not in (OPERATOR, UNVERIFIED) else ""
    text = event_text(bounded(message) + by, evidence)
    kind: Literal["Normal", "Warning"] = "Warning" if reason in WARNING_REASONS else "Normal"
    t.actions.append(EmitEvent(type=kind, reason=reason.value, message=text, decision=decision))


def candidate_version(t: Tick) -> api.AgentVersion:
    """The candidate the decision is about as observed now; unknown parts stay unknown."""
    candidate = t.obs.candidate
    if candidate is not None and candidate.agent_version is not None:
        return candidate.agent_version.model_copy()
    return api.AgentVersion(revision=t.st.candidate_revision)


def condition(t: Tick, type_: CT, status: ConditionStatus, reason: CR, message: str) -> None:
    t.st.conditions = set_condition(
        t.st.conditions, type_.value, status, reason.value, bounded(message), t.now, t.st.observed_generation
    )


# The history keeps HISTORY_LIMIT decisions, each with up to MAX_GATES results: its texts are cut so
# the largest status stays far below etcd's object limit (tests/test_bounds.py measures it). The full
# query of each gate stays in lastAnalysis and in the Event.
MESSAGE_LIMIT = 1024
EVIDENCE_TEXT_LIMIT = 200


def bounded(text: str, limit: int = MESSAGE_LIMIT) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def latest_evidence(result: GateResult) -> GateResult:
    """A gate result as lastAnalysis keeps it: the whole query, its texts bounded."""
    return result.model_copy(
        update={"message": bounded(result.message, 512), "bound": bounded(result.bound, EVIDENCE_TEXT_LIMIT)}
    )


def history_evidence(result: GateResult) -> GateResult:
    return result.model_copy(
        update={
            "query": bounded(result.query, EVIDENCE_TEXT_LIMIT),
            "message": bounded(result.message, EVIDENCE_TEXT_LIMIT),
            "bound": bounded(result.bound, EVIDENCE_TEXT_LIMIT),
        }
    )


# ---------------------------------------------------------------- routing


def route(t: Tick, spec: AgentRolloutSpec | None, reason: Reason) -> bool:
    """Set status.weights for the current phase and step; False when nothing changed."""
    want = target_weights(t, spec)
    if want is None or want == t.st.weights or routes_to_missing(t.obs, want):
        # Never send traffic towards a Deployment we saw missing (or a candidate that cannot answer):
        # keep what works, and say so in TrafficRouted.
        return False
    t.st.weights = want
    t.weights_reason = reason.value
    return True


def target_weights(t: Tick, spec: AgentRolloutSpec | None) -> Weights | None:
    phase, wait = t.st.phase, t.st.capacity_rollback
    if phase is Phase.PENDING:
        return None  # the route is not ours until the rollout starts
    if phase is Phase.ROLLED_BACK and wait is not None and not cannot_serve(t.obs.candidate):
        have = ready(t.obs.legacy)
        if have is not None:
            return rollback_weights(t.st.weights, have, wait.required)
    if phase in (Phase.ROLLED_BACK, Phase.FAILED) or cannot_serve(t.obs.candidate):
        return legacy_only()
    if phase is Phase.PROMOTED:
        return candidate_only()
    if drilling(t.st):
        return legacy_only()
    return None if spec is None else step_weights(spec.steps, t.st.current_step)


def drilling(st: AgentRolloutStatus) -> bool:
    """A rollback drill runs: all traffic to legacy, at the step it left, for the revision it left."""
    drill = st.last_drill
    return (
        drill is not None
        and drill.result is api.DrillResult.RUNNING
        and st.phase in LIVE_PHASES
        and st.current_step == drill.step
        and st.candidate_revision == drill.revision
    )


def settle_weights(t: Tick, spec: AgentRolloutSpec | None) -> None:
    """Weights that must change without a phase transition (candidate gone or back, steps edited)."""
    before = t.st.weights
    reason = Reason.WEIGHTS_RECONCILED
    if missing(t.obs.candidate):
        reason = Reason.CANDIDATE_NOT_FOUND
    elif cannot_serve(t.obs.candidate):
        reason = Reason.CANDIDATE_UNAVAILABLE
    if not route(t, spec, reason):
        return
    if reason is Reason.CANDIDATE_NOT_FOUND:
        message = "candidate Deployment not found: all traffic to legacy until it returns"
    elif reason is Reason.CANDIDATE_UNAVAILABLE:
        message = "candidate has no available replica: all traffic to legacy until one is available"
    else:
        message = f"weights {weights_text(before)} -> {weights_text(t.st.weights)} for {t.st.phase.value}"
    record(t, reason, message, [])


def request_weights(t: Tick, mirror: Mirror | None = None) -> None:
    """Level-based: ask for status.weights, and `mirror` (a shadow step's, or none of ours), whenever
    the weights changed or the route shows anything else."""
    st, shown = t.st, t.obs.route_weights
    if not owns_route(st) or t.obs.route_claimed_by is not None or routes_to_missing(t.obs, st.weights):
        return
    mirror_differs = t.obs.route_mirror != mirror or not t.obs.route_mirror_exact
    if t.weights_reason is None and (shown is None or shown == st.weights) and not mirror_differs:
        return
    reason = t.weights_reason or (_last_reason(t) if mirror_differs else None) or Reason.DRIFT.value
    action = SetWeights(weights=st.weights.model_copy(), reason=reason, mirror=mirror)
    t.actions.insert(0, action)  # first, so the shell routes before it reports: a rollback must not wait


def _last_reason(t: Tick) -> str | None:
    """The reason of a Decision recorded this tick (a mirror follows the step, not the weights)."""
    recorded = any(isinstance(a, EmitEvent) for a in t.actions)
    return t.st.history[-1].reason if recorded and t.st.history else None


def shadow_step(st: AgentRolloutStatus, spec: AgentRolloutSpec | None) -> bool:
    """A shadow step is the live step: the route should mirror."""
    live = spec is not None and st.phase in LIVE_PHASES and 0 <= st.current_step < len(spec.steps)
    return live and spec is not None and spec.steps[st.current_step].shadow is not None


def owns_route(st: AgentRolloutStatus) -> bool:
    """The route is ours once a rollout started; a spec that failed before that never touches it."""
    if st.phase is Phase.FAILED:
        return st.step_started_at is not None or st.candidate_revision is not None
    return st.phase is not Phase.PENDING


def set_traffic_condition(t: Tick, spec: AgentRolloutSpec | None) -> None:
    st, shown = t.st, t.obs.route_weights
    # Judge the route as it will be once this tick's write lands; a refused write is reported by
    # planner.note_route_failure, so a successful rollback never reads "pending" for an interval.
    requested = next((a.weights for a in t.actions if isinstance(a, SetWeights)), None)
    if requested is not None and shown is not None:
        shown = requested
    want = target_weights(t, spec)
    if t.obs.route_claimed_by is not None:
        detail = (
            f"the route is managed by AgentRollout {t.obs.route_claimed_by}, created earlier; not touching it"
        )
        condition(t, CT.TRAFFIC_ROUTED, "False", CR.ROUTE_CLAIMED, detail)
    elif t.obs.route_error is not None or shown is None:
        detail = t.obs.route_error or "route weights could not be read"
        condition(t, CT.TRAFFIC_ROUTED, "False", CR.ROUTE_NOT_FOUND, detail)
    elif t.obs.route_mirror_conflict is not None and shadow_step(t.st, spec):
        condition(t, CT.TRAFFIC_ROUTED, "False", CR.MIRROR_CONFLICT, t.obs.route_mirror_conflict)
    elif not owns_route(st):
        condition(
            t, CT.TRAFFIC_ROUTED, "True", CR.ROUTE_FOUND, "route found; untouched until the rollout starts"
        )
    elif want is not None and want != st.weights and routes_to_missing(t.obs, want):
        detail = (
            f"want {weights_text(want)} but {unavailable_text(t.obs, want)}: "
            f"traffic held at {weights_text(st.weights)} until it returns"
        )
        condition(t, CT.TRAFFIC_ROUTED, "False", CR.TARGET_UNAVAILABLE, detail)
    elif shown == st.weights:
        condition(t, CT.TRAFFIC_ROUTED, "True", CR.WEIGHTS_APPLIED, weights_text(st.weights))
    else:
        detail = f"route shows {weights_text(shown)}, want {weights_text(st.weights)}"
        condition(t, CT.TRAFFIC_ROUTED, "False", CR.WEIGHTS_PENDING, detail)


_COMPLETED: dict[Phase, tuple[ConditionStatus, CR, str]] = {
    Phase.PENDING: ("False", CR.NOT_STARTED, "the rollout has not started"),
    Phase.PROGRESSING: ("False", CR.IN_PROGRESS, "the rollout is in progress"),
    Phase.PAUSED: ("False", CR.IN_PROGRESS, "the rollout is paused"),
    Phase.PROMOTED: ("True", CR.PROMOTED, "the candidate serves all traffic"),
    Phase.ROLLED_BACK: ("False", CR.ROLLED_BACK, "rolled back: legacy serves all traffic"),
    Phase.FAILED: ("False", CR.INVALID_SPEC, "the spec is invalid"),
}


def set_completed_condition(t: Tick) -> None:
    status, reason, message = _COMPLETED[t.st.phase]
    condition(t, CT.COMPLETED, status, reason, message)


# ---------------------------------------------------------------- status message


def status_message(t: Tick, spec: AgentRolloutSpec | None, problems: list[SpecProblem]) -> str:
    """One human line; a function of the new status and this tick's observations only."""
    st = t.st
    if spec is None or problems:
        return bounded(f"invalid spec: {problems_text(problems)}")
    if st.phase is Phase.PENDING:
        return t.waiting or "waiting to start"
    if st.phase is Phase.PROMOTED:
        base = f"promoted: candidate {spec.candidate.deployment} serves all traffic"
    elif st.phase is Phase.ROLLED_BACK:
        cause = next((d.message for d in reversed(st.history) if d.reason in ROLLBACK_REASONS), "")
        base = f"rolled back to legacy{': ' + cause if cause else ''}"
    else:
        index = min(st.current_step, len(spec.steps) - 1)
        base = f"step {index + 1}/{len(spec.steps)} ({step_text(spec.steps[index])})"
        detail = t.waiting or (_paused_text(spec.steps[index], st) if st.phase is Phase.PAUSED else "")
        return f"{base}: {detail}" if detail else base
    return f"{base}; {t.waiting}" if t.waiting else base


def _paused_text(step: Step, st: AgentRolloutStatus) -> str:
    if is_approval(step):
        return "waiting for approval: set status.promote (kubectl agentrollout promote)"
    if step.evaluate is not None:
        failed = next((r for r in reversed(st.evaluations) if r.phase == "Failed"), None)
        why = f" ({failed.message})" if failed is not None and failed.message else ""
        return f"evaluation failed{why}: set status.promote to continue or status.abort to roll back"
    names = ", ".join(r.name for r in st.last_analysis if r.verdict is Verdict.INCONCLUSIVE) or "gates"
    return f"paused on inconclusive {names}: set status.promote to continue or status.abort to roll back"


def problems_text(problems: list[SpecProblem]) -> str:
    return "; ".join(f"{p.field}: {p.message}" for p in problems)


# ---------------------------------------------------------------- observations and time


def exists(state: DeploymentState | None) -> bool:
    return state is not None and state.exists


def missing(state: DeploymentState | None) -> bool:
    """Observed and absent; an unobserved Deployment (None) is not known to be missing."""
    return state is not None and not state.exists


def cannot_serve(state: DeploymentState | None) -> bool:
    """Observed, and absent or without an available replica; unobserved (None) is not known."""
    return state is not None and not state.can_serve


def routes_to_missing(obs: Observations, weights: Weights) -> bool:
    """Weights that would send users to a Deployment that is gone, or to a candidate that cannot answer.

    Legacy only has to exist: it is where every failure goes, and a legacy short of replicas still
    answers better than a candidate that was judged bad.
    """
    return (weights.legacy > 0 and missing(obs.legacy)) or (
        weights.candidate > 0 and cannot_serve(obs.candidate)
    )


def unavailable_text(obs: Observations, weights: Weights) -> str:
    if weights.legacy > 0 and missing(obs.legacy):
        return f"legacy Deployment {obs.legacy.name if obs.legacy else ''} is missing"
    state = obs.candidate
    if state is not None and not state.exists:
        return f"candidate Deployment {state.name} is missing"
    name = state.name if state is not None else ""
    return f"candidate Deployment {name} has no available replica"


def route_readable(obs: Observations) -> bool:
    return obs.route_error is None and obs.route_weights is not None


def route_shows(obs: Observations, weights: Weights) -> bool:
    return route_readable(obs) and obs.route_weights == weights


def parse_time(text: str | None) -> datetime | None:
    if text is None:
        return None
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def step_start(now: datetime) -> str:
    """status.stepStartedAt for a step entered at `now`. Status times have whole seconds, so the start
    is rounded up, never down: a pause then never ends early, and `minRequests` never counts requests
    served before the step began (at worst the pause lasts 1 s longer)."""
    whole = now.replace(microsecond=0)
    return iso(whole if whole == now else whole + timedelta(seconds=1))


def pause_end(st: AgentRolloutStatus, pause: Pause) -> datetime | None:
    started = parse_time(st.step_started_at)
    if pause.duration is None or started is None:
        return None
    return started + timedelta(seconds=api.duration_seconds(pause.duration))


def utc(now: datetime) -> datetime:
    # iso() formats without converting, so every time in status must already be UTC.
    return now.astimezone(UTC) if now.tzinfo is not None else now.replace(tzinfo=UTC)
