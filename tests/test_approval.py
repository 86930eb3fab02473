"""Approval steps, escalation and the decision record: who decided, about which agent, bounded."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

from agent_rollout import api
from agent_rollout.agentversion import agent_version, changed_by
from agent_rollout.api import AgentRolloutStatus, Phase, Requests, VerbRequest, Verdict
from agent_rollout.domain import DeploymentState, EmitEvent, Plan
from agent_rollout.kube import deployment_state
from agent_rollout.planner import plan
from agent_rollout.reconcile import decision_line
from tests.test_planner import (
    CANDIDATE,
    ERROR_RATE,
    T0,
    make_spec,
    observe,
    result,
    running,
    w,
)

ALICE = VerbRequest(by="alice", groups=["release-managers", "system:authenticated"], reason="looks good")
BOB = VerbRequest(by="bob", groups=["ml-team", "system:authenticated"], reason="ok")


def approval_spec(**approval: Any) -> api.AgentRolloutSpec:
    fields = {"approvers": {"users": ["bob"], "groups": ["release-managers"]}, **approval}
    return make_spec(steps=[{"setWeight": 10}, {"approval": fields}, {"setWeight": 50}])


def waiting(**kw: Any) -> AgentRolloutStatus:
    """Paused at the approval step (index 1) since T0, at 10%."""
    return running(1, w(10), phase=Phase.PAUSED, **kw)


def approve(request: VerbRequest, **kw: Any) -> AgentRolloutStatus:
    return waiting(requests=Requests(approve=request), **kw)


def last(p: Plan) -> api.Decision:
    return p.status.history[-1]


# ---------------------------------------------------------------- approvals


def test_entering_an_approval_step_pauses_and_says_who_may_approve() -> None:
    p = plan(approval_spec(), running(0, w(10)), observe(route=w(10)), T0 + timedelta(seconds=1))
    assert (p.status.phase, p.status.current_step) == (Phase.PAUSED, 1)
    p = plan(approval_spec(), p.status, observe(route=w(10)), T0 + timedelta(seconds=2))
    assert p.status.phase is Phase.PAUSED
    assert "waiting for approval 0/1" in p.status.message


def test_an_allowed_group_members_approval_advances_and_records_who() -> None:
    p = plan(approval_spec(), approve(ALICE), observe(route=w(10)), T0)
    assert (p.status.phase, p.status.current_step, p.status.weights) == (Phase.PROGRESSING, 2, w(50))
    given = next(d for d in p.status.history if d.reason == "ApprovalGiven")
    assert (given.actor, given.actor_groups) == ("alice", ["release-managers", "system:authenticated"])
    assert "approval 1/1" in given.message and "looks good" in given.message
    assert last(p).reason == "StepCompleted"
    assert p.status.requests is not None and p.status.requests.approve is None  # consumed
    assert p.status.approvals == []  # dropped with the step they were for


def test_an_approver_outside_the_list_is_refused_and_nothing_moves() -> None:
    stranger = VerbRequest(by="mallory", groups=["system:authenticated"])
    p = plan(approval_spec(), approve(stranger), observe(route=w(10)), T0)
    assert (p.status.phase, p.status.current_step, p.status.weights) == (Phase.PAUSED, 1, w(10))
    assert (last(p).reason, last(p).actor) == ("ApprovalRefused", "mallory")
    assert "not an approver" in last(p).message
    assert p.status.approvals == []


def test_an_approval_without_an_admission_stamped_author_never_counts() -> None:
    p = plan(approval_spec(), approve(VerbRequest(reason="trust me")), observe(route=w(10)), T0)
    assert (p.status.current_step, last(p).reason, last(p).actor) == (1, "ApprovalRefused", "unverified")


def test_an_approval_for_another_revision_does_not_count() -> None:
    old = BOB.model_copy(update={"revision": "agent-0"})
    p = plan(approval_spec(), approve(old), observe(route=w(10)), T0)
    assert (p.status.current_step, last(p).reason) == (1, "ApprovalRefused")
    assert "agent-0" in last(p).message and "agent-1" in last(p).message


def test_the_author_of_the_candidate_cannot_approve_it_when_self_approval_is_forbidden() -> None:
    authored = DeploymentState("triage-agent", True, "agent-1", 2, 2, changed_by="bob")
    p = plan(approval_spec(), approve(BOB), observe(route=w(10), candidate=authored), T0)
    assert p.status.candidate_changed_by == "bob"
    assert (p.status.current_step, last(p).reason) == (1, "ApprovalRefused")
    assert "forbidSelfApproval" in last(p).message
    allowed = plan(
        approval_spec(forbidSelfApproval=False), approve(BOB), observe(route=w(10), candidate=authored), T0
    )
    assert allowed.status.current_step == 2


def test_two_approvals_need_two_distinct_people() -> None:
    spec = approval_spec(minApprovals=2)
    p = plan(spec, approve(ALICE), observe(route=w(10)), T0)
    assert (p.status.current_step, len(p.status.approvals)) == (1, 1)
    again = p.status.model_copy(update={"requests": Requests(approve=ALICE)})
    p = plan(spec, again, observe(route=w(10)), T0 + timedelta(seconds=5))
    assert (p.status.current_step, last(p).reason) == (1, "ApprovalRefused")
    assert "already approved" in last(p).message
    second = p.status.model_copy(update={"requests": Requests(approve=BOB)})
    p = plan(spec, second, observe(route=w(10)), T0 + timedelta(seconds=10))
    assert p.status.current_step == 2
    assert [d.actor for d in p.status.history if d.reason == "ApprovalGiven"] == ["alice", "bob"]


def test_an_approval_outside_an_approval_step_is_refused_and_consumed() -> None:
    status = running(0, w(10), requests=Requests(approve=ALICE))
    p = plan(approval_spec(), status, observe(route=w(10)), T0)
    refused = next(d for d in p.status.history if d.reason == "ApprovalRefused")
    assert "not waiting for approval" in refused.message and refused.actor == "alice"
    assert p.status.requests is not None and p.status.requests.approve is None


def test_promote_does_not_end_an_approval_step() -> None:
    by = VerbRequest(by="carol", groups=["sre"])
    p = plan(approval_spec(), waiting(promote=True, requests=Requests(promote=by)), observe(route=w(10)), T0)
    assert (p.status.current_step, p.status.promote) == (1, False)
    assert (last(p).reason, last(p).actor) == ("PromoteRefused", "carol")


def test_an_expired_approval_step_rolls_back() -> None:
    spec = approval_spec(expires="1h", onExpiry="rollback")
    early = plan(spec, waiting(), observe(route=w(10)), T0 + timedelta(minutes=59))
    assert early.status.phase is Phase.PAUSED and "until 2026-03-01T13:00:00Z" in early.status.message
    p = plan(spec, waiting(), observe(route=w(10)), T0 + timedelta(hours=1))
    assert (p.status.phase, p.status.weights) == (Phase.ROLLED_BACK, w(0))
    assert last(p).reason == "ApprovalExpired" and "0/1 approvals" in last(p).message


def test_an_expired_approval_step_with_pause_is_recorded_once_and_still_takes_approvals() -> None:
    spec = approval_spec(expires="1h", onExpiry="pause")
    p = plan(spec, waiting(), observe(route=w(10)), T0 + timedelta(hours=1))
    assert (p.status.phase, p.status.weights, last(p).reason) == (Phase.PAUSED, w(10), "ApprovalExpired")
    again = plan(spec, p.status, observe(route=w(10)), T0 + timedelta(hours=2))
    assert [d.reason for d in again.status.history].count("ApprovalExpired") == 1
    late = again.status.model_copy(update={"requests": Requests(approve=BOB)})
    assert plan(spec, late, observe(route=w(10)), T0 + timedelta(hours=3)).status.current_step == 2


def test_a_new_candidate_revision_drops_the_approvals_given_so_far() -> None:
    spec = approval_spec(minApprovals=2)
    p = plan(spec, approve(ALICE), observe(route=w(10)), T0)
    assert len(p.status.approvals) == 1
    new = DeploymentState("triage-agent", True, "agent-2", 2, 2)
    p = plan(spec, p.status, observe(route=w(10), candidate=new), T0 + timedelta(seconds=5))
    assert (p.status.candidate_revision, p.status.current_step, p.status.approvals) == ("agent-2", 0, [])


# ---------------------------------------------------------------- escalation


def test_a_step_stuck_on_inconclusive_gates_escalates_to_a_human_after_its_time() -> None:
    spec = make_spec(
        steps=[{"setWeight": 10, "escalate": {"after": "30m"}}, {"setWeight": 50}], gates=[ERROR_RATE]
    )
    stuck = (result(Verdict.INCONCLUSIVE, samples=3),)
    before = plan(spec, running(0, w(10)), observe(route=w(10), gates=stuck), T0 + timedelta(minutes=29))
    assert before.status.phase is Phase.PROGRESSING
    p = plan(spec, running(0, w(10)), observe(route=w(10), gates=stuck), T0 + timedelta(minutes=30))
    assert (p.status.phase, p.status.weights, last(p).reason) == (Phase.PAUSED, w(10), "Escalated")
    assert "30m" in last(p).message and last(p).evidence[0].name == "error-rate"
    passing = (result(Verdict.PASS),)
    fine = plan(spec, running(0, w(10)), observe(route=w(10), gates=passing), T0 + timedelta(minutes=30))
    assert fine.status.current_step == 1  # escalation is for inconclusive gates only


# ---------------------------------------------------------------- the decision record


def test_an_abort_is_recorded_with_the_user_the_apiserver_authenticated() -> None:
    by = VerbRequest(by="alice", groups=["release-managers"], reason="pager")
    p = plan(
        make_spec(), running(1, w(25), abort=True, requests=Requests(abort=by)), observe(route=w(25)), T0
    )
    assert (last(p).reason, last(p).actor, last(p).actor_groups) == ("Aborted", "alice", ["release-managers"])
    event = next(a for a in p.actions if isinstance(a, EmitEvent))
    assert event.message.endswith("(by alice)")
    assert p.status.requests is not None and p.status.requests.abort is None


def test_a_verb_without_an_admission_record_is_recorded_as_unverified() -> None:
    p = plan(make_spec(), running(1, w(25), abort=True), observe(route=w(25)), T0)
    assert last(p).actor == "unverified"


def test_operator_decisions_carry_the_candidates_agent_version() -> None:
    template = {
        "metadata": {
            "annotations": {
                "agentrollout.io/model-version": "gpt-4.1-2025-04-14",
                "agentrollout.io/prompt-version": "triage-v12",
            }
        },
        "spec": {"containers": [{"name": "agent", "image": "ghcr.io/acme/triage@sha256:abc"}]},
    }
    state = deployment_state("triage-agent", {"template": template}, {"availableReplicas": 2})
    assert state.agent_version is not None
    candidate = DeploymentState("triage-agent", True, "agent-1", 2, 2, agent_version=state.agent_version)
    p = plan(make_spec(), running(0, w(5)), observe(route=w(5), candidate=candidate), T0)
    version = last(p).agent_version
    assert version is not None
    assert (version.image, version.model, version.prompt, version.tools) == (
        "ghcr.io/acme/triage@sha256:abc",
        "gpt-4.1-2025-04-14",
        "triage-v12",
        "unknown",
    )
    assert last(p).actor == "operator"


def test_agent_version_names_each_container_and_never_guesses() -> None:
    two = {"spec": {"containers": [{"name": "a", "image": "x:1"}, {"name": "b", "image": "y:2"}]}}
    assert agent_version(two).image == "a=x:1, b=y:2"
    assert agent_version(None) == api.AgentVersion()
    assert (
        agent_version({"metadata": {"annotations": {"agentrollout.io/tools-version": " "}}}).tools
        == "unknown"
    )
    assert changed_by({"annotations": {"agentrollout.io/template-changed-by": "bob"}}) == "bob"
    assert changed_by({}) is None


def test_history_keeps_its_limit_over_a_thousand_decisions_oldest_dropped_first() -> None:
    spec = make_spec(steps=[{"setWeight": 10}, {"pause": {}}, {"setWeight": 50}])
    spec = spec.model_copy(update={"history_limit": 7})
    status = running(1, w(10), phase=Phase.PAUSED)
    for i in range(1000):  # each is a refused approval: one Decision per tick
        status = status.model_copy(update={"requests": Requests(approve=VerbRequest(by=f"user-{i}"))})
        status = plan(spec, status, observe(route=w(10)), T0 + timedelta(seconds=i)).status
    assert len(status.history) == 7
    assert [d.actor for d in status.history] == [f"user-{i}" for i in range(993, 1000)]
    default = make_spec()
    assert default.history_limit == api.HISTORY_LIMIT


def test_the_decision_log_line_is_one_json_object_with_actor_and_agent_version() -> None:
    by = VerbRequest(by="alice", groups=["release-managers"])
    p = plan(
        make_spec(), running(1, w(25), abort=True, requests=Requests(abort=by)), observe(route=w(25)), T0
    )
    line = decision_line("ns", "triage", last(p))
    assert "\n" not in line
    body = json.loads(line)
    assert (body["agentrollout"], body["reason"], body["actor"], body["actorGroups"]) == (
        "triage",
        "Aborted",
        "alice",
        ["release-managers"],
    )
    assert body["agentVersion"]["model"] == "unknown" and body["step"] == 1
    assert CANDIDATE.template_hash == body["agentVersion"]["revision"]
