"""Approval steps: the rules that decide whether an approval counts, when a step has enough, and what
happens when it expires. Pure, like the planner that calls them.

Who approved is never a field the caller fills in: the chart's MutatingAdmissionPolicy stamps
request.userInfo (username, groups) into status.requests.approve and its ValidatingAdmissionPolicy
refuses a record naming anyone else, an approver outside the step's list, and (with
forbidSelfApproval) the user who changed the candidate's pod template. The operator checks the same
rules again when it consumes the request, so an approval that reached status some other way (the
policies not installed, an exempt writer) still does not count unless it is allowed; one without an
admission-stamped author never counts.

- An approval counts for the current approval step and the current candidate revision only: the
  counted ones (status.approvals) are dropped when the step ends or a new revision restarts the
  rollout, and a request naming another revision is refused.
- `minApprovals` distinct users; a user approving twice counts once.
- `expires` runs from when the step began. On expiry `rollback` sends all traffic to legacy;
  `pause` records ApprovalExpired once and keeps waiting (late approvals still count, abort rolls back).
- status.promote does not end an approval step: the approvers do.
"""

from __future__ import annotations

from datetime import timedelta

from agent_rollout import api
from agent_rollout.api import AgentRolloutSpec, Approval, GivenApproval, OnExpiryPolicy, Phase, VerbRequest
from agent_rollout.clock import parse_time
from agent_rollout.decisions import Actor, record, requester, take_request, transition
from agent_rollout.domain import iso
from agent_rollout.reasons import Reason
from agent_rollout.routing import exists
from agent_rollout.tick import LIVE_PHASES, Tick


def current_approval(spec: AgentRolloutSpec, st: api.AgentRolloutStatus) -> Approval | None:
    if st.phase not in LIVE_PHASES or not 0 <= st.current_step < len(spec.steps):
        return None
    return spec.steps[st.current_step].approval


def allowed(approval: Approval, actor: Actor) -> bool:
    return actor.name in approval.approvers.users or any(g in approval.approvers.groups for g in actor.groups)


def refusal(
    spec: AgentRolloutSpec, st: api.AgentRolloutStatus, request: VerbRequest, actor: Actor
) -> str | None:
    """Why this approval does not count, or None when it does."""
    approval = current_approval(spec, st)
    if approval is None:
        where = f"step {min(st.current_step, len(spec.steps) - 1) + 1}/{len(spec.steps)}"
        return f"not waiting for approval ({st.phase.value} at {where})"
    if not request.by:
        return "it has no author stamped by the apiserver (are the chart's admission policies installed?)"
    if request.revision and request.revision != st.candidate_revision:
        return (
            f"it approves candidate revision {request.revision}, but the candidate is {st.candidate_revision}"
        )
    if not allowed(approval, actor):
        return (
            f"{actor.name} is not an approver of this step (users or groups of spec.steps[{st.current_step}])"
        )
    if approval.forbid_self_approval and st.candidate_changed_by == actor.name:
        return f"{actor.name} changed the candidate revision and cannot approve it (forbidSelfApproval)"
    if any(a.by == actor.name for a in st.approvals):
        return f"{actor.name} already approved this step"
    return None


def observe_candidate_author(t: Tick) -> None:
    """Who changed the candidate's template, as its admission-stamped annotation says; kept in status so
    the admission policy can refuse that user's approval (it cannot read the Deployment)."""
    candidate = t.obs.candidate
    if exists(candidate) and candidate is not None and candidate.template_hash == t.st.candidate_revision:
        t.st.candidate_changed_by = candidate.changed_by


def take_approval(t: Tick, spec: AgentRolloutSpec) -> None:
    """Consume status.requests.approve: count it (ApprovalGiven) or refuse it (ApprovalRefused)."""
    st = t.st
    request = st.requests.approve if st.requests is not None else None
    if request is None:
        return
    assert st.requests is not None
    st.requests.approve = None
    actor = requester(request)
    why_not = refusal(spec, st, request, actor)
    suffix = f": {request.reason}" if request.reason else ""
    if why_not is not None:
        record(t, Reason.APPROVAL_REFUSED, f"approval by {actor.name} not counted: {why_not}", [], actor)
        return
    approval = current_approval(spec, st)
    assert approval is not None
    st.approvals = [
        *st.approvals,
        GivenApproval(
            by=actor.name,
            groups=list(actor.groups),
            at=iso(t.now),
            reason=request.reason,
            revision=st.candidate_revision,
            step=st.current_step,
        ),
    ]
    message = (
        f"approval {len(st.approvals)}/{approval.min_approvals} of step {st.current_step + 1}/"
        f"{len(spec.steps)} by {actor.name} for candidate revision {st.candidate_revision}{suffix}"
    )
    record(t, Reason.APPROVAL_GIVEN, message, [], actor)


def approval_holds(t: Tick, spec: AgentRolloutSpec, approval: Approval) -> bool:
    """True while the step waits (or has just rolled back on expiry); False: enough approvals, complete it."""
    st = t.st
    have, need = len(st.approvals), approval.min_approvals
    if have >= need:
        return False
    position = f"step {st.current_step + 1}/{len(spec.steps)}"
    started = parse_time(st.step_started_at)
    ends = (
        started + timedelta(seconds=api.duration_seconds(approval.expires))
        if started is not None and approval.expires is not None
        else None
    )
    waiting = f"waiting for approval {have}/{need} (kubectl agentrollout approve)"
    if ends is None or t.now < ends:
        t.waiting = waiting + (f" until {iso(ends)}" if ends is not None else "")
        if st.phase is not Phase.PAUSED:
            transition(t, spec, Phase.PAUSED, Reason.AWAITING_APPROVAL, f"{position} {waiting}")
        return True
    message = f"{position}: approval expired at {iso(ends)} with {have}/{need} approvals"
    if approval.on_expiry is OnExpiryPolicy.ROLLBACK:
        transition(t, spec, Phase.ROLLED_BACK, Reason.APPROVAL_EXPIRED, f"{message}: all traffic to legacy")
        return True
    t.waiting = f"{waiting}: expired at {iso(ends)}"
    if not expiry_recorded(st):
        transition(t, spec, Phase.PAUSED, Reason.APPROVAL_EXPIRED, f"{message}: paused for a human")
    return True


def expiry_recorded(st: api.AgentRolloutStatus) -> bool:
    """ApprovalExpired is recorded once per step: the last one was for this step, since it began."""
    started = parse_time(st.step_started_at)
    for d in reversed(st.history):
        at = parse_time(d.time)
        if started is not None and at is not None and at < started:
            return False
        if d.reason == Reason.APPROVAL_EXPIRED.value and d.step == st.current_step:
            return True
    return False


def refuse_promote(t: Tick, spec: AgentRolloutSpec, approval: Approval) -> None:
    st = t.st
    st.promote = False
    actor = take_request(st, "promote")
    message = (
        f"status.promote not applied: step {st.current_step + 1}/{len(spec.steps)} needs "
        f"{approval.min_approvals} approval(s) (kubectl agentrollout approve), {len(st.approvals)} so far"
    )
    record(t, Reason.PROMOTE_REFUSED, message, [], actor)
