"""Decisions: who took them (the operator, or the user the apiserver authenticated), the phase
transitions that route, record and announce them, and weight changes made without a transition."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from agent_rollout import api
from agent_rollout.api import AgentRolloutSpec, AgentRolloutStatus, Decision, GateResult, Phase
from agent_rollout.capacity import begin_wait, wait_text
from agent_rollout.domain import EmitEvent, iso
from agent_rollout.evidence import event_text, weights_text
from agent_rollout.reasons import CAPACITY_SAFE_REASONS, WARNING_REASONS, Reason
from agent_rollout.routing import cannot_serve, missing, route
from agent_rollout.statustext import bounded, history_evidence
from agent_rollout.tick import Tick


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
        return candidate.agent_version.model_copy(update={"revision": candidate.template_hash})
    return api.AgentVersion(revision=t.st.candidate_revision)


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
