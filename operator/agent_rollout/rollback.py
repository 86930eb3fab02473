"""The stage that follows a capacity-safe rollback tick by tick (the rules are in agent_rollout.capacity).

A rollback that found legacy short of ready replicas (tick.transition started the wait) moves more
traffic back as legacy's ready replicas grow, one Decision per move, and ends when legacy can take all
of it or `spec.rollback.capacityTimeout` is over. A human's abort ends the wait at once: all traffic to
legacy now. Condition LegacyCapacity says what happens throughout; it is dropped when a new attempt
starts.
"""

from __future__ import annotations

from datetime import datetime

from agent_rollout.api import AgentRolloutSpec, Phase
from agent_rollout.capacity import ready, shortfall_text, wait_text
from agent_rollout.clock import parse_time
from agent_rollout.conditions import ConditionReason as CR
from agent_rollout.conditions import ConditionType as CT
from agent_rollout.conditions import remove_condition
from agent_rollout.decisions import record
from agent_rollout.evidence import weights_text
from agent_rollout.reasons import Reason
from agent_rollout.routing import cannot_serve, route
from agent_rollout.statustext import condition
from agent_rollout.tick import LIVE_PHASES, Tick


def follow_capacity(t: Tick, spec: AgentRolloutSpec | None) -> None:
    """Advance a capacity-safe rollback: call after the phase rules and before settle_weights."""
    st = t.st
    wait = st.capacity_rollback
    if st.phase in LIVE_PHASES:
        st.conditions = remove_condition(st.conditions, CT.LEGACY_CAPACITY)
    if wait is None:
        return
    if st.phase is not Phase.ROLLED_BACK:
        st.capacity_rollback = None
        return
    have = ready(t.obs.legacy)
    before = st.weights
    if st.abort:
        # A human asked for it now: abort always moves everything at once (status.abort, consumed).
        st.abort, st.capacity_rollback = False, None
        route(t, spec, Reason.ABORTED)
        message = (
            f"aborted by a human (status.abort) during a capacity-safe rollback "
            f"({shortfall_text(wait.ready, wait.required)}): all traffic to legacy now"
        )
        record(t, Reason.ABORTED, message, [])
        condition(t, CT.LEGACY_CAPACITY, "False", CR.LEGACY_SHORT_OF_REPLICAS, message)
        return
    if have is None or cannot_serve(t.obs.candidate):
        st.capacity_rollback = None
        route(t, spec, Reason.WEIGHTS_RECONCILED)
        why = "legacy is not observed" if have is None else "the candidate has no available replica"
        message = f"capacity-safe rollback ends: {why}; all traffic to legacy"
        record(t, Reason.WEIGHTS_RECONCILED, message, [])
        return
    wait.ready = have
    if have >= wait.required:
        st.capacity_rollback = None
        route(t, spec, Reason.LEGACY_CAPACITY_RESTORED)
        message = f"{shortfall_text(have, wait.required)}: all traffic to legacy ({weights_text(st.weights)})"
        record(t, Reason.LEGACY_CAPACITY_RESTORED, message, [])
        condition(t, CT.LEGACY_CAPACITY, "True", CR.LEGACY_REPLICAS_READY, message)
        return
    deadline = parse_time(wait.deadline)
    if deadline is None or t.now >= deadline:
        st.capacity_rollback = None
        route(t, spec, Reason.LEGACY_CAPACITY_TIMEOUT)
        message = (
            f"{shortfall_text(have, wait.required)} at capacityTimeout ({wait.deadline}): all traffic to "
            "legacy anyway; the operator never scales legacy, scale it or check its autoscaler"
        )
        record(t, Reason.LEGACY_CAPACITY_TIMEOUT, message, [])
        condition(t, CT.LEGACY_CAPACITY, "False", CR.LEGACY_CAPACITY_TIMEOUT, message)
        return
    if route(t, spec, Reason.LEGACY_CAPACITY_STEP):
        message = (
            f"{shortfall_text(have, wait.required)}: {weights_text(before)} -> {weights_text(st.weights)}"
        )
        record(t, Reason.LEGACY_CAPACITY_STEP, message, [])
    waiting = f"rollback waits for legacy: {wait_text(wait, st.weights)}"
    condition(t, CT.LEGACY_CAPACITY, "False", CR.LEGACY_SHORT_OF_REPLICAS, waiting)
    t.waiting = waiting


def capacity_requeue(st_deadline: str | None, now: datetime) -> float | None:
    """Seconds until a waiting rollback's capacityTimeout is over, so the shell wakes it then."""
    deadline = parse_time(st_deadline)
    if deadline is None:
        return None
    left = (deadline - now).total_seconds()
    return max(0.5, left)
