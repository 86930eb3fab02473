"""Capacity-safe rollback: how much traffic legacy can take back, from its ready replicas. Pure.

An autoscaler shrinks legacy while the candidate takes its traffic; snapping everything back at once
then overloads it (argoproj/argo-rollouts#3941). The rules, each in one place:
- Legacy needs `spec.rollback.minLegacyReadyReplicas` ready replicas to take all traffic, else the
  ready replicas it had when the attempt began (status.legacyReplicasAtStart). Neither known (a
  rollout started by an older operator, or legacy had none ready): no limit, all at once.
- With r of N ready, legacy can take floor(100 r / N) percent; it is given that, never less than it
  serves now, and everything once r >= N.
- Only automatic rollbacks wait (a failed gate, Prometheus down, an inconclusive limit, a rejected query,
  an incident alert): a human's abort, a failed drill and an invalid spec move everything at once.
- A rollback waits at most `spec.rollback.capacityTimeout` (default 5m), then sends everything to legacy
  anyway: a candidate judged bad must not keep users indefinitely, and a legacy short of replicas still
  answers. `0s` turns the wait off.
- Nothing waits for a candidate that cannot serve or a legacy that is gone or unobserved.
- The operator never scales or edits legacy: it says so (condition LegacyCapacity, a Warning Event,
  the metric agent_rollout_legacy_capacity_shortfall_replicas) and lets the autoscaler or a human act.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta

from agent_rollout import api
from agent_rollout.api import AgentRolloutSpec, AgentRolloutStatus, CapacityRollback, Weights
from agent_rollout.domain import DeploymentState, iso


def ready(state: DeploymentState | None) -> int | None:
    """Legacy's ready replicas; None when it is unobserved or gone (nothing to wait for then)."""
    return state.ready_replicas if state is not None and state.exists else None


def required_replicas(spec: AgentRolloutSpec | None, st: AgentRolloutStatus) -> int | None:
    """Ready replicas legacy needs to take all traffic; None: no requirement known."""
    if spec is not None and spec.rollback.min_legacy_ready_replicas is not None:
        return spec.rollback.min_legacy_ready_replicas
    return st.legacy_replicas_at_start or None


def legacy_share(ready_now: int, required: int) -> int:
    """The percent of all traffic `ready_now` of `required` replicas can take."""
    if required <= 0 or ready_now >= required:
        return 100
    return max(0, math.floor(100 * ready_now / required))


def rollback_weights(current: Weights, ready_now: int, required: int) -> Weights:
    """Legacy's share by its ready capacity, never less than it serves now."""
    legacy = max(current.legacy, legacy_share(ready_now, required))
    return Weights(legacy=legacy, candidate=100 - legacy)


def begin_wait(
    spec: AgentRolloutSpec | None,
    st: AgentRolloutStatus,
    legacy: DeploymentState | None,
    candidate: DeploymentState | None,
    reason: str,
    now: datetime,
) -> CapacityRollback | None:
    """The wait a capacity-safe rollback starts with, or None when all traffic can go back at once."""
    required = required_replicas(spec, st)
    have = ready(legacy)
    if spec is None or required is None or have is None or have >= required:
        return None
    timeout = api.duration_seconds(spec.rollback.capacity_timeout)
    if timeout <= 0 or candidate is None or not candidate.can_serve:
        return None
    if rollback_weights(st.weights, have, required).candidate == 0:
        return None  # legacy can already take everything the candidate has
    return CapacityRollback(
        started_at=iso(now),
        reason=reason,
        required=required,
        ready=have,
        deadline=iso(now + timedelta(seconds=math.ceil(timeout))),
    )


def shortfall_text(ready_now: int, required: int) -> str:
    return f"legacy has {ready_now}/{required} ready replicas"


def wait_text(wait: CapacityRollback, weights: Weights) -> str:
    return (
        f"{shortfall_text(wait.ready, wait.required)}: legacy weight {weights.legacy} for now, the rest "
        f"as its replicas become ready, all of it by {wait.deadline} at the latest "
        "(the operator never scales legacy)"
    )
