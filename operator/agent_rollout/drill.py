"""Rollback drills: rehearse the rollback to legacy on a live rollout and measure it (pure rules).

`kubectl agentrollout drill NAME [--stay-rolled-back] [--bound 15m]` sets status.drill. On a rollout at
a weighted step (Progressing or Paused, candidate weight > 0) the planner then:
1. sends all traffic to legacy (route first, with its write-ahead record, as every weight change) and
   records DrillStarted; status.lastDrill says Running. The step, its weights and the candidate
   revision it left are in the record; the candidate's gates are not judged meanwhile (it takes no
   traffic), but abort, an incident alert or a new revision still act and end the drill (Interrupted).
2. notes `routeLegacyAt`, the first reconcile that sees the route at legacy 100;
3. measures the spec's errorRate and latencyQuantile gates that have a `min` or `max` on legacy's own
   series (the same templates and bounds, `compare` dropped: legacy is not compared with itself),
   over the window since routeLegacyAt (at least 5 s), and notes `confirmedAt` when every one passes;
4. passes when confirmed within the bound (status.drill.bound, default
   spec.readiness.criteria.maxRollbackTime, 15m, counted from the start). A gate that fails on legacy,
   or the bound running out unconfirmed, fails the drill.
A drill that passes returns to the step it left at the same weights, and the step starts over there
(its pause, minRequests and gate windows count from the return: the candidate is neither judged on nor
credited with the minutes it took no traffic); with `stayRolledBack` it ends RolledBack instead. A
drill that fails never sends traffic back to the candidate: the rollout ends RolledBack (DrillFailed),
and `kubectl agentrollout retry` restarts it once legacy is fixed.
A drill refuses to start (DrillRefused, the request consumed) where it cannot run or would harm: no
weighted step, no analysis or no gate to judge legacy by, a legacy without every ready replica it
needs (capacity.py: a drill must not overload legacy), or a drill already running.

`spec.readiness.requireDrill: {before: 50, maxAge: 30d}` holds every step (and the promotion) that
would raise the candidate weight above `before` unless a drill passed within maxAge (any revision:
it proves the way back to legacy, not the candidate); the Harden stage's rollback-drill criterion reads
the same records (readiness.py).
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta

from agent_rollout import api
from agent_rollout.analysis.templates import version_values
from agent_rollout.api import (
    AgentRolloutSpec,
    AgentRolloutStatus,
    DrillRecord,
    DrillRequest,
    DrillResult,
    Gate,
    GateResult,
    Phase,
    Template,
    Verdict,
)
from agent_rollout.capacity import ready, required_replicas, shortfall_text
from agent_rollout.clock import parse_time, step_start
from agent_rollout.decisions import Actor, record, take_request, transition
from agent_rollout.domain import Observations, SpecProblem, iso
from agent_rollout.evidence import weights_text
from agent_rollout.reasons import Reason
from agent_rollout.routing import drilling, legacy_only, route, route_readable, route_shows, step_weights
from agent_rollout.statustext import bounded, history_evidence, latest_evidence
from agent_rollout.tick import LIVE_PHASES, Tick

DRILL_TEMPLATES = (Template.ERROR_RATE, Template.LATENCY_QUANTILE)
MIN_WINDOW_SECONDS = 5  # legacy's samples since the route showed legacy 100, before judging them


def drill_gates(spec: AgentRolloutSpec) -> list[Gate]:
    """The gates a drill judges legacy by: acting errorRate/latencyQuantile gates with a hard bound."""
    if spec.analysis is None:
        return []
    return [
        g.model_copy(update={"compare": None})
        for g in spec.analysis.gates
        if g.template in DRILL_TEMPLATES and (g.min is not None or g.max is not None) and not g.dry_run
    ]


def spec_problems(spec: AgentRolloutSpec) -> list[SpecProblem]:
    """requireDrill that no drill could ever satisfy is a spec error, not a rollout held forever."""
    if spec.readiness.require_drill is None or drill_gates(spec):
        return []
    return [
        SpecProblem(
            "spec.readiness.requireDrill",
            "a drill judges legacy by an errorRate or latencyQuantile gate with min or max: none here",
        )
    ]


def running(st: AgentRolloutStatus) -> DrillRecord | None:
    drill = st.last_drill
    return drill if drill is not None and drill.result is DrillResult.RUNNING else None


def drill_window(st: AgentRolloutStatus, now: datetime) -> int | None:
    """Seconds of legacy-only data a running drill is judged on now; None: nothing to measure yet."""
    drill = running(st)
    if drill is None or not drilling(st):
        return None
    since = parse_time(drill.route_legacy_at)
    if since is None:
        return None
    seconds = math.floor((now - since).total_seconds())
    return seconds if seconds >= MIN_WINDOW_SECONDS else None


def drill_spec(spec: AgentRolloutSpec, seconds: int) -> AgentRolloutSpec:
    """The spec whose gates measure legacy (as if it were the candidate) over the last `seconds`."""
    assert spec.analysis is not None
    legacy_version, _ = version_values(spec)
    gates = [
        g.model_copy(update={"window": f"{min(seconds, math.floor(api.duration_seconds(g.window)))}s"})
        for g in drill_gates(spec)
    ]
    metrics = spec.analysis.metrics.model_copy(update={"candidate_version": legacy_version})
    analysis = spec.analysis.model_copy(update={"gates": gates, "metrics": metrics})
    return spec.model_copy(update={"analysis": analysis})


def drill_bound(spec: AgentRolloutSpec, request: DrillRequest) -> str:
    return request.bound or spec.readiness.criteria.max_rollback_time


def refusal(spec: AgentRolloutSpec, st: AgentRolloutStatus, obs: Observations) -> str | None:
    """Why a drill cannot start now, or None."""
    if running(st) is not None:
        return f"a drill is already running (since {st.last_drill.started_at if st.last_drill else '?'})"
    # The step's weight, not the route's: a candidate briefly unavailable (or a status write lost after
    # a route write) may have its share on legacy, and the drill is about the step.
    weight = step_weights(spec.steps, st.current_step).candidate if st.current_step < len(spec.steps) else 0
    if st.phase not in LIVE_PHASES or weight == 0:
        return (
            f"it is {st.phase.value} with candidate weight {weight}: a drill rehearses the "
            "rollback from a weighted step (Progressing or Paused, candidate weight > 0)"
        )
    if not drill_gates(spec):
        return "no errorRate or latencyQuantile gate with min or max to confirm legacy by"
    have, need = ready(obs.legacy), required_replicas(spec, st)
    if have is None or have == 0:
        return f"legacy Deployment {spec.legacy.deployment} has no ready replica"
    if need is not None and have < need:
        return f"{shortfall_text(have, need)}: a drill would overload it (the operator never scales legacy)"
    if not route_readable(obs):
        return f"route unavailable: {obs.route_error or 'weights could not be read'}"
    return None


def drill_stage(t: Tick, spec: AgentRolloutSpec) -> bool:
    """Start, follow or end a drill on a live rollout. True: the drill holds this tick (no analysis of
    the candidate, no step completed)."""
    st = t.st
    drill = running(st)
    if drill is not None and not drilling(st):
        _end(t, spec, drill, DrillResult.INTERRUPTED, "the rollout left the drill's step or revision", [])
        drill = None
    if st.drill is not None:
        request, st.drill = st.drill, None
        actor = take_request(st, "drill")  # who asked, as the apiserver authenticated them
        why_not = refusal(spec, st, t.obs)
        if why_not is not None:
            record(t, Reason.DRILL_REFUSED, f"status.drill not applied: {why_not}", [], actor)
        else:
            _start(t, spec, request, actor)
            return True
    if drill is None:
        return False
    _follow(t, spec, drill)
    return True


def interrupt_if_left(t: Tick, spec: AgentRolloutSpec | None) -> None:
    """A running drill whose rollout left its step, revision or the live phases (abort, alert, new
    revision, invalid spec) ends Interrupted: call once per tick after the phase rules."""
    drill = running(t.st)
    if drill is not None and not drilling(t.st):
        _end(t, spec, drill, DrillResult.INTERRUPTED, f"the rollout is now {t.st.phase.value}", [])
    if t.st.drill is not None and t.st.phase not in LIVE_PHASES:
        t.st.drill = None
        why = f"it is {t.st.phase.value}: a drill rehearses the rollback from a weighted step"
        record(t, Reason.DRILL_REFUSED, f"status.drill not applied: {why}", [], take_request(t.st, "drill"))


def _start(t: Tick, spec: AgentRolloutSpec, request: DrillRequest, actor: Actor) -> None:
    st = t.st
    bound = drill_bound(spec, request)
    st.last_drill = DrillRecord(
        result=DrillResult.RUNNING,
        started_at=iso(t.now),
        bound=bound,
        stay_rolled_back=request.stay_rolled_back,
        step=st.current_step,
        weights=step_weights(spec.steps, st.current_step),
        revision=st.candidate_revision,
    )
    left = weights_text(st.last_drill.weights)
    route(t, spec, Reason.DRILL_STARTED)
    after = "stays rolled back" if request.stay_rolled_back else f"returns to step {st.current_step + 1}"
    message = (
        f"rollback drill started by a human (status.drill) at step {st.current_step + 1}/{len(spec.steps)} "
        f"({left}): all traffic to legacy; passes when legacy's own metrics confirm it within {bound}, "
        f"then {after}"
    )
    record(t, Reason.DRILL_STARTED, message, [], actor)


def _follow(t: Tick, spec: AgentRolloutSpec, drill: DrillRecord) -> None:
    now = t.now
    started = parse_time(drill.started_at) or now
    if drill.route_legacy_at is None and route_shows(t.obs, legacy_only()):
        drill.route_legacy_at = iso(now)
        drill.route_seconds = _seconds(started, now)
    bound_s = api.duration_seconds(drill.bound)
    results = [latest_evidence(r) for r in t.obs.drill_gates or ()]
    failed = [r for r in results if r.verdict is Verdict.FAIL]
    if drill.route_legacy_at is not None and failed:
        names = ", ".join(f"{r.name} ({r.message})" for r in failed)
        _end(t, spec, drill, DrillResult.FAILED, f"legacy out of bounds: {names}", results)
        return
    if drill.route_legacy_at is not None and results and all(r.verdict is Verdict.PASS for r in results):
        drill.confirmed_at, drill.confirm_seconds = iso(now), _seconds(started, now)
        if drill.confirm_seconds <= bound_s:
            _end(t, spec, drill, DrillResult.PASSED, "legacy confirmed within every drill gate", results)
        else:
            text = f"legacy confirmed after {drill.confirm_seconds}s, beyond the bound {drill.bound}"
            _end(t, spec, drill, DrillResult.FAILED, text, results)
        return
    if now >= started + timedelta(seconds=bound_s):
        where = "the route never showed legacy 100" if drill.route_legacy_at is None else "legacy unconfirmed"
        pending = "; ".join(f"{r.name}: {r.message}" for r in results)
        text = f"bound {drill.bound} exceeded: {where}" + (f" ({pending})" if pending else "")
        _end(t, spec, drill, DrillResult.FAILED, text, results)
        return
    if drill.route_legacy_at is None:
        t.waiting = "drill: waiting for the route to show legacy 100"
    elif not results:
        t.waiting = f"drill: route at legacy 100 since {drill.route_legacy_at}; measuring legacy"
    else:
        pending = ", ".join(f"{r.name} {r.verdict.value}" for r in results if r.verdict is not Verdict.PASS)
        t.waiting = f"drill: waiting for legacy's gates to pass ({pending})"


def _end(
    t: Tick,
    spec: AgentRolloutSpec | None,
    drill: DrillRecord,
    result: DrillResult,
    why: str,
    evidence: list[GateResult],
) -> None:
    st = t.st
    drill.result, drill.finished_at, drill.message = result, iso(t.now), bounded(why, 512)
    drill.evidence = [history_evidence(r) for r in evidence]
    st.last_drill = drill
    timing = _timing_text(drill)
    if result is DrillResult.INTERRUPTED:
        record(t, Reason.DRILL_INTERRUPTED, f"rollback drill interrupted: {why}{timing}", evidence)
        return
    if result is DrillResult.FAILED:
        message = (
            f"rollback drill failed: {why}{timing}; traffic stays on legacy (retry once legacy is fixed)"
        )
        transition(t, spec, Phase.ROLLED_BACK, Reason.DRILL_FAILED, message, evidence)
        return
    st.passed_drill = drill.model_copy(deep=True)
    if drill.stay_rolled_back:
        message = f"rollback drill passed: {why}{timing}; stays rolled back as asked"
        transition(t, spec, Phase.ROLLED_BACK, Reason.DRILL_ROLLED_BACK, message, evidence)
        return
    # Back to the step it left, which starts over: judged and timed only at its weight after the drill.
    st.step_started_at = step_start(t.now)
    st.last_analysis, st.last_analysis_at, st.inconclusive_runs = [], None, {}
    route(t, spec, Reason.DRILL_PASSED)
    total = len(spec.steps) if spec is not None else "?"
    message = (
        f"rollback drill passed: {why}{timing}; back to step {st.current_step + 1}/{total} at "
        f"{weights_text(st.weights)}, the step starts over"
    )
    record(t, Reason.DRILL_PASSED, message, evidence)


def _timing_text(drill: DrillRecord) -> str:
    route_part = (
        "route never at legacy 100"
        if drill.route_seconds is None
        else f"route at legacy 100 after {drill.route_seconds}s"
    )
    confirm = "" if drill.confirm_seconds is None else f", confirmed after {drill.confirm_seconds}s"
    return f" ({route_part}{confirm}, bound {drill.bound})"


def _seconds(start: datetime, end: datetime) -> int:
    return max(0, math.ceil((end - start).total_seconds()))


def drill_hold_text(spec: AgentRolloutSpec, st: AgentRolloutStatus, weight: int, now: datetime) -> str | None:
    """Why spec.readiness.requireDrill holds a raise of the candidate weight to `weight`, or None."""
    required = spec.readiness.require_drill
    if required is None or weight <= required.before:
        return None
    need = (
        f"a rollback drill passed within {required.max_age} is required before the candidate weight "
        f"exceeds {required.before}"
    )
    passed = st.passed_drill
    due = drill_due(required.max_age, passed.finished_at if passed is not None else None)
    if passed is None or due is None:
        return f"{need} (none passed yet: kubectl agentrollout drill)"
    if now > due:
        return f"{need} (the last passed at {passed.finished_at}: kubectl agentrollout drill)"
    return None


def drill_due(max_age: str, passed_finished_at: str | None) -> datetime | None:
    """When requireDrill wants the next passed drill: the last passed one's end plus maxAge; None when
    none passed. The hold above and the DrillOverdue alert's metric both read it."""
    finished = parse_time(passed_finished_at) if passed_finished_at is not None else None
    return finished + timedelta(seconds=api.age_seconds(max_age)) if finished is not None else None
