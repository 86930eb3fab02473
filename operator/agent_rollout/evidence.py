"""Human-readable text for planner decisions: steps, weights and the gate evidence behind a verdict.

Pure formatting, kept apart from the rules in `planner` so the rules read as rules. Every text here
is a function of its inputs only (no "3m left"): a status message that changed with the clock would
make every idle reconcile write status.
"""

from __future__ import annotations

from agent_rollout.api import GateResult, Step, Verdict, Weights

# Kubernetes truncates (events.k8s.io) or rejects longer event notes; keep the evidence, not a novel.
EVENT_MESSAGE_LIMIT = 1024


def weights_text(weights: Weights) -> str:
    return f"legacy {weights.legacy} / candidate {weights.candidate}"


def is_approval(step: Step) -> bool:
    """`approval: {...}`, or `pause: {}` (neither a duration nor a request count): only a human ends it."""
    if step.approval is not None:
        return True
    return step.pause is not None and step.pause.duration is None and step.pause.min_requests is None


def step_text(step: Step) -> str:
    text = _kind_text(step)
    if step.milestone is not None:
        text += f", milestone {step.milestone.transactions} transactions"
    return text


def _kind_text(step: Step) -> str:
    if step.set_weight is not None:
        return f"setWeight {step.set_weight}"
    if step.evaluate is not None:
        return "evaluate"
    if step.approval is not None:
        n = step.approval.min_approvals
        return f"approval by {n} approver{'' if n == 1 else 's'}"
    if step.shadow is not None:
        return f"shadow {step.shadow.percent}% for {step.shadow.duration}"
    if step.pause is None or is_approval(step):
        return "approval"
    parts = []
    if step.pause.duration is not None:
        parts.append(step.pause.duration)
    if step.pause.min_requests is not None:
        parts.append(f"{step.pause.min_requests} requests")
    return "pause " + ", ".join(parts)


def _number(value: float | None) -> str:
    return "no data" if value is None else f"{value:.6g}"


def result_text(result: GateResult) -> str:
    """One gate's evidence: verdict, value against bound, samples, and the query that produced it."""
    parts = [f"gate {result.name} {result.verdict.value}: value {_number(result.value)}"]
    if result.bound:
        parts.append(f"bound {result.bound}")
    if result.legacy_value is not None:
        parts.append(f"legacy {_number(result.legacy_value)}")
    if result.samples is not None or result.min_samples:
        samples = "?" if result.samples is None else str(result.samples)
        parts.append(f"samples {samples}/{result.min_samples}")
    if result.message:
        parts.append(result.message)
    if result.query:
        parts.append(f"query {result.query}")
    if result.dry_run:
        parts.append("dry run")
    return ", ".join(parts)


def waiting_text(result: GateResult) -> str:
    """Why a gate holds the step, in the words an on-call engineer needs."""
    if result.verdict is Verdict.INCONCLUSIVE and result.samples is not None and result.min_samples:
        return f"waiting for samples {result.samples}/{result.min_samples} on gate {result.name}"
    detail = f" ({result.message})" if result.message else ""
    return f"gate {result.name} is {result.verdict.value}{detail}"


def event_text(message: str, evidence: list[GateResult]) -> str:
    text = message if not evidence else message + " | " + "; ".join(result_text(r) for r in evidence)
    if len(text) <= EVENT_MESSAGE_LIMIT:
        return text
    return text[: EVENT_MESSAGE_LIMIT - 3] + "..."
