"""Notifications of a rollout's decisions, as values: which decisions are new, what each one is called
for on-call (the event), and the body each kind of sink takes. No I/O; the delivery is notifier.py's.

A decision is notified when the status write that recorded it in status.history has landed, and only
then: a plan whose write failed is planned again (with a new decision), and the first one never
happened. "New" is what this write added to the history the reconcile planned on, so an operator that
restarts sends nothing of the history it finds, only what it decides from then on.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from agent_rollout import api
from agent_rollout.api import NotificationEvent as E
from agent_rollout.reasons import ROLLBACK_REASONS, Reason
from agent_rollout.statustext import bounded

# Which decisions on-call hears of, by the decision's reason. Extend it here when the planner gains a
# reason; a reason not in the table is not notified (unless it ended the rollout, see event_of).
EVENT_OF_REASON: Mapping[str, E] = {
    **{reason.value: E.ROLLED_BACK for reason in ROLLBACK_REASONS},
    Reason.STEP_COMPLETED.value: E.STEP_COMPLETED,
    Reason.MANUAL_PROMOTION.value: E.STEP_COMPLETED,  # a human's promote ended the step
    Reason.AWAITING_APPROVAL.value: E.AWAITING_APPROVAL,
    Reason.APPROVAL_GIVEN.value: E.APPROVED,
    Reason.APPROVAL_REFUSED.value: E.APPROVAL_REFUSED,
    Reason.ESCALATED.value: E.ESCALATED,
    # onExpiry: pause hands it to a human; with onExpiry: rollback the decision ends the rollout RolledBack,
    # and the phase it ended in names the event (EVENT_OF_ENDING).
    Reason.APPROVAL_EXPIRED.value: E.ESCALATED,
    Reason.PROMOTED.value: E.PROMOTED,
}
# The phase a decision left the rollout in says more than its reason when the phase changed with it.
EVENT_OF_ENDING: Mapping[api.Phase, E] = {
    api.Phase.ROLLED_BACK: E.ROLLED_BACK,
    api.Phase.PROMOTED: E.PROMOTED,
}


@dataclass(frozen=True)
class RolloutRef:
    namespace: str
    name: str
    uid: str


@dataclass(frozen=True)
class Notification:
    """One decision as on-call hears of it. `id` is the same for every attempt to deliver it (sinks
    may deduplicate on it; it is sent as the Idempotency-Key header too)."""

    id: str
    event: E
    rollout: RolloutRef
    phase: str
    steps: int  # how many steps the spec has (0: unknown), for "step 2/7"
    decision: Mapping[str, Any]  # the history entry, in its wire form (camelCase)

    @property
    def step_text(self) -> str:
        """The step the rollout is at after the decision, 1-based ("2/3"): a StepCompleted decision
        records the step it entered, Promoted one past the last step."""
        step = int(self.decision.get("step", 0)) + 1
        return f"{min(step, self.steps)}/{self.steps}" if self.steps else str(step)


def decision_key(decision: api.Decision) -> tuple[str, str, int]:
    # One tick stamps all its decisions with the same time; no tick takes one reason twice on one step.
    return decision.time, decision.reason, decision.step


def new_decisions(before: Sequence[api.Decision], after: Sequence[api.Decision]) -> list[api.Decision]:
    """The decisions in `after` (the history written) that `before` (the one planned on) lacks."""
    if not after or (before and before[-1] == after[-1]):
        return []  # the common case, a reconcile that decided nothing: no set built
    seen = {decision_key(d) for d in before}
    return [d for d in after if decision_key(d) not in seen]


def event_of(decision: api.Decision, ended: api.Phase | None) -> E | None:
    """`ended`: the phase the rollout entered with this decision (only for a tick's last decision)."""
    if ended is not None and ended in EVENT_OF_ENDING:
        return EVENT_OF_ENDING[ended]
    return EVENT_OF_REASON.get(decision.reason)


def notifications(
    rollout: RolloutRef, steps: int, before: api.AgentRolloutStatus, after: api.AgentRolloutStatus
) -> list[Notification]:
    """What one status write gives on-call to hear of, oldest first."""
    added = new_decisions(before.history, after.history)
    ended = after.phase if after.phase != before.phase else None
    found = []
    for i, decision in enumerate(added):
        event = event_of(decision, ended if i == len(added) - 1 else None)
        if event is None:
            continue
        key = ":".join(str(part) for part in (rollout.uid, *decision_key(decision)))
        found.append(Notification(key, event, rollout, after.phase.value, steps, api.dump(decision)))
    return found


def wants(sink_events: Sequence[E], event: E) -> bool:
    return not sink_events or event in sink_events


# ---------------------------------------------------------------- bodies

# Slack refuses a block over its limits (header 150, section text 3000, 10 fields of 2000).
SLACK_HEADER_LIMIT = 150
SLACK_TEXT_LIMIT = 3000
EVIDENCE_LINES = 10

HEADLINE = {
    E.STEP_COMPLETED: "step completed, now at step {step}",
    E.AWAITING_APPROVAL: "waiting for approval at step {step}",
    E.APPROVED: "approved at step {step}",
    E.APPROVAL_REFUSED: "approval refused at step {step}",
    E.ESCALATED: "escalated to a human at step {step}",
    E.ROLLED_BACK: "rolled back to legacy at step {step}",
    E.PROMOTED: "promoted: all traffic to the candidate",
}


def headline(n: Notification) -> str:
    what = HEADLINE[n.event].format(step=n.step_text)
    return f"AgentRollout {n.rollout.namespace}/{n.rollout.name}: {what}"


def evidence_lines(n: Notification) -> list[str]:
    """One line per gate of the decision's evidence: name, verdict, value against its bound, samples."""
    lines = []
    for gate in list(n.decision.get("evidence") or [])[:EVIDENCE_LINES]:
        value = gate.get("value")
        shown = "no value" if value is None else f"{value:.4g}"
        samples = gate.get("samples")
        counted = f", {samples} samples" if samples is not None else ""
        lines.append(
            f"{gate.get('name')}: {gate.get('verdict')} ({shown}, bound {gate.get('bound') or '-'}{counted})"
        )
    return lines


def facts(n: Notification) -> list[tuple[str, str]]:
    weights = n.decision.get("weights") or {}
    found = [
        ("Event", n.event.value),
        ("Reason", str(n.decision.get("reason", ""))),
        ("Phase", n.phase),
        ("Step", n.step_text),
        ("Weights", f"legacy {weights.get('legacy', '?')} / candidate {weights.get('candidate', '?')}"),
        ("Time", str(n.decision.get("time", ""))),
    ]
    actor = n.decision.get("actor")
    if actor:  # recorded by operators that know who took the decision
        found.append(("Actor", str(actor)))
    return found


def webhook_body(n: Notification) -> dict[str, Any]:
    """The generic JSON webhook: everything the decision record holds, plus what it is about."""
    return {
        "id": n.id,
        "event": n.event.value,
        "summary": headline(n),
        "rollout": {"namespace": n.rollout.namespace, "name": n.rollout.name, "uid": n.rollout.uid},
        "phase": n.phase,
        "step": n.step_text,
        "decision": dict(n.decision),
    }


def slack_body(n: Notification) -> dict[str, Any]:
    """A Slack incoming webhook's message: `text` for notifications and clients without blocks."""
    message = str(n.decision.get("message", ""))
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": bounded(headline(n), SLACK_HEADER_LIMIT)}},
        {"type": "section", "text": {"type": "mrkdwn", "text": bounded(message or "-", SLACK_TEXT_LIMIT)}},
        {
            "type": "section",
            "fields": [{"type": "mrkdwn", "text": f"*{k}*\n{bounded(v, 1900)}"} for k, v in facts(n)][:10],
        },
    ]
    evidence = evidence_lines(n)
    if evidence:
        text = "*Evidence*\n" + "\n".join(f"• {line}" for line in evidence)
        blocks.append(
            {"type": "section", "text": {"type": "mrkdwn", "text": bounded(text, SLACK_TEXT_LIMIT)}}
        )
    blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": f"id {n.id}"}]})
    return {"text": bounded(f"{headline(n)}: {message}", SLACK_TEXT_LIMIT), "blocks": blocks}


def teams_body(n: Notification) -> dict[str, Any]:
    """A Teams message with one Adaptive Card (1.4), the body Teams' Workflows webhooks take (the
    Office 365 connectors that took MessageCards are being retired)."""
    body: list[dict[str, Any]] = [
        {"type": "TextBlock", "text": headline(n), "weight": "Bolder", "size": "Medium", "wrap": True},
        {"type": "TextBlock", "text": str(n.decision.get("message", "")) or "-", "wrap": True},
        {"type": "FactSet", "facts": [{"title": k, "value": v} for k, v in facts(n)]},
    ]
    evidence = evidence_lines(n)
    if evidence:
        body.append({"type": "TextBlock", "text": "Evidence", "weight": "Bolder", "wrap": True})
        body.extend(
            {"type": "TextBlock", "text": f"- {line}", "wrap": True, "spacing": "None"} for line in evidence
        )
    body.append({"type": "TextBlock", "text": f"id {n.id}", "isSubtle": True, "size": "Small", "wrap": True})
    card = {
        "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
        "type": "AdaptiveCard",
        "version": "1.4",
        "body": body,
    }
    return {
        "type": "message",
        "summary": headline(n),
        "attachments": [{"contentType": "application/vnd.microsoft.card.adaptive", "content": card}],
    }


BODY_OF: Mapping[api.SinkType, Callable[[Notification], dict[str, Any]]] = {
    api.SinkType.WEBHOOK: webhook_body,
    api.SinkType.SLACK: slack_body,
    api.SinkType.TEAMS: teams_body,
}


def backoff(attempt: int, base: float, cap: float) -> float:
    """Seconds before retry number `attempt` (1, 2, ...): doubling from `base`, never above `cap`."""
    return float(min(cap, base * 2.0 ** (attempt - 1)))
