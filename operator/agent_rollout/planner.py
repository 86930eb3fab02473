"""The rollout planner: every rule of a progressive rollout, as one pure function.

`plan(spec, status, observations, now) -> Plan(new status, actions)`. No I/O, no clock, no kopf, no
randomness: the shell observes, calls `plan`, routes traffic, emits events and writes the status diff.
One tick is a fixed pipeline of small stages (after Argo Rollouts' canary.go), each allowed to end
the tick early; at most one step advances per tick.

Choices on open questions (each is a rule a reviewer may want to change in one place):
- `lastAnalysis` always holds the latest gate results, but `lastAnalysisAt` moves only when they
  change, so an idle steady state writes no status. It is cleared on entering a step, so a step is
  judged only on evaluations made while it was current, never on the previous step's.
- Weights are a function of (phase, step): Progressing/Paused carry the last setWeight at or before
  the current step (legacy-only before any), Promoted is candidate-only, RolledBack and Failed are
  legacy-only. Any change to them outside a phase transition (candidate gone, steps edited) is still
  recorded as a Decision. No weights are ever set towards a Deployment observed missing.
- A candidate Deployment that disappears mid-rollout sends all traffic to legacy and holds the
  step, without RolledBack: a missing Deployment is usually a rename or an Argo CD re-create, and
  when it returns with the same revision its step weight is restored; with a new revision the
  rollout restarts. A candidate without an available replica is treated the same way (its traffic
  goes to legacy, the step holds and restarts when it serves again), and a rollout does not start
  until the candidate can answer.
- A missing legacy holds the step but not the analysis: a failing gate or an abort is decided and
  recorded at once (RolledBack, with its Event); the route goes to legacy when legacy exists again,
  never before, and TrafficRouted says so meanwhile. Traffic never goes to a Deployment seen missing.
  Held weights of a rolled-back (or Failed) candidate only go down: they are never re-asserted over a
  route someone moved towards legacy, so the candidate gets no traffic back (_keep_candidate_out).
- Gate windows never reach back before the step began or before the gate's last counted failure
  (gate_windows): a restarted revision and a new weight are judged on their own samples, and one
  burst is one failure however many overlapping evaluations see it.
- The route carries a write-ahead record (agent_rollout.intent) of the status write that follows
  it; a route newer than status is resumed from (a lost status write), never undone as drift.
- Only a new candidate revision (pod template hash) restarts a rolled-back rollout; editing the
  spec does not. To retry the same agent, `kubectl rollout restart` the candidate (new hash).
- `promote` ends the current step whatever holds it (approval, inconclusive pause, a pause timer),
  one step per promote; gate failures still count and roll back. Inconclusive gates pause only when
  the step is otherwise ready to complete, so a long pause step is not paused for early low traffic.
- Gate failures count over the whole rollout (reset only on restart), as Argo's failureLimit does.
- Every Decision has exactly one Event and vice versa; a failure counted below its limit is neither
  (status.gateFailures and lastAnalysis show it), so events stay a readable audit trail.
- The readiness scorecard (agent_rollout.readiness) is a function of the spec and the evidence recorded
  in status; a step's milestone holds it until its first N transactions are recorded (once, with
  every gate over exactly that window), and a step or promotion that would raise the candidate's
  weight above a required stage's `before` holds while that stage is not Met, `promote` included:
  a requirement a human could click through would not make each stage a prerequisite.
- An invalid spec fails the rollout from any phase, Promoted included, and sends the candidate's
  traffic to legacy; fixing it restarts from step 0. `spec` may be None (it did not parse).
- Rollback drills (agent_rollout.drill) hold a live rollout at legacy 100 until legacy's own metrics
  confirm it, then return to the same step, which starts over; a failed drill ends RolledBack.
- Automatic rollbacks are capacity-safe (agent_rollout.capacity, agent_rollout.rollback): traffic goes
  back as legacy's ready replicas allow, within capacityTimeout; abort always moves all of it at once.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Mapping
from dataclasses import replace
from datetime import datetime, timedelta

from agent_rollout import api, evaluation
from agent_rollout.api import (
    AgentRolloutSpec,
    AgentRolloutStatus,
    Analysis,
    GateResult,
    OnFailurePolicy,
    OnInconclusiveLimitPolicy,
    OnInconclusivePolicy,
    Pause,
    Phase,
    Verdict,
    Weights,
)
from agent_rollout.approval import approval_holds, observe_candidate_author, refuse_promote, take_approval
from agent_rollout.capacity import ready as legacy_ready
from agent_rollout.clock import parse_time, pause_end, step_start, utc
from agent_rollout.conditions import ConditionReason as CR
from agent_rollout.conditions import ConditionType as CT
from agent_rollout.conditions import find_condition, remove_condition
from agent_rollout.decisions import OPERATOR, Actor, record, settle_weights, take_request, transition
from agent_rollout.domain import (
    EmitEvent,
    Observations,
    Plan,
    RouteFailure,
    RouteIntent,
    RunEvaluation,
    SetWeights,
    SpecProblem,
    iso,
)
from agent_rollout.drill import drill_hold_text, drill_stage, interrupt_if_left
from agent_rollout.evidence import is_approval, step_text, waiting_text, weights_text
from agent_rollout.readiness import (
    COST,
    baseline_due,
    baseline_record,
    baseline_refusal,
    comparison_base,
    drill_evidence,
    evaluation_evidence,
    hold_text,
    milestone_due,
    milestone_record,
    promotion_baseline_due,
    scorecard,
    unmet_requirement,
)
from agent_rollout.reasons import Reason
from agent_rollout.rollback import capacity_requeue, follow_capacity
from agent_rollout.routing import (
    cannot_serve,
    exists,
    request_weights,
    route_readable,
    route_shows,
    step_weights,
)
from agent_rollout.shadow import current_shadow, judged_analysis, shadow_end, shadow_over, wanted_mirror
from agent_rollout.statustext import (
    bounded,
    condition,
    history_evidence,
    latest_evidence,
    problems_text,
    set_completed_condition,
    set_traffic_condition,
    status_message,
)
from agent_rollout.tick import LIVE_PHASES, Tick

__all__ = [
    "Reason",
    "analysis_windows",
    "fast_gates",
    "gate_windows",
    "note_route_failure",
    "plan",
    "spec_problems",
]

# Shortest window a gate is measured over, and the step windows are rounded down to: a window may not
# reach back before the step began (or before the gate's last counted failure), so right after either
# a gate waits up to this long for samples of its own; rounding keeps the windows of many rollouts
# few, so they still share building-block queries.
MIN_WINDOW_SECONDS = 5
# The windows a clamped gate rounds down to: 5 s times a power of two or three times one (5, 10, 15,
# 20, 30, 40, 60, 80, 120, ...), each at most 1.5 times the last. Rollouts whose steps began at
# different moments then share a handful of windows, so the building-block queries (each returns a
# series for every rollout) stay a handful too: with every 5 s a window of its own, 10,000 rollouts
# starting over a few minutes asked Prometheus for dozens of full-fleet vectors a second.
WINDOW_LADDER = tuple(sorted({MIN_WINDOW_SECONDS * f * 2**k for k in range(20) for f in (1, 3)}))
# After a counted failure a gate's window starts this much later: one burst is one failure when it ends
# within this long after the failure was seen; a sustained breach fails again after grace + min window.
FAILURE_GRACE_SECONDS = 5
# An evaluation Job still not finished this long after its deadline failed to run at all (its pod never
# started, or the Job controller is down): the step fails rather than waiting for ever.
EVALUATION_GRACE_SECONDS = 60
# A pause (or shadow step) that is over but held by an unreadable Prometheus is tried again after this,
# twice as long after each further failure, at most an interval (_requeue_after).
PROMETHEUS_RETRY_SECONDS = 5.0


def spec_problems(spec: AgentRolloutSpec | None, obs: Observations) -> list[SpecProblem]:
    """The spec's problems as the shell found them: parse errors or validation.validate's, found once
    per reconcile (the shell needs them first, to ask Prometheus nothing for an invalid spec)."""
    found = list(obs.problems)
    if spec is None and not found:
        found.append(SpecProblem("spec", "spec could not be parsed"))
    return list(dict.fromkeys(found))


def _times_failed(gate: str, count: int, limit: int) -> str:
    return f"gate {gate} failed {count} time{'' if count == 1 else 's'} (limit {limit})"


def plan(spec: AgentRolloutSpec | None, status: AgentRolloutStatus, obs: Observations, now: datetime) -> Plan:
    """The complete new status and the actions for one reconcile. `spec` is None when it did not parse
    (obs.problems then says why). Never mutates its inputs; the same inputs give the same Plan."""
    t = Tick(obs=obs, now=utc(now), st=_own_copy(status), first_sight=first_sight(status))
    if spec is not None:
        t.history_limit = spec.history_limit
    if obs.generation is not None:
        t.st.observed_generation = obs.generation
    _recover(t)
    problems = spec_problems(spec, obs)
    if spec is None or problems:
        _fail(t, spec, problems)
    elif obs.route_claimed_by is not None:
        t.waiting = f"holding: the route is managed by AgentRollout {obs.route_claimed_by}"
    else:
        observe_candidate_author(t)
        take_approval(t, spec)  # before the rules that may end the step or the attempt it was given for
        _reconcile(t, spec)
    interrupt_if_left(t, spec)
    follow_capacity(t, spec)
    _record_baseline(t, spec, _baseline_blocked(spec, problems, obs))
    settle_weights(t, spec)
    _keep_candidate_out(t, status.weights)
    request_weights(t, wanted_mirror(spec, t.st, t.obs) if not problems else None)
    set_traffic_condition(t, spec)
    set_completed_condition(t)
    # The acknowledgement carries no readiness card (two thirds of its bytes): at 10,000 new rollouts
    # it is the write every one of them waits for, and the step that follows at once writes the card.
    if spec is not None and not problems and not (t.first_sight and t.st.phase is Phase.PENDING):
        t.st.readiness = _card(t.st, spec)
        _set_stages_condition(t, spec)
    t.st.message = status_message(t, spec, problems)
    t.st.step = _step_label(t.st, spec)
    requeue = _requeue_after(t, spec)
    if t.st.capacity_rollback is not None:
        deadline = capacity_requeue(t.st.capacity_rollback.deadline, t.now)
        requeue = deadline if requeue is None or deadline is None else min(requeue, deadline)
    return Plan(status=t.st, actions=tuple(t.actions), requeue_after=requeue)


def after_route_write(
    spec: AgentRolloutSpec | None,
    planned: Plan,
    obs: Observations,
    shown: SetWeights,
    intent: RouteIntent,
    now: datetime,
) -> Plan:
    """`planned`'s status as the next reconcile would write it once the route shows what `planned`
    asked for and the shell wrote: the route watch wakes the rollout right after the write, and
    without this its status differed from ours only in what is derived from the route (the message,
    TrafficRouted), which cost every step change a second status write.

    Only a refinement: a plan that would decide anything (an action) is not taken here; the next
    reconcile takes it with its own write. Nothing is measured for it (a gate window that begins now
    has no samples yet)."""
    if spec is None:
        return planned
    seen = replace(
        obs,
        route_weights=shown.weights,
        route_error=None,
        route_mirror=shown.mirror,
        route_mirror_exact=True,
        route_intent=intent,
        gates=None,
        prometheus_error=None,
        candidate_requests=None,
        milestone=None,
        baseline=None,
        drill_gates=None,
        shadow_pairs=None,
    )
    again = plan(spec, planned.status, seen, now)
    if again.actions:
        return planned
    requeue = [r for r in (planned.requeue_after, again.requeue_after) if r is not None]
    return Plan(status=again.status, actions=planned.actions, requeue_after=min(requeue) if requeue else None)


def _own_copy(status: AgentRolloutStatus) -> AgentRolloutStatus:
    """A copy of `status` the tick may change. Built again from its plain data: pydantic's deep copy
    was most of a steady reconcile's CPU (~0.13 ms of a 0.3 ms plan for a 6 KB status), and at 10,000
    rollouts on a 30s interval that is 333 plans a second on one core."""
    return AgentRolloutStatus.model_validate(status.model_dump())


def note_route_failure(
    status: AgentRolloutStatus, previous: AgentRolloutStatus, failure: RouteFailure, now: datetime
) -> Plan:
    """The status to write when the route write of a plan was not taken: the plan's decisions stand
    (they are already in `status`), TrafficRouted says why the route lags, and a Warning Event goes
    out when the failure is new since `previous` (the status the plan started from), so a refusal
    retried every few seconds is one Event, not thousands."""
    t = Tick(obs=Observations(), now=utc(now), st=_own_copy(status))
    reason = CR.ROUTE_WRITE_REFUSED if failure.permanent else CR.ROUTE_WRITE_FAILED
    old = find_condition(previous.conditions, CT.TRAFFIC_ROUTED.value)
    message = f"route write {'refused' if failure.permanent else 'failed'}: {failure.detail}"
    condition(t, CT.TRAFFIC_ROUTED, "False", reason, message)
    if old is None or (old.reason, old.message) != (reason.value, message):
        t.actions.append(EmitEvent(type="Warning", reason=Reason.ROUTE_WRITE_FAILED.value, message=message))
    return Plan(status=t.st, actions=tuple(t.actions))


def fast_gates(spec: AgentRolloutSpec, status: AgentRolloutStatus) -> tuple[str, ...]:
    """The gates checked every second between evaluations (the shell's sentinel): hard bounds (`min`,
    `max`) of built-in templates, which read the building blocks every rollout shares, while the
    candidate takes traffic in a live phase. A breach only wakes the rollout: the evaluation that
    follows, on the same blocks, decides with every rule (failureLimit, windows, dry runs)."""
    if spec.analysis is None or status.phase not in LIVE_PHASES or status.weights.candidate == 0:
        return ()
    return tuple(
        g.name
        for g in spec.analysis.gates
        if g.template not in (None, api.Template.SHADOW_AGREEMENT)  # never with candidate weight
        and (g.min is not None or g.max is not None)
        and not g.dry_run
    )


def gate_windows(spec: AgentRolloutSpec, status: AgentRolloutStatus, now: datetime) -> dict[str, int | None]:
    """Seconds of data each gate is judged on at `now`: its window, clamped so it never reaches back
    before the current step began or before the gate's last counted failure. A new candidate revision
    (same version label) or a new weight is then judged on its own samples only, and the samples of
    one burst that failed a gate once are not counted again by the overlapping windows that follow.
    None: less than MIN_WINDOW_SECONDS since that moment, so the gate is not measured this time."""
    if spec.analysis is None:
        return {}
    return analysis_windows(spec.analysis, status.step_started_at, status.last_failure_at, now)


def analysis_windows(
    analysis: Analysis, step_started_at: str | None, last_failure_at: Mapping[str, str], now: datetime
) -> dict[str, int | None]:
    """gate_windows from only what it depends on: the gates and the two anchors in status."""
    windows: dict[str, int | None] = {}
    started = parse_time(step_started_at)
    for gate in analysis.gates:
        full = math.floor(api.duration_seconds(gate.window))
        anchors = [a for a in (started, parse_time(last_failure_at.get(gate.name))) if a is not None]
        if not anchors:
            windows[gate.name] = full
            continue
        elapsed = (utc(now) - max(anchors)).total_seconds()
        if elapsed >= full:
            windows[gate.name] = full
        elif elapsed < MIN_WINDOW_SECONDS:
            windows[gate.name] = None
        else:
            windows[gate.name] = _ladder_floor(elapsed)
    return windows


def steady_gates(
    spec: AgentRolloutSpec, status: AgentRolloutStatus, now: datetime, seconds: float
) -> frozenset[str]:
    """The gates whose window was already whole `seconds` before `now`: an answer that old holds no
    sample from before the step began or the gate's last counted failure, so it may be judged (an
    answer is stale by at most the time since its query was sent, analysis.prometheus.evaluation_ages)."""
    if spec.analysis is None:
        return frozenset()
    back = gate_windows(spec, status, utc(now) - timedelta(seconds=seconds))
    whole = analysis_windows(spec.analysis, None, {}, now)
    return frozenset(name for name, window in back.items() if window is not None and window == whole[name])


def _ladder_floor(seconds: float) -> int:
    """The longest ladder window not longer than `seconds` (>= MIN_WINDOW_SECONDS)."""
    window: int = WINDOW_LADDER[bisect.bisect_right(WINDOW_LADDER, seconds) - 1]
    return window


# ---------------------------------------------------------------- stages


def _recover(t: Tick) -> None:
    """The route carries a write-ahead record newer than status: our status write after it was lost
    (a crash between the two writes, a refused status write). Resume from the record, so traffic
    never moves backwards, and record what was decided; only the evidence of that decision is lost."""
    intent, st = t.obs.route_intent, t.st
    if intent is None or intent.sequence <= st.sequence:
        return
    if st.candidate_revision is not None and intent.revision not in (None, st.candidate_revision):
        return  # written for an earlier candidate: today's planning decides afresh
    if (intent.phase, intent.step, intent.weights) == (st.phase, st.current_step, st.weights):
        return
    entered_step = intent.step != st.current_step
    st.phase, st.current_step, st.weights = intent.phase, intent.step, intent.weights.model_copy()
    st.candidate_revision = intent.revision or st.candidate_revision
    st.step_started_at = intent.step_started_at
    st.promote = st.abort = st.retry = False
    if entered_step:
        st.last_analysis, st.last_analysis_at, st.inconclusive_runs = [], None, {}
        st.approvals = []  # given for the step the lost write left
        # This tick's gates were measured over windows of the step we left: not evidence for this one.
        t.obs = replace(
            t.obs, gates=None, prometheus_error=None, candidate_requests=None, milestone=None, baseline=None
        )
    try:
        reason = Reason(intent.reason)
    except ValueError:
        reason = Reason.RECOVERED
    record(t, reason, f"{intent.message} (recovered from the route's write-ahead record)", [])


def _step_label(st: AgentRolloutStatus, spec: AgentRolloutSpec | None) -> str:
    if spec is None:
        return st.step
    total = len(spec.steps)
    return f"{min(st.current_step + 1, total)}/{total}"


def _fail(t: Tick, spec: AgentRolloutSpec | None, problems: list[SpecProblem]) -> None:
    text = problems_text(problems)
    condition(t, CT.SPEC_VALID, "False", CR.INVALID_SPEC, text)
    if t.st.phase is not Phase.FAILED:
        transition(t, spec, Phase.FAILED, Reason.INVALID_SPEC, f"invalid spec: {text}")


def _keep_candidate_out(t: Tick, before: Weights) -> None:
    """Rolled back or Failed, the candidate's traffic only goes down until a retry or a new revision
    starts over. Legacy-only cannot be routed while legacy is missing, so the weights are held; held,
    they must not rise again: not through a restore earlier in this tick (the candidate served again
    and a gate failed at once), nor by re-asserting them as drift over a route someone moved towards
    legacy. The candidate keeps at most what it had before the tick and what the route shows."""
    st, shown = t.st, t.obs.route_weights if route_readable(t.obs) else None
    if st.phase not in (Phase.ROLLED_BACK, Phase.FAILED):
        return
    most = min(before.candidate, 100 if shown is None else shown.candidate)
    if st.weights.candidate <= most:
        return
    was, st.weights = st.weights, Weights(legacy=100 - most, candidate=most)
    if shown != st.weights:  # a route that already shows them needs no write
        t.weights_reason = Reason.WEIGHTS_RECONCILED.value
    message = (
        f"weights {weights_text(was)} -> {weights_text(st.weights)} for {st.phase.value}: the candidate "
        "gets no more traffic than it had and the route shows"
    )
    record(t, Reason.WEIGHTS_RECONCILED, message, [])


def _reconcile(t: Tick, spec: AgentRolloutSpec) -> None:
    condition(t, CT.SPEC_VALID, "True", CR.VALID, "spec passed validation")
    if t.st.phase is Phase.FAILED:
        revision = t.obs.candidate.template_hash if t.obs.candidate is not None else t.st.candidate_revision
        if t.st.rolled_back_revision is not None and revision == t.st.rolled_back_revision:
            # A candidate rolled back before the spec broke stays rolled back: fixing a typo is no retry.
            message = (
                f"spec is valid again; candidate revision {revision} was rolled back and stays so "
                "(kubectl agentrollout retry, or a new revision, restarts it)"
            )
            transition(t, spec, Phase.ROLLED_BACK, Reason.SPEC_VALID, message)
            return
        # The spec was fixed: start over from step 0 rather than resume under rules that changed.
        t.st.current_step, t.st.step_started_at = 0, None
        transition(t, spec, Phase.PENDING, Reason.SPEC_VALID, "spec is valid again: restarting from step 1")
    legacy_found, candidate_found = _check_targets(t, spec)
    # A decision is recorded even when legacy is missing; the route follows when it returns.
    if _abort(t, spec) or _alert_fired(t, spec):
        return
    if not candidate_found or _new_candidate(t, spec) or _retry(t, spec):
        return
    if t.st.phase is Phase.PENDING:
        if t.obs.queries_unchecked is not None:
            # Nothing moves before every gate can be measured: a rejected query fails the spec instead.
            t.waiting = f"waiting to check the gates' queries with Prometheus: {t.obs.queries_unchecked}"
            condition(t, CT.ANALYSIS_HEALTHY, "Unknown", CR.PROMETHEUS_UNAVAILABLE, t.obs.queries_unchecked)
        elif legacy_found and not cannot_serve(t.obs.candidate):
            _start(t, spec, acknowledge_only=t.first_sight)
        elif legacy_found:
            t.waiting = f"waiting for candidate {spec.candidate.deployment} to have an available replica"
        return
    if t.st.phase not in LIVE_PHASES:
        return
    # Repairs for a status edited by hand or steps removed from the spec: judge the nearest real step.
    t.st.current_step = min(max(t.st.current_step, 0), len(spec.steps) - 1)
    if parse_time(t.st.step_started_at) is None:
        t.st.step_started_at = step_start(t.now)
    if drill_stage(t, spec):
        return  # a rollback drill holds the step: the candidate takes no traffic to judge
    restored = t.st.weights.candidate == 0
    settle_weights(t, spec)  # e.g. the candidate is back: restore its step's weights before judging the step
    if restored and t.st.weights.candidate > 0 and t.weights_reason is not None:
        # The candidate serves again: its step restarts, judged only on samples at this weight.
        t.st.step_started_at = step_start(t.now)
        t.st.last_analysis, t.st.last_analysis_at, t.st.inconclusive_runs = [], None, {}
    # Analysis goes on while a target is missing or unavailable: a candidate that turns bad is rolled
    # back (recorded at once, routed as soon as legacy exists again), but no step is completed.
    held = _analyse(t, spec)
    if t.st.phase not in LIVE_PHASES:
        return
    _record_milestone(t, spec)
    if not legacy_found:
        return
    if cannot_serve(t.obs.candidate):
        t.waiting = f"holding: candidate {spec.candidate.deployment} has no available replica"
        return
    _progress(t, spec, held)


def _check_targets(t: Tick, spec: AgentRolloutSpec) -> tuple[bool, bool]:
    legacy, candidate = t.obs.legacy, t.obs.candidate
    missing = [
        f"{role} Deployment {name} {'not observed' if state is None else 'not found'}"
        for role, name, state in (
            ("legacy", spec.legacy.deployment, legacy),
            ("candidate", spec.candidate.deployment, candidate),
        )
        if not exists(state)
    ]
    if missing:
        text = "; ".join(missing)
        old = find_condition(t.st.conditions, CT.TARGETS_READY.value)
        condition(t, CT.TARGETS_READY, "False", CR.DEPLOYMENT_NOT_FOUND, text)
        t.waiting = f"holding: {text}"
        legacy_lost = legacy is not None and not legacy.exists
        if legacy_lost and t.st.phase in LIVE_PHASES and (old is None or old.message != text):
            # Said at once and loudly: until legacy returns a rollback can only be recorded, not routed.
            message = (
                f"legacy Deployment {spec.legacy.deployment} not found: a rollback has nowhere to go; "
                "analysis goes on, and a rollback decided meanwhile is routed as soon as legacy returns"
            )
            record(t, Reason.LEGACY_NOT_FOUND, message, [])
    else:
        found = f"legacy {spec.legacy.deployment} and candidate {spec.candidate.deployment} found"
        condition(t, CT.TARGETS_READY, "True", CR.DEPLOYMENTS_FOUND, found)
    return exists(legacy), exists(candidate)


def _abort(t: Tick, spec: AgentRolloutSpec) -> bool:
    st = t.st
    if not st.abort or st.phase in (Phase.ROLLED_BACK, Phase.FAILED):
        return False
    if st.candidate_revision is None and t.obs.candidate is not None:
        st.candidate_revision = t.obs.candidate.template_hash  # so that a new revision can restart it
    transition(
        t,
        spec,
        Phase.ROLLED_BACK,
        Reason.ABORTED,
        "aborted by a human (status.abort): all traffic to legacy",
        evidence=st.last_analysis,
        actor=take_request(st, "abort"),
    )
    return True


def _alert_fired(t: Tick, spec: AgentRolloutSpec) -> bool:
    """An incident alert naming the rollout fires (Alertmanager's webhook, alerts.py): roll back at
    once, without waiting for the next evaluation or a failure limit. Only a live rollout is rolled
    back: a promoted candidate is the new normal (its legacy may be gone), and one already rolled back
    stays so. A retry while the alert still fires is rolled back again: resolve the alert first."""
    alerts = t.obs.firing_alerts
    if not alerts or t.st.phase not in LIVE_PHASES:
        return False
    if t.st.candidate_revision is None and t.obs.candidate is not None:
        t.st.candidate_revision = t.obs.candidate.template_hash  # so that a new revision can restart it
    evidence = [
        GateResult(
            name=f"alert:{a.name}",
            verdict=Verdict.FAIL,
            bound=f"firing since {a.starts_at}",
            query=a.labels,
            message=a.summary,
        )
        for a in alerts
    ]
    names = ", ".join(sorted({a.name for a in alerts}))
    message = (
        f"alert {names} fired for this rollout at step {t.st.current_step + 1}/{len(spec.steps)}: "
        "all traffic to legacy"
    )
    transition(t, spec, Phase.ROLLED_BACK, Reason.ALERT_FIRED, message, evidence=evidence)
    return True


def _new_candidate(t: Tick, spec: AgentRolloutSpec) -> bool:
    revision = t.obs.candidate.template_hash if t.obs.candidate is not None else None
    old = t.st.candidate_revision
    if revision is None or revision == old or t.st.phase is Phase.PENDING:
        return False
    if old is None:
        t.st.candidate_revision = revision  # started before the hash was observable: adopt, don't restart
        return False
    _begin(t, spec, Reason.NEW_CANDIDATE, f"new candidate revision {revision} (was {old}), restarting")
    return True


def _retry(t: Tick, spec: AgentRolloutSpec) -> bool:
    """A human retries the same candidate after a rollback (a flaky metric, a fixed dependency).

    The verb only means something to a rolled-back rollout; anywhere else it is consumed without
    effect, so that it cannot fire later, unasked, when a future rollback happens.
    """
    if not t.st.retry:
        return False
    if t.st.phase is not Phase.ROLLED_BACK:
        t.st.retry = False
        return False
    actor = take_request(t.st, "retry")
    _begin(t, spec, Reason.RETRIED, "retried by a human (status.retry)", actor)
    return True


def _start(t: Tick, spec: AgentRolloutSpec, acknowledge_only: bool = False) -> None:
    if not route_readable(t.obs):
        t.waiting = f"waiting for the route: {t.obs.route_error or 'weights could not be read'}"
        return
    if acknowledge_only:
        # A new rollout is acknowledged before anything else: one status write, no Prometheus and no
        # route; step 1 begins on the next reconcile (_requeue_after: at once). When thousands of
        # rollouts are created together, each learns within one write that it was seen and its spec
        # is valid, instead of waiting behind every other one's queries, finalizer and route writes.
        t.waiting = "accepted: the spec is valid; step 1 starts next"
        return
    revision = t.obs.candidate.template_hash if t.obs.candidate is not None else None
    _begin(t, spec, Reason.STARTED, f"started rolling out {spec.candidate.deployment} revision {revision}")


def _begin(t: Tick, spec: AgentRolloutSpec, reason: Reason, message: str, actor: Actor = OPERATOR) -> None:
    """Enter step 0 of a fresh rollout: nothing counted for an earlier attempt carries over."""
    st = t.st
    st.current_step = 0
    st.step_started_at = step_start(t.now)
    st.candidate_revision = t.obs.candidate.template_hash if t.obs.candidate is not None else None
    st.gate_failures, st.consecutive_errors = {}, 0
    st.last_failure_at, st.inconclusive_runs = {}, {}
    st.rolled_back_revision = None
    st.promote = st.abort = st.retry = False
    st.last_analysis, st.last_analysis_at = [], None
    st.readiness = None  # the evidence belongs to the attempt: a new revision earns its own
    # A suite passed by this revision is not run again; any other record belongs to another attempt.
    st.evaluations = [
        r for r in st.evaluations if r.phase == "Passed" and r.revision == st.candidate_revision
    ]
    st.approvals, st.requests = [], None  # approvals were for the attempt's revision; verbs are consumed
    st.attempt_started_at = step_start(t.now)
    st.legacy_replicas_at_start = legacy_ready(t.obs.legacy)  # what a capacity-safe rollback restores
    first = spec.steps[0]
    phase = Phase.PAUSED if is_approval(first) else Phase.PROGRESSING
    transition(
        t, spec, phase, reason, f"{message}: step 1/{len(spec.steps)} ({step_text(first)})", actor=actor
    )


def _analyse(t: Tick, spec: AgentRolloutSpec) -> bool:
    """Record this tick's gate evaluation; roll back on breached limits. True: hold the step."""
    analysis = spec.analysis
    if analysis is None or not analysis.gates:
        t.st.conditions = remove_condition(t.st.conditions, CT.ANALYSIS_HEALTHY)
        return False
    if t.obs.query_rejected is not None:
        return _query_rejected(t, spec, t.obs.query_rejected)
    if t.obs.gates is not None:
        return _record_evaluation(t, spec, analysis, t.obs.gates)
    if t.obs.prometheus_error is not None:
        return _prometheus_down(t, spec, analysis, t.obs.prometheus_error)
    return False  # analysis not due this tick: the latest evaluation stands


def _record_evaluation(
    t: Tick, spec: AgentRolloutSpec, analysis: Analysis, gates: tuple[GateResult, ...]
) -> bool:
    st = t.st
    # A gate too fresh to measure is not in `gates`: it neither changes nor clears what status holds.
    results = [latest_evidence(r) for r in gates]
    if not results:
        return False
    st.consecutive_errors = 0
    t.latest = results
    if _worth_writing(st, results, t.now, t.obs.analysis_refresh):
        st.last_analysis, st.last_analysis_at = results, iso(t.now)
    condition(t, CT.ANALYSIS_HEALTHY, "True", CR.EVALUATED, "the latest gate evaluation ran")
    failures, failed_at = dict(st.gate_failures), dict(st.last_failure_at)
    runs = dict(st.inconclusive_runs)
    serving = st.weights.candidate > 0 and route_shows(t.obs, st.weights)
    breached, stuck = [], []
    for result in results:
        if _dry_run(result, analysis):
            continue
        if result.verdict is Verdict.FAIL:
            failures[result.name] = failures.get(result.name, 0) + 1
            # The next failure of this gate counts only samples newer than this one, and not the
            # next FAILURE_GRACE_SECONDS either: the fast check sees a burst while it is still going
            # on, and its tail must not fail the gate a second time (gate_windows).
            failed_at[result.name] = step_start(t.now + timedelta(seconds=FAILURE_GRACE_SECONDS))
            if failures[result.name] > _failure_limit(result.name, analysis):
                breached.append(result)
        if analysis.inconclusive_limit is None:
            continue  # counted only when limited, so an unlimited steady state writes nothing
        if result.verdict is Verdict.INCONCLUSIVE and serving:
            runs[result.name] = runs.get(result.name, 0) + 1
            if runs[result.name] > analysis.inconclusive_limit:
                stuck.append(result)
        else:
            runs.pop(result.name, None)
    st.gate_failures, st.last_failure_at, st.inconclusive_runs = failures, failed_at, runs
    if not breached and stuck:
        return _inconclusive_limit(t, spec, analysis, stuck)
    if not breached:
        return False
    counts = ", ".join(
        _times_failed(r.name, failures[r.name], _failure_limit(r.name, analysis)) for r in breached
    )
    message = f"{counts} at step {st.current_step + 1}/{len(spec.steps)}: all traffic to legacy"
    transition(t, spec, Phase.ROLLED_BACK, Reason.GATE_FAILED, message, evidence=breached)
    return True


def _worth_writing(st: AgentRolloutStatus, results: list[GateResult], now: datetime, refresh: float) -> bool:
    """lastAnalysis is rewritten when a verdict changes (a decision may follow) or when the stored
    values are older than `refresh` seconds (default 5 minutes); a steady rollout whose values drift
    within their bounds then costs one status write per refresh, not one per evaluation. Decisions
    always use this evaluation's results (Tick.latest), never the stored copy."""
    if [(r.name, r.verdict) for r in results] != [(r.name, r.verdict) for r in st.last_analysis]:
        return True
    if results == st.last_analysis:
        return False
    written = parse_time(st.last_analysis_at)
    return written is None or (utc(now) - written).total_seconds() >= refresh


def _inconclusive_limit(t: Tick, spec: AgentRolloutSpec, analysis: Analysis, stuck: list[GateResult]) -> bool:
    """The candidate takes traffic but a gate has had no verdict too many times in a row: a candidate
    that serves without exporting data must not hold its share forever."""
    st = t.st
    names = ", ".join(f"{r.name} ({st.inconclusive_runs[r.name]} in a row)" for r in stuck)
    limit = analysis.inconclusive_limit
    position = f"step {st.current_step + 1}/{len(spec.steps)}"
    if analysis.on_inconclusive_limit is OnInconclusiveLimitPolicy.ROLLBACK:
        message = (
            f"gates inconclusive beyond inconclusiveLimit {limit}: {names} at {position}: "
            "all traffic to legacy"
        )
        transition(t, spec, Phase.ROLLED_BACK, Reason.INCONCLUSIVE_LIMIT, message, evidence=stuck)
    elif st.phase is not Phase.PAUSED:
        message = (
            f"{position} paused: gates inconclusive beyond inconclusiveLimit {limit}: {names}; "
            "set status.promote or status.abort"
        )
        transition(t, spec, Phase.PAUSED, Reason.INCONCLUSIVE_LIMIT, message, evidence=stuck)
    return True


def _query_rejected(t: Tick, spec: AgentRolloutSpec, error: str) -> bool:
    """Prometheus refuses a gate's query as invalid (it passed the check before the first step, so
    Prometheus changed): the candidate can never be judged, whatever failureLimit or
    onPrometheusError say, so its traffic goes back to legacy at once."""
    condition(t, CT.ANALYSIS_HEALTHY, "False", CR.QUERY_REJECTED, error)
    message = f"{error}: the candidate cannot be judged; all traffic to legacy"
    transition(t, spec, Phase.ROLLED_BACK, Reason.QUERY_REJECTED, message, evidence=t.st.last_analysis)
    return True


def _prometheus_down(t: Tick, spec: AgentRolloutSpec, analysis: Analysis, error: str) -> bool:
    st = t.st
    st.consecutive_errors += 1
    limit, policy = analysis.consecutive_error_limit, analysis.on_prometheus_error
    in_a_row = f"{st.consecutive_errors} in a row, limit {limit} then {policy.value}"
    condition(t, CT.ANALYSIS_HEALTHY, "Unknown", CR.PROMETHEUS_UNAVAILABLE, f"{error} ({in_a_row})")
    if st.consecutive_errors > limit and policy is OnFailurePolicy.ROLLBACK:
        message = f"Prometheus unavailable ({in_a_row}): {error}; all traffic to legacy"
        transition(
            t, spec, Phase.ROLLED_BACK, Reason.PROMETHEUS_UNAVAILABLE, message, evidence=st.last_analysis
        )
    else:
        t.waiting = f"holding: Prometheus unavailable ({in_a_row}): {error}"
    return True  # never promote on missing data


def _progress(t: Tick, spec: AgentRolloutSpec, held: bool) -> None:
    st = t.st
    step = spec.steps[st.current_step]
    if step.approval is not None:
        # Only the approvers end an approval step; promote is refused, so it cannot route around them.
        if st.promote:
            refuse_promote(t, spec, step.approval)
        if not held and not approval_holds(t, spec, step.approval):
            _complete_step(t, spec, manual=False)
        return
    if st.promote:
        st.promote = False
        _complete_step(t, spec, manual=True, actor=take_request(st, "promote"))
        return
    if held or st.phase is Phase.PAUSED:
        return
    position = f"step {st.current_step + 1}/{len(spec.steps)}"
    if is_approval(step):
        message = f"{position} waits for approval: set status.promote"
        transition(t, spec, Phase.PAUSED, Reason.AWAITING_APPROVAL, message)
        return
    if not route_readable(t.obs):
        t.waiting = f"holding: route unavailable: {t.obs.route_error or 'weights could not be read'}"
        return
    if not route_shows(t.obs, st.weights):
        t.waiting = f"waiting for the route to show {weights_text(st.weights)}"
        return
    if step.pause is not None and not _pause_over(t, step.pause):
        return
    if step.shadow is not None and not shadow_over(t, spec, step.shadow):
        return  # the gates still judge the shadow traffic meanwhile, and roll back on a failure
    if step.evaluate is not None:
        # The suite is the step's verdict: the gates measure user traffic, which the candidate does not
        # get during an evaluation (they would hold the step for ever), and a failing gate still rolls back.
        if _evaluation_passed(t, spec, step.evaluate):
            _complete_step(t, spec, manual=False)
        return
    if milestone_due(spec, st) is not None:
        seen, n = t.obs.candidate_requests, spec.steps[st.current_step].milestone
        assert n is not None
        t.waiting = (
            f"waiting for milestone: candidate requests {'?' if seen is None else seen}/{n.transactions}"
        )
        return
    blocking = _blocking_gates(judged_analysis(spec, st), st.last_analysis)
    if not blocking:
        _complete_step(t, spec, manual=False)
        return
    inconclusive = [r for _, r in blocking if r is not None and r.verdict is Verdict.INCONCLUSIVE]
    if (
        inconclusive
        and spec.analysis is not None
        and spec.analysis.on_inconclusive is OnInconclusivePolicy.PAUSE
    ):
        names = ", ".join(r.name for r in inconclusive)
        message = f"{position} paused: gates inconclusive ({names}); set status.promote or status.abort"
        transition(t, spec, Phase.PAUSED, Reason.INCONCLUSIVE, message, evidence=inconclusive)
        return
    if inconclusive and _escalation_due(t, step):
        names = ", ".join(r.name for r in inconclusive)
        assert step.escalate is not None
        message = (
            f"{position} escalated: gates inconclusive ({names}) for {step.escalate.after} on the step; "
            "paused for a human: set status.promote or status.abort"
        )
        transition(t, spec, Phase.PAUSED, Reason.ESCALATED, message, evidence=inconclusive)
        return
    name, result = blocking[0]
    t.waiting = waiting_text(result) if result is not None else f"waiting for analysis of gate {name}"


def _evaluation_passed(t: Tick, spec: AgentRolloutSpec, evaluate: api.Evaluate) -> bool:
    """Run the step's evaluation Job once per candidate revision and attempt, and judge its result.
    True when it passed (now or before, for this revision): the step may complete."""
    st, index = t.st, t.st.current_step
    position = f"step {index + 1}/{len(spec.steps)}"
    if _evaluation_done(st, index):
        return True  # a passed suite never reruns for the same candidate revision
    seen = t.obs.evaluation
    if seen is None or seen.step != index:
        t.waiting = "starting the evaluation Job"
        return False
    record_ = next((r for r in st.evaluations if r.job == seen.job), None)
    if record_ is None:
        record_ = api.EvaluationRecord(
            step=index, revision=st.candidate_revision, job=seen.job, started_at=iso(t.now)
        )
        st.evaluations = [*st.evaluations, record_][-evaluation.RECORDS_KEPT :]
        if seen.state == "absent":
            t.actions.append(RunEvaluation(step=index, job=seen.job))
        revision = st.candidate_revision
        message = f"{position}: evaluation Job {seen.job} started against candidate revision {revision}"
        record(t, Reason.EVALUATION_STARTED, message, [])
        t.waiting = f"evaluation Job {seen.job} running"
        return False
    if record_.phase == "Failed":
        return False  # judged already (paused for a human: promote ends the step, abort rolls back)
    if seen.state == "absent":
        t.actions.append(RunEvaluation(step=index, job=seen.job))  # deleted by someone: run it again
        t.waiting = f"evaluation Job {seen.job} not found, creating it again"
        return False
    if seen.state == "running":
        # The Job's activeDeadlineSeconds ends it at the timeout; this catches a Job that never starts.
        deadline = _evaluation_deadline(record_, evaluate)
        if deadline is not None and t.now > deadline:
            _evaluation_failed(t, spec, evaluate, record_, f"timed out after {evaluate.timeout}", [], [])
        else:
            t.waiting = f"evaluation Job {seen.job} running since {record_.started_at}"
        return False
    if seen.state == "failed":
        _evaluation_failed(t, spec, evaluate, record_, f"the Job failed: {seen.message}", [], [])
        return False
    result = evaluation.parse_result(seen.message)
    if isinstance(result, str):
        _evaluation_failed(t, spec, evaluate, record_, f"no readable result: {result}", [], [])
        return False
    ok, evidence, failed_cases = evaluation.judge(evaluate, result)
    done = record_.model_copy(
        update=dict(
            phase="Passed" if ok else "Failed",
            finished_at=iso(t.now),
            total=result.total,
            passed=result.passed,
            accuracy=round(result.passed / result.total, 4) if result.total else 0.0,
            failed_cases=failed_cases,
        )
    )
    st.evaluations = [done if r.job == done.job else r for r in st.evaluations]
    if not ok:
        text = "; ".join(
            r.message or f"{r.name} {r.value} not {r.bound}" for r in evidence if r.verdict is Verdict.FAIL
        )
        _evaluation_failed(t, spec, evaluate, done, text, evidence, failed_cases)
        return False
    t.latest = evidence  # the step's completion records the suite's figures as its evidence
    return True


def _evaluation_failed(
    t: Tick,
    spec: AgentRolloutSpec,
    evaluate: api.Evaluate,
    record_: api.EvaluationRecord,
    why: str,
    evidence: list[GateResult],
    failed_cases: list[str],
) -> None:
    st = t.st
    failed = record_.model_copy(
        update={"phase": "Failed", "finished_at": record_.finished_at or iso(t.now), "message": why[:512]}
        | ({"failed_cases": failed_cases} if failed_cases else {})
    )
    st.evaluations = [failed if r.job == failed.job else r for r in st.evaluations]
    if not evidence:
        evidence = [
            GateResult(name="evaluation", verdict=Verdict.FAIL, message=why, query=f"job {record_.job}")
        ]
    position = f"step {st.current_step + 1}/{len(spec.steps)}"
    if evaluate.on_failure == "pause":
        message = f"{position}: evaluation failed ({why}); paused: set status.promote or status.abort"
        transition(t, spec, Phase.PAUSED, Reason.EVALUATION_FAILED, message, evidence=evidence)
    else:
        message = f"{position}: evaluation failed ({why}): candidate rolled back, all traffic to legacy"
        transition(t, spec, Phase.ROLLED_BACK, Reason.EVALUATION_FAILED, message, evidence=evidence)


def _evaluation_done(st: AgentRolloutStatus, index: int) -> bool:
    """Step `index`'s suite passed for the candidate revision (any other record is another attempt's)."""
    return any(
        r.step == index and r.revision == st.candidate_revision and r.phase == "Passed"
        for r in st.evaluations
    )


def _evaluation_deadline(record_: api.EvaluationRecord, evaluate: api.Evaluate) -> datetime | None:
    """When a run still not finished fails: the Job's timeout plus a grace for a Job that never started."""
    started = parse_time(record_.started_at)
    limit = api.duration_seconds(evaluate.timeout) + EVALUATION_GRACE_SECONDS
    return started + timedelta(seconds=limit) if started is not None else None


def _escalation_due(t: Tick, step: api.Step) -> bool:
    """The step has held on inconclusive gates for `escalate.after` since it began."""
    started = parse_time(t.st.step_started_at)
    if step.escalate is None or started is None:
        return False
    return (t.now - started).total_seconds() >= api.duration_seconds(step.escalate.after)


def _pause_over(t: Tick, pause: Pause) -> bool:
    end = pause_end(t.st, pause)
    if end is not None and t.now < end:
        t.waiting = f"pausing until {iso(end)}"
        return False
    seen = t.obs.candidate_requests
    if pause.min_requests is not None and (seen is None or seen < pause.min_requests):
        t.waiting = f"waiting for candidate requests {'?' if seen is None else seen}/{pause.min_requests}"
        return False
    return True


def _complete_step(t: Tick, spec: AgentRolloutSpec, *, manual: bool, actor: Actor = OPERATOR) -> None:
    st = t.st
    if _stage_holds(t, spec, manual=manual):
        return
    done, total = st.current_step, len(spec.steps)
    evidence = list(t.latest if t.latest is not None else st.last_analysis)
    how = "approved by a human (status.promote)" if manual else "completed"
    if done + 1 >= total:
        st.current_step = total  # past the last step, as Argo Rollouts marks a finished rollout
        message = f"step {done + 1}/{total} {how}: candidate promoted to all traffic"
        transition(t, spec, Phase.PROMOTED, Reason.PROMOTED, message, evidence=evidence, actor=actor)
        return
    following = spec.steps[done + 1]
    st.current_step, st.step_started_at = done + 1, step_start(t.now)
    st.last_analysis, st.last_analysis_at, st.inconclusive_runs = [], None, {}
    st.approvals = []  # given for the step that ended
    phase = Phase.PAUSED if is_approval(following) else Phase.PROGRESSING
    reason = Reason.MANUAL_PROMOTION if manual else Reason.STEP_COMPLETED
    message = f"step {done + 1}/{total} {how}; entering step {done + 2}/{total} ({step_text(following)})"
    transition(t, spec, phase, reason, message, evidence=evidence, actor=actor)


# ---------------------------------------------------------------- readiness


def _milestones(st: AgentRolloutStatus) -> list[api.MilestoneRecord]:
    return list(st.readiness.milestones) if st.readiness is not None else []


def _card(
    st: AgentRolloutStatus, spec: AgentRolloutSpec, milestones: list[api.MilestoneRecord] | None = None
) -> api.ReadinessStatus:
    found = _milestones(st) if milestones is None else milestones
    return scorecard(
        spec, found, st.baseline, st.candidate_revision, drill_evidence(st), evaluation_evidence(st)
    )


def _baseline_blocked(
    spec: AgentRolloutSpec | None, problems: list[SpecProblem], obs: Observations
) -> str | None:
    """Why no baseline can be measured this tick whatever the phase (the shell measures none then)."""
    if spec is None or problems:
        return "the spec is invalid"
    if obs.route_claimed_by is not None:
        return f"the route is managed by AgentRollout {obs.route_claimed_by}"
    if not exists(obs.candidate):
        return f"candidate Deployment {spec.candidate.deployment} not found"
    return None


def _record_baseline(t: Tick, spec: AgentRolloutSpec | None, blocked: str | None) -> None:
    """The candidate revision's baseline against legacy, compared with the previous promoted revision's.

    At promotion, once: evidence, not a decision, so no Decision and no Event (the promotion was both).
    On demand (status.recordBaseline, after the phase changes of this tick): a Decision and an Event when
    recorded, or when refused (the phase has no candidate and legacy traffic to compare), and the verb is
    consumed either way; it stays set only while the measurement it asked for has not come in."""
    st, seen = t.st, t.obs.baseline
    asked = st.record_baseline
    refused = blocked if spec is None or blocked is not None else baseline_refusal(spec, st)
    if asked and refused is not None:
        st.record_baseline = False
        actor = take_request(st, "record_baseline")
        record(t, Reason.BASELINE_REFUSED, f"status.recordBaseline not applied: {refused}", [], actor)
        return
    if spec is None or blocked is not None or not (asked or promotion_baseline_due(st)):
        return
    if seen is None or seen.revision != st.candidate_revision:
        return  # measured next tick (the shell measures while baseline_due), or for another revision
    previous = comparison_base(st.baseline, seen.revision)
    st.baseline = baseline_record(
        seen.gates, seen.window_seconds, seen.revision, previous, iso(t.now), st.phase, on_demand=asked
    )
    if not asked:
        return
    st.record_baseline = False
    actor = take_request(st, "record_baseline")
    cost = next((m for m in st.baseline.metrics if m.name == COST), None)
    costs = (
        "no cost data"
        if cost is None or cost.candidate is None
        else (
            f"cost per transaction {cost.candidate:.4g} (legacy "
            + ("no data" if cost.legacy is None else f"{cost.legacy:.4g}")
            + ")"
        )
    )
    message = (
        f"baseline of candidate revision {seen.revision} recorded on demand (status.recordBaseline) in "
        f"{st.phase.value} over the last {seen.window_seconds}s against legacy: {costs}"
    )
    record(t, Reason.BASELINE_RECORDED, message, [], actor)


def _record_milestone(t: Tick, spec: AgentRolloutSpec) -> None:
    """The current step's first N transactions are in: record every gate over exactly that window, once."""
    st, seen = t.st, t.obs.milestone
    due = milestone_due(spec, st)
    if due is None or seen is None or seen.step != st.current_step or seen.requests < due.transactions:
        return
    if st.step_started_at is None or len(_milestones(st)) >= api.MILESTONE_LIMIT:
        return
    # Kept as the history keeps evidence (texts cut short): up to MILESTONE_LIMIT records stay in status.
    evidence = [history_evidence(r) for r in seen.gates]
    record_ = milestone_record(
        spec,
        st.current_step,
        st.step_started_at,
        seen.window_seconds,
        seen.requests,
        tuple(evidence),
        iso(t.now),
    )
    st.readiness = _card(st, spec, [*_milestones(st), record_])
    rate = "no data" if record_.error_rate is None else f"{record_.error_rate:.4g}"
    message = (
        f"milestone of step {st.current_step + 1}/{len(spec.steps)}: first {record_.requests} candidate "
        f"transactions (of {due.transactions} required) over {seen.window_seconds}s, error rate {rate}: "
        f"{record_.score.value}"
    )
    record(t, Reason.MILESTONE_RECORDED, message, record_.gates)


def _raised_weight(spec: AgentRolloutSpec, index: int) -> tuple[int, str]:
    """The candidate weight completing step `index` leads to, and what leads there."""
    following = index + 1
    if following >= len(spec.steps):
        return 100, "the promotion"
    step = f"step {following + 1}/{len(spec.steps)} ({step_text(spec.steps[following])})"
    return step_weights(spec.steps, following).candidate, step


def _stage_hold_text(t: Tick, spec: AgentRolloutSpec) -> str | None:
    """Why completing the current step is not allowed by spec.readiness.requireStages, or None."""
    weight, what = _raised_weight(spec, t.st.current_step)
    unmet = unmet_requirement(spec, _card(t.st, spec), weight)
    text = hold_text(*unmet) if unmet is not None else drill_hold_text(spec, t.st, weight, t.now)
    if text is None:
        return None
    return f"{what} would raise the candidate weight to {weight}: {text}"


def _stage_holds(t: Tick, spec: AgentRolloutSpec, *, manual: bool) -> bool:
    """Hold the step while a required stage is not Met; one Decision (and Event) per distinct reason."""
    text = _stage_hold_text(t, spec)
    if text is None:
        return False
    t.waiting = f"holding: {text}"
    message = bounded(f"status.promote not applied: {text}" if manual else f"holding: {text}")
    last = t.st.history[-1] if t.st.history else None
    if manual or last is None or (last.reason, last.message) != (Reason.STAGE_REQUIRED.value, message):
        record(t, Reason.STAGE_REQUIRED, message, [])
    return True


def _set_stages_condition(t: Tick, spec: AgentRolloutSpec) -> None:
    """StagesReady: may the next weight raise happen as far as spec.readiness.requireStages go (level-based,
    so it warns before the step is otherwise ready); absent when nothing is required or nothing is live."""
    required = spec.readiness.require_stages or spec.readiness.require_drill is not None
    if not required or t.st.phase not in LIVE_PHASES:
        t.st.conditions = remove_condition(t.st.conditions, CT.STAGES_READY)
        return
    text = _stage_hold_text(t, spec)
    if text is None:
        condition(t, CT.STAGES_READY, "True", CR.STAGES_MET, "the required stages allow the next weight")
    else:
        condition(t, CT.STAGES_READY, "False", CR.STAGE_NOT_MET, text)


# ---------------------------------------------------------------- helpers


def first_sight(status: AgentRolloutStatus) -> bool:
    """A rollout whose spec the operator has never judged (no SpecValid condition, which only the
    operator writes): its first reconcile only acknowledges it, and the shell measures nothing for it."""
    return status.phase is Phase.PENDING and find_condition(status.conditions, CT.SPEC_VALID.value) is None


def _requeue_after(t: Tick, spec: AgentRolloutSpec | None) -> float | None:
    """Seconds until the current pause ends, so the shell can reconcile then instead of an interval later;
    a baseline still to measure keeps a finished rollout on its interval until it lands (a finished
    rollout otherwise rests until something changes). An acknowledgement is followed at once."""
    st = t.st
    if t.first_sight and st.phase is Phase.PENDING and spec is not None:
        return 0.0
    if spec is not None and spec.analysis is not None and baseline_due(spec, st):
        return api.duration_seconds(spec.analysis.interval)
    if spec is None or st.phase is not Phase.PROGRESSING or st.current_step >= len(spec.steps):
        return None
    evaluate = spec.steps[st.current_step].evaluate
    if evaluate is not None:
        return _evaluation_due(t, evaluate)
    pause = spec.steps[st.current_step].pause
    end = pause_end(st, pause) if pause is not None else None
    shadow = current_shadow(spec, st)
    if shadow is not None:
        end = shadow_end(st, shadow)
    left = (end - t.now).total_seconds() if end is not None else 0.0
    if left > 0:
        return left
    if end is not None and t.obs.prometheus_error is not None and spec.analysis is not None:
        # Over, and held only because Prometheus could not be read: the decision is still due, so
        # it is tried again soon, ranked as due, backing off to the interval. Left to the interval's
        # run, 20 pauses of 10,000 rollouts ended 132-136 s late: those runs queued behind the others.
        interval = api.duration_seconds(spec.analysis.interval)
        return min(PROMETHEUS_RETRY_SECONDS * 2.0 ** min(t.st.consecutive_errors - 1, 16), interval)
    return None


def _evaluation_due(t: Tick, evaluate: api.Evaluate) -> float | None:
    """Soon when the step's Job is still to be created (the shell observes it on the next reconcile);
    at the deadline while it runs (the Jobs informer wakes the rollout when it finishes)."""
    st = t.st
    running = [r for r in st.evaluations if r.step == st.current_step and r.phase == "Running"]
    if not running:
        return None if _evaluation_done(st, st.current_step) else 1.0
    deadline = _evaluation_deadline(running[-1], evaluate)
    return 1.0 if deadline is None else max(1.0, (deadline - t.now).total_seconds())


def _blocking_gates(
    analysis: Analysis | None, latest: list[GateResult]
) -> list[tuple[str, GateResult | None]]:
    """Non-dry-run gates without a Pass in the latest evaluation (None: not evaluated yet)."""
    if analysis is None:
        return []
    by_name = {r.name: r for r in latest}
    blocking = []
    for gate in analysis.gates:
        result = by_name.get(gate.name)
        if not gate.dry_run and (result is None or result.verdict is not Verdict.PASS):
            blocking.append((gate.name, result))
    return blocking


def _dry_run(result: GateResult, analysis: Analysis) -> bool:
    gate = next((g for g in analysis.gates if g.name == result.name), None)
    return result.dry_run if gate is None else gate.dry_run


def _failure_limit(name: str, analysis: Analysis) -> int:
    gate = next((g for g in analysis.gates if g.name == name), None)
    if gate is not None and gate.failure_limit is not None:
        return gate.failure_limit
    return analysis.failure_limit
