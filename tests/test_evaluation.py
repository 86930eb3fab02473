"""Evaluation steps: the Job's name and manifest, the result contract, and the planner's rules."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest

from agent_rollout import evaluation
from agent_rollout.api import (
    AgentRolloutSpec,
    AgentRolloutStatus,
    Evaluate,
    GateResult,
    Phase,
    Score,
    Verdict,
)
from agent_rollout.domain import EmitEvent, EvaluationObservation, Plan, RunEvaluation, SetWeights
from agent_rollout.planner import plan
from agent_rollout.validation import validate
from tests.specs import spec_dict
from tests.test_planner import T0, observe, running, w

EVALUATE: dict[str, Any] = {
    "job": {"image": "registry.example/triage-eval:1", "command": ["python", "-m", "suite"]},
    "minAccuracy": 0.95,
    "minCases": 200,
    "requiredCases": ["refund-over-limit", "pii-request"],
    "timeout": "10m",
}


def eval_spec(**evaluate: Any) -> AgentRolloutSpec:
    steps = [{"evaluate": {**EVALUATE, **evaluate}}, {"setWeight": 10}, {"setWeight": 100}]
    return AgentRolloutSpec.model_validate(spec_dict(steps=steps))


def at_eval(**kw: Any) -> AgentRolloutStatus:
    return running(0, weights=w(0), attempt_started_at="2026-03-01T11:59:00Z", **kw)


def result(total: int = 200, passed: int = 196, **cases: bool) -> str:
    named = {"refund-over-limit": True, "pii-request": True}
    named.update({k.replace("_", "-"): v for k, v in cases.items()})
    return json.dumps({"total": total, "passed": passed, "cases": named})


def reasons(p: Plan) -> list[str]:
    return [a.reason for a in p.actions if isinstance(a, EmitEvent)]


def seen(state: str, message: str = "", job: str = "triage-eval0-x") -> EvaluationObservation:
    return EvaluationObservation(step=0, job=job, state=state, message=message)  # type: ignore[arg-type]


def started(spec: AgentRolloutSpec) -> AgentRolloutStatus:
    return plan(spec, at_eval(), observe(route=w(0), evaluation=seen("absent")), T0).status


# ---------------------------------------------------------------- pure parts


def test_job_name_is_stable_per_attempt_and_differs_per_revision_step_and_attempt() -> None:
    name = evaluation.job_name("triage", 0, "abc", "t1")
    assert name == evaluation.job_name("triage", 0, "abc", "t1")
    others = {
        evaluation.job_name("triage", 1, "abc", "t1"),
        evaluation.job_name("triage", 0, "abd", "t1"),
        evaluation.job_name("triage", 0, "abc", "t2"),
    }
    assert name not in others and len(others) == 3
    assert len(evaluation.job_name("x" * 253, 49, "abc", "t1")) <= 63


def test_manifest_is_owned_never_retried_and_injects_the_candidate_url() -> None:
    spec = eval_spec(job={**EVALUATE["job"], "env": [{"name": "SUITE", "value": "gold"}]})
    evaluate = spec.steps[0].evaluate
    assert evaluate is not None
    url = evaluation.candidate_url(evaluate, "shop", "triage-agent")
    m = evaluation.job_manifest(
        name="j", namespace="shop", rollout="triage", rollout_uid="u-1", step=0,
        evaluate=evaluate, url=url, revision="abc",
    )  # fmt: skip
    assert m["metadata"]["ownerReferences"][0]["uid"] == "u-1"
    assert m["spec"]["backoffLimit"] == 0 and m["spec"]["activeDeadlineSeconds"] == 600
    env = {e["name"]: e["value"] for e in m["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["AGENT_ROLLOUT_CANDIDATE_URL"] == "http://triage-agent.shop.svc"
    assert env["SUITE"] == "gold" and env["AGENT_ROLLOUT_RESULT_FILE"] == "/dev/termination-log"
    assert m["spec"]["template"]["spec"]["restartPolicy"] == "Never"


@pytest.mark.parametrize(
    ("message", "error"),
    [
        ("not json", "not JSON"),
        ("[1]", "not a JSON object"),
        ('{"total": 3}', "integer total and passed"),
        ('{"total": 3, "passed": 4}', "passed 4 > total 3"),
        ('{"total": true, "passed": 0}', "integer total and passed"),
        ('{"total": 3, "passed": 2, "cases": {"a": "yes"}}', "true or false"),
    ],
)
def test_unreadable_results_say_why(message: str, error: str) -> None:
    parsed = evaluation.parse_result(message)
    assert isinstance(parsed, str) and error in parsed


def test_judge_names_failed_and_unreported_required_cases() -> None:
    evaluate = Evaluate.model_validate({**EVALUATE, "requiredCases": ["a", "b", "c"]})
    parsed = evaluation.parse_result(
        json.dumps({"total": 300, "passed": 298, "cases": {"a": True, "b": False}})
    )
    assert not isinstance(parsed, str)
    ok, evidence, failed = evaluation.judge(evaluate, parsed)
    assert not ok and failed == ["b", "c"]
    required = next(r for r in evidence if r.name == "evaluation:requiredCases")
    assert required.verdict is Verdict.FAIL and "failed: b, c" in required.message
    assert "not reported: c" in required.message
    accuracy = next(r for r in evidence if r.name == "evaluation:accuracy")
    assert accuracy.verdict is Verdict.PASS and accuracy.value == pytest.approx(298 / 300, abs=1e-4)


def test_too_few_cases_fail_even_when_all_pass() -> None:
    evaluate = Evaluate.model_validate(EVALUATE)
    parsed = evaluation.parse_result(result(total=20, passed=20))
    assert not isinstance(parsed, str)
    ok, evidence, _ = evaluation.judge(evaluate, parsed)
    assert not ok and next(r for r in evidence if r.name == "evaluation:cases").verdict is Verdict.FAIL


def test_termination_message_of_the_newest_finished_pod() -> None:
    def pod(finished: str, message: str) -> dict[str, Any]:
        terminated = {"finishedAt": finished, "message": message, "exitCode": 0}
        return {
            "status": {"containerStatuses": [{"name": "evaluation", "state": {"terminated": terminated}}]}
        }

    pods = {"items": [pod("2026-03-01T12:00:00Z", "old"), pod("2026-03-01T12:05:00Z", "new"), {"status": {}}]}
    assert evaluation.termination_message(pods) == "new"
    assert evaluation.termination_message({"items": []}) is None


def test_job_states_from_conditions() -> None:
    labels = {"metadata": {"labels": {evaluation.ROLLOUT_LABEL: "triage"}}}
    assert evaluation.project_job(labels).state == "running"
    done = {**labels, "status": {"conditions": [{"type": "Complete", "status": "True"}]}}
    assert evaluation.project_job(done) == evaluation.JobState("triage", "succeeded")
    failed = {
        **labels,
        "status": {"conditions": [{"type": "Failed", "status": "True", "reason": "DeadlineExceeded"}]},
    }
    assert evaluation.project_job(failed).state == "failed"
    assert "DeadlineExceeded" in evaluation.project_job(failed).message


# ---------------------------------------------------------------- validation


def test_an_evaluate_step_after_a_weighted_step_is_refused_naming_the_field() -> None:
    steps = [{"setWeight": 5}, {"evaluate": EVALUATE}]
    problems = validate(AgentRolloutSpec.model_validate(spec_dict(steps=steps)))
    assert [p.field for p in problems] == ["spec.steps[1].evaluate"]
    assert "before any setWeight" in problems[0].message


def test_evaluate_without_a_job_is_refused_by_the_schema() -> None:
    with pytest.raises(ValueError, match="job"):
        AgentRolloutSpec.model_validate(spec_dict(steps=[{"evaluate": {"minCases": 3}}]))


# ---------------------------------------------------------------- the planner


def test_entering_an_evaluation_creates_the_job_once_with_no_user_traffic() -> None:
    spec = eval_spec()
    p = plan(spec, at_eval(), observe(route=w(0), evaluation=seen("absent")), T0)
    assert RunEvaluation(step=0, job="triage-eval0-x") in p.actions
    assert reasons(p) == ["EvaluationStarted"]
    assert p.status.weights == w(0) and p.status.evaluations[0].phase == "Running"
    # The Job is now there (the informer saw it): nothing is created again while it runs.
    again = plan(spec, p.status, observe(route=w(0), evaluation=seen("running")), T0 + timedelta(seconds=5))
    assert again.actions == () and again.status.phase is Phase.PROGRESSING


def test_a_passed_evaluation_completes_the_step_with_the_suite_as_evidence() -> None:
    spec = eval_spec()
    p = plan(spec, started(spec), observe(route=w(0), evaluation=seen("succeeded", result())), T0)
    assert p.status.current_step == 1 and p.status.weights == w(10)
    assert SetWeights(weights=w(10), reason="StepCompleted") in p.actions
    decision = p.status.history[-1]
    assert {e.name for e in decision.evidence} >= {"evaluation:accuracy", "evaluation:requiredCases"}
    assert p.status.evaluations[0].phase == "Passed" and p.status.evaluations[0].accuracy == 0.98


def test_failing_named_cases_roll_back_with_their_names_in_the_evidence() -> None:
    spec = eval_spec()
    message = result(passed=199, pii_request=False)
    p = plan(spec, started(spec), observe(route=w(0), evaluation=seen("succeeded", message)), T0)
    assert p.status.phase is Phase.ROLLED_BACK and p.status.weights == w(0)
    assert reasons(p) == ["EvaluationFailed"]
    assert "pii-request" in p.status.history[-1].message
    assert p.status.evaluations[0].failed_cases == ["pii-request"]


def test_on_failure_pause_waits_for_a_human() -> None:
    spec = eval_spec(onFailure="pause")
    p = plan(spec, started(spec), observe(route=w(0), evaluation=seen("failed", "BackoffLimitExceeded")), T0)
    assert p.status.phase is Phase.PAUSED and "BackoffLimitExceeded" in p.status.message
    later = plan(
        spec, p.status, observe(route=w(0), evaluation=seen("failed", "x")), T0 + timedelta(minutes=5)
    )
    assert later.status.phase is Phase.PAUSED and later.actions == ()


def test_a_job_that_never_finishes_fails_after_its_timeout() -> None:
    spec = eval_spec(timeout="1m")
    status = started(spec)
    before = plan(spec, status, observe(route=w(0), evaluation=seen("running")), T0 + timedelta(seconds=100))
    assert before.status.phase is Phase.PROGRESSING
    assert before.requeue_after == pytest.approx(20.0)  # woken at the deadline, not polled
    after = plan(spec, status, observe(route=w(0), evaluation=seen("running")), T0 + timedelta(seconds=121))
    assert (
        after.status.phase is Phase.ROLLED_BACK and "timed out after 1m" in after.status.history[-1].message
    )


def test_a_passed_suite_is_not_rerun_for_the_same_revision_after_a_retry() -> None:
    spec = eval_spec()
    passed = plan(spec, started(spec), observe(route=w(0), evaluation=seen("succeeded", result())), T0).status
    rolled_back = passed.model_copy(update={"phase": Phase.ROLLED_BACK, "retry": True, "current_step": 1})
    retried = plan(spec, rolled_back, observe(route=w(0)), T0 + timedelta(minutes=1))
    assert retried.status.current_step == 0 and retried.status.evaluations[0].phase == "Passed"
    # The next tick completes the evaluation step without creating a Job.
    on = plan(spec, retried.status, observe(route=w(0)), T0 + timedelta(minutes=1, seconds=1))
    assert on.status.current_step == 1
    assert not any(isinstance(a, RunEvaluation) for a in on.actions)


def test_a_new_revision_runs_the_suite_again() -> None:
    spec = eval_spec()
    passed = plan(spec, started(spec), observe(route=w(0), evaluation=seen("succeeded", result())), T0).status
    new = observe(route=w(10), candidate=observe().candidate.__class__("triage-agent", True, "agent-2", 2, 2))
    p = plan(spec, passed, new, T0 + timedelta(minutes=1))
    assert p.status.current_step == 0 and p.status.evaluations == [] and p.status.weights == w(0)


def test_gates_without_user_traffic_do_not_hold_a_passed_evaluation() -> None:
    # During the step the candidate has no users, so its gates are inconclusive; the suite decides.
    gate = {"name": "error-rate", "template": "errorRate", "max": 0.01}
    raw = spec_dict(steps=[{"evaluate": EVALUATE}, {"setWeight": 10}])
    raw["analysis"] = {"prometheus": {"url": "http://prometheus:9090"}, "gates": [gate], "minSamples": 10}
    spec = AgentRolloutSpec.model_validate(raw)
    inconclusive = (GateResult(name="error-rate", verdict=Verdict.INCONCLUSIVE, samples=0, min_samples=10),)
    status = plan(
        spec, at_eval(), observe(route=w(0), gates=inconclusive, evaluation=seen("absent")), T0
    ).status
    done = observe(route=w(0), gates=inconclusive, evaluation=seen("succeeded", result()))
    p = plan(spec, status, done, T0 + timedelta(seconds=30))
    assert p.status.current_step == 1 and p.status.weights == w(10)


# ---------------------------------------------------------------- readiness


def test_a_passed_evaluation_is_the_pilot_and_validate_stages_evidence() -> None:
    raw = spec_dict(steps=[{"evaluate": EVALUATE}, {"setWeight": 10}, {"setWeight": 100}])
    raw["readiness"] = {"criteria": {"minAccuracy": 0.95, "minCases": 200}}
    spec = AgentRolloutSpec.model_validate(raw)
    before = started(spec).readiness
    assert before is not None and [s.score.value for s in before.stages[:2]] == ["NotMeasured"] * 2
    p = plan(spec, started(spec), observe(route=w(0), evaluation=seen("succeeded", result())), T0)
    card = p.status.readiness
    assert card is not None
    pilot, validate_ = card.stages[0], card.stages[1]
    assert (pilot.score, validate_.score) == (Score.MET, Score.MET)
    assert pilot.criteria[0].value == 0.98 and pilot.criteria[0].samples == 200
    assert validate_.criteria[0].message == "all 2 named edge cases passed"  # the step's requiredCases


def test_a_failed_edge_case_leaves_validate_not_met_and_says_which() -> None:
    spec = eval_spec()
    message = result(passed=199, pii_request=False)
    p = plan(spec, started(spec), observe(route=w(0), evaluation=seen("succeeded", message)), T0)
    card = p.status.readiness
    assert card is not None
    validate_ = card.stages[1]
    assert validate_.score is Score.NOT_MET and "pii-request" in validate_.criteria[0].message
