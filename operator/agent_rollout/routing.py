"""Routing and ownership rules, pure: the weights each phase and step wants, whether the route is
ours to write, and never sending users to a Deployment that cannot answer. The router (traffic/) turns
the wanted state into a write; the shell sends it."""

from __future__ import annotations

from agent_rollout import api
from agent_rollout.api import AgentRolloutSpec, AgentRolloutStatus, Phase, Step, Weights
from agent_rollout.capacity import ready, rollback_weights
from agent_rollout.domain import DeploymentState, EmitEvent, Observations, SetWeights
from agent_rollout.reasons import Reason
from agent_rollout.tick import LIVE_PHASES, Tick
from agent_rollout.traffic.value import Mirror


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


def owns_route(st: AgentRolloutStatus) -> bool:
    """The route is ours once a rollout started; a spec that failed before that never touches it."""
    if st.phase is Phase.FAILED:
        return st.step_started_at is not None or st.candidate_revision is not None
    return st.phase is not Phase.PENDING


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
