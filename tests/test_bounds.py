"""Bounded inputs: every string and list of the spec has a limit in the CRD, and the largest valid
object with the largest status the operator can write stays far below etcd's object size limit.

Without the bounds a 1 MB prometheus.url passed admission, and then every status write failed with a
500 from etcd while traffic sat on the candidate.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml

from agent_rollout import api
from agent_rollout.api import GateResult, Verdict
from agent_rollout.domain import DeploymentState, MilestoneObservation, Observations
from agent_rollout.planner import plan
from agent_rollout.statustext import history_evidence

CRD = Path(__file__).resolve().parents[1] / "crds" / "agentrollouts.agentrollout.io.yaml"
ETCD_LIMIT = 1536 * 1024  # etcd's default --max-request-bytes


def _spec_schema() -> dict[str, Any]:
    crd = yaml.safe_load(CRD.read_text())
    schema: dict[str, Any] = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    return schema


def _unbounded(schema: dict[str, Any], path: str) -> list[str]:
    found = []
    kind = schema.get("type")
    if kind == "string" and "maxLength" not in schema and "enum" not in schema:
        found.append(path)
    if kind == "array":
        if "maxItems" not in schema:
            found.append(path)
        found += _unbounded(schema.get("items", {}), f"{path}[]")
    if (
        kind == "object"
        and isinstance(schema.get("additionalProperties"), dict)
        and "maxProperties" not in schema
    ):
        found.append(path)
    for name, sub in (schema.get("properties") or {}).items():
        found += _unbounded(sub, f"{path}.{name}")
    return found


def test_every_string_and_list_of_the_spec_is_bounded_in_the_crd() -> None:
    assert _unbounded(_spec_schema(), "spec") == []


def _longest(schema: dict[str, Any]) -> int:
    return int(schema["maxLength"])


def largest_spec() -> dict[str, Any]:
    """Every gate at its longest query, every list at its longest: the worst a user can apply."""
    gate_schema = _spec_schema()["properties"]["analysis"]["properties"]["gates"]["items"]["properties"]
    query = 'sum(rate(x{version="{{version}}"}[{{window}}]))'
    query += " " * (_longest(gate_schema["query"]) - len(query))
    samples = 'sum(rate(y{version="{{version}}"}[{{window}}]))'
    samples += " " * (_longest(gate_schema["samplesQuery"]) - len(samples))
    gates = [
        {
            "name": f"g{i:02d}" + "x" * 59,
            "query": query,
            "samplesQuery": samples,
            "max": 1,
            "minSamples": 1,
        }
        for i in range(api.MAX_GATES)
    ]
    url_schema = _spec_schema()["properties"]["analysis"]["properties"]["prometheus"]["properties"]["url"]
    url = "http://prometheus.example/" + "p" * (_longest(url_schema) - 26)
    name = "a" * 253
    return {
        "legacy": {"deployment": "l" + name[1:]},
        "candidate": {"deployment": "c" + name[1:]},
        "traffic": {
            "gatewayAPI": {"httpRoute": name, "legacyBackend": "l" + name[1:], "candidateBackend": name}
        },
        "analysis": {"prometheus": {"url": url}, "gates": gates, "interval": "5s"},
        "steps": [
            {"setWeight": min(i * 2, 100), **({"milestone": {"transactions": 1}} if 0 < i <= 5 else {})}
            for i in range(api.MAX_STEPS)
        ],
        "readiness": {
            "criteria": {"edgeCases": ["e" * 128] * 50, "waive": ["optimize/baseline"]},
            "requireStages": [{"stage": "Deploy", "before": 100}],
        },
    }


def test_largest_object_with_its_largest_status_stays_far_below_the_etcd_limit() -> None:
    raw = {**largest_spec(), "historyLimit": api.HISTORY_LIMIT_MAX}
    spec = api.parse_spec(raw)
    assert spec.analysis is not None
    now = datetime(2026, 3, 1, tzinfo=UTC)
    status = api.AgentRolloutStatus()
    legacy = DeploymentState(spec.legacy.deployment, True, "l", 1, 1)
    candidate = DeploymentState(spec.candidate.deployment, True, "c", 1, 1)
    weights = api.Weights()
    for tick in range(3 * api.HISTORY_LIMIT_MAX):  # fills the history with step decisions carrying all gates
        results = tuple(
            GateResult(
                name=g.name,
                verdict=Verdict.PASS,
                value=0.5,
                bound="<= " + "9" * 400,
                samples=10**9,
                min_samples=1,
                query=g.query or "",
                message="m" * 2000,
            )
            for g in spec.analysis.gates
        )
        # Every milestone records all gates, as many as status keeps.
        milestone = MilestoneObservation(status.current_step, 10**9, 10**6, results)
        obs = Observations(
            legacy=legacy,
            candidate=candidate,
            route_weights=weights,
            gates=results,
            generation=1,
            candidate_requests=10**9,
            milestone=milestone,
        )
        status = plan(spec, status, obs, now + timedelta(seconds=10 * tick)).status
        weights = status.weights
    assert len(status.history) == api.HISTORY_LIMIT_MAX
    assert all(len(d.evidence) == api.MAX_GATES for d in status.history[1:])
    assert status.readiness is not None and len(status.readiness.milestones) == api.MILESTONE_LIMIT

    # A drill that failed on every gate, and the one that passed before it (drill.py bounds their texts).
    drill = api.DrillRecord(
        result=api.DrillResult.FAILED,
        started_at="2026-03-01T00:00:00Z",
        bound="15m",
        step=api.MAX_STEPS - 1,
        weights=weights,
        revision="c" * 64,
        message="m" * 512,
        evidence=[history_evidence(r) for r in results],
    )
    status = status.model_copy(update={"last_drill": drill, "passed_drill": drill})

    # A step has one kind: the largest spec may also have its last steps approvals, every list full.
    names = ["u" * 128] * api.MAX_APPROVERS
    approval = {"approvers": {"users": names, "groups": names}, "expires": "1h", "minApprovals": 1}
    last = [{"approval": approval, "escalate": {"after": "1h"}}] * api.MAX_APPROVAL_STEPS
    approvals = {**raw, "steps": [*raw["steps"][: -api.MAX_APPROVAL_STEPS], *last]}
    api.parse_spec(approvals)
    spec_size = max(len(json.dumps(raw)), len(json.dumps(approvals)))
    size = spec_size + len(json.dumps({"status": api.dump(status)}))

    print(f"largest AgentRollout with its largest status: {size / 1024:.0f} KiB (etcd limit 1536 KiB)")
    assert size < ETCD_LIMIT / 2
