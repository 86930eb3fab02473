"""What status says in words: conditions, the one-line message, and the bounds on every text kept
in status (the history must stay far below etcd's object limit)."""

from __future__ import annotations

from agent_rollout.api import AgentRolloutSpec, AgentRolloutStatus, GateResult, Phase, Step, Verdict
from agent_rollout.conditions import ConditionReason as CR
from agent_rollout.conditions import ConditionStatus, set_condition
from agent_rollout.conditions import ConditionType as CT
from agent_rollout.domain import SetWeights, SpecProblem
from agent_rollout.evidence import is_approval, step_text, weights_text
from agent_rollout.reasons import ROLLBACK_REASONS
from agent_rollout.routing import owns_route, routes_to_missing, target_weights, unavailable_text
from agent_rollout.shadow import current_shadow
from agent_rollout.tick import Tick


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
    elif t.obs.route_mirror_conflict is not None and current_shadow(spec, t.st) is not None:
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
