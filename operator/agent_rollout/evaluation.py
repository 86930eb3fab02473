"""Evaluation steps: the Job that runs a suite against the candidate, and the verdict on its result.

Pure: names, the Job manifest, parsing the result and judging it. The shell creates the Job and reads
its pod's termination message; the planner decides.

The result contract. The evaluation container writes ONE JSON object to its termination message file
(/dev/termination-log; its path is also in $AGENT_ROLLOUT_RESULT_FILE) and exits 0:

    {"total": 200, "passed": 193, "cases": {"refund-over-limit": true, "pii-request": false}}

`total` and `passed` count every input of the suite; `cases` names the edge cases (at least every one in
the step's requiredCases; a required case it does not name counts as failed). Why the termination
message and not counters pushed to Prometheus: it needs nothing but the Job (no Pushgateway to run and
secure), the result stays with the Job's pod for as long as the Job exists (for review and for an
operator restart), and the kubelet bounds it to 4 KiB, so it can never grow a status. A non-zero exit
is a failed evaluation whatever it wrote: the suite itself broke.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any, Literal

from agent_rollout import api
from agent_rollout.api import Evaluate, GateResult, Verdict

CANDIDATE_URL_ENV = "AGENT_ROLLOUT_CANDIDATE_URL"
RESULT_FILE_ENV = "AGENT_ROLLOUT_RESULT_FILE"
REVISION_ENV = "AGENT_ROLLOUT_CANDIDATE_REVISION"
TERMINATION_LOG = "/dev/termination-log"
ROLLOUT_LABEL = f"{api.GROUP}/rollout"
STEP_LABEL = f"{api.GROUP}/evaluation-step"
CONTAINER = "evaluation"
MESSAGE_LIMIT = 4096  # the kubelet keeps at most this much of a termination message
RECORDS_KEPT = 20


@dataclass(frozen=True)
class EvaluationResult:
    total: int
    passed: int
    cases: dict[str, bool]


def job_name(rollout: str, step: int, revision: str | None, attempt: str | None) -> str:
    """One Job per rollout, step, candidate revision and attempt: a deterministic name, so a create
    repeated after a crash finds the Job it made (409) instead of starting a second suite. A retry is a
    new attempt, so it runs the suite again; the same revision never reruns a passed suite (the planner
    keeps the record). At most 63 characters: the Job controller puts the name in a pod label."""
    digest = hashlib.sha256(f"{rollout}/{step}/{revision}/{attempt}".encode()).hexdigest()[:10]
    return f"{rollout[:40].rstrip('-.')}-eval{step}-{digest}"


def candidate_url(evaluate: Evaluate, namespace: str, candidate_backend: str) -> str:
    return evaluate.candidate_url or f"http://{candidate_backend}.{namespace}.svc"


def job_manifest(
    *,
    name: str,
    namespace: str,
    rollout: str,
    rollout_uid: str,
    step: int,
    evaluate: Evaluate,
    url: str,
    revision: str | None,
) -> dict[str, Any]:
    """The Job, owned by the AgentRollout (garbage-collected with it), never retried by Kubernetes
    (a failed suite is a verdict, not a glitch to retry), killed at the step's timeout."""
    job = evaluate.job
    env = [{"name": e.name, "value": e.value} for e in job.env]
    env += [
        {"name": CANDIDATE_URL_ENV, "value": url},
        {"name": REVISION_ENV, "value": revision or ""},
        {"name": RESULT_FILE_ENV, "value": TERMINATION_LOG},
    ]
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": job.image,
        "env": env,
        "terminationMessagePath": TERMINATION_LOG,
        "terminationMessagePolicy": "File",
    }
    if job.command:
        container["command"] = list(job.command)
    if job.args:
        container["args"] = list(job.args)
    pod_spec: dict[str, Any] = {"restartPolicy": "Never", "containers": [container]}
    if job.service_account_name:
        pod_spec["serviceAccountName"] = job.service_account_name
    if job.node_selector:
        pod_spec["nodeSelector"] = dict(job.node_selector)
    labels = {ROLLOUT_LABEL: rollout, STEP_LABEL: str(step)}
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": labels,
            "ownerReferences": [
                {
                    "apiVersion": f"{api.GROUP}/{api.VERSION}",
                    "kind": api.KIND,
                    "name": rollout,
                    "uid": rollout_uid,
                    "controller": True,
                    "blockOwnerDeletion": False,
                }
            ],
        },
        "spec": {
            "backoffLimit": 0,
            "activeDeadlineSeconds": max(1, int(api.duration_seconds(evaluate.timeout))),
            "template": {"metadata": {"labels": labels}, "spec": pod_spec},
        },
    }


def parse_result(message: str) -> EvaluationResult | str:
    """The Job's result, or why it is not one (said in the evidence, so the suite's author can fix it)."""
    try:
        raw = json.loads(message)
    except ValueError:
        return f"the termination message is not JSON: {message[:120]!r}"
    if not isinstance(raw, dict):
        return "the termination message is not a JSON object"
    total, passed, cases = raw.get("total"), raw.get("passed"), raw.get("cases", {})
    if not isinstance(total, int) or not isinstance(passed, int) or not (_count(total) and _count(passed)):
        return "the result needs integer total and passed (>= 0)"
    if passed > total:
        return f"the result says passed {passed} > total {total}"
    if not isinstance(cases, dict) or not all(isinstance(v, bool) for v in cases.values()):
        return "the result's cases must map case names to true or false"
    return EvaluationResult(total=total, passed=passed, cases={str(k): v for k, v in cases.items()})


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def judge(evaluate: Evaluate, result: EvaluationResult) -> tuple[bool, list[GateResult], list[str]]:
    """(passed, evidence, failing named cases). Every bound of the step is in the evidence, met or not."""
    accuracy = result.passed / result.total if result.total else 0.0
    enough = result.total >= evaluate.min_cases
    evidence = [
        GateResult(
            name="evaluation:cases",
            verdict=Verdict.PASS if enough else Verdict.FAIL,
            value=float(result.total),
            bound=f">= {evaluate.min_cases}",
            samples=result.total,
            message="" if enough else f"the suite ran {result.total} cases, fewer than {evaluate.min_cases}",
        )
    ]
    ok = enough
    if evaluate.min_accuracy is not None:
        accurate = enough and accuracy >= evaluate.min_accuracy
        ok = ok and accurate
        evidence.append(
            GateResult(
                name="evaluation:accuracy",
                verdict=Verdict.PASS if accurate else Verdict.FAIL,
                value=round(accuracy, 4),
                bound=f">= {evaluate.min_accuracy}",
                samples=result.total,
                min_samples=evaluate.min_cases,
                message=f"{result.passed}/{result.total} cases passed",
            )
        )
    failed_named = sorted(name for name, passed in result.cases.items() if not passed)
    missing = [name for name in evaluate.required_cases if name not in result.cases]
    failed_required = sorted(
        {*missing, *(n for n in evaluate.required_cases if result.cases.get(n) is False)}
    )
    if evaluate.required_cases:
        ok = ok and not failed_required
        text = ", ".join(failed_required)
        evidence.append(
            GateResult(
                name="evaluation:requiredCases",
                verdict=Verdict.FAIL if failed_required else Verdict.PASS,
                value=float(len(evaluate.required_cases) - len(failed_required)),
                bound=f"all {len(evaluate.required_cases)} pass",
                samples=len(evaluate.required_cases),
                message=(f"failed: {text}" if failed_required else "all required cases passed")
                + (f" (not reported: {', '.join(missing)})" if missing else ""),
            )
        )
    return ok, evidence, sorted({*failed_named, *failed_required})[: api.MAX_CASES]


def job_failure_text(reason: str, message: str) -> str:
    text = re.sub(r"\s+", " ", f"{reason}: {message}".strip(": ")).strip()
    return text or "the evaluation Job failed"


@dataclass(frozen=True)
class JobState:
    """What the Jobs informer keeps of an evaluation Job."""

    rollout: str  # from its label: the rollout a change wakes
    state: Literal["running", "succeeded", "failed"]
    message: str = ""  # a failed Job's reason and message


def project_job(obj: dict[str, Any]) -> JobState:
    meta, status = obj.get("metadata") or {}, obj.get("status") or {}
    rollout = str((meta.get("labels") or {}).get(ROLLOUT_LABEL, ""))
    for c in status.get("conditions") or []:
        if c.get("status") != "True":
            continue
        if c.get("type") == "Complete":
            return JobState(rollout, "succeeded")
        if c.get("type") == "Failed":
            return JobState(rollout, "failed", job_failure_text(c.get("reason", ""), c.get("message", "")))
    return JobState(rollout, "running")


def termination_message(pods: dict[str, Any]) -> str | None:
    """The evaluation container's termination message of the Job's newest finished pod (a pod list)."""
    finished = []
    for pod in pods.get("items") or []:
        for cs in (pod.get("status") or {}).get("containerStatuses") or []:
            terminated = (cs.get("state") or {}).get("terminated")
            if cs.get("name") == CONTAINER and terminated:
                stamp = terminated.get("finishedAt") or ""
                finished.append((stamp, str(terminated.get("message") or ""), terminated.get("exitCode")))
    if not finished:
        return None
    _, message, _ = max(finished)
    return message[:MESSAGE_LIMIT]
