"""Spec rules the CRD schema cannot express: each problem names the field to fix."""

from __future__ import annotations

from typing import Any

import pytest

from agent_rollout.api import AgentRolloutSpec
from agent_rollout.domain import SpecProblem
from agent_rollout.validation import validate
from tests.specs import analysis_dict, spec_dict


def make_spec(**overrides: Any) -> AgentRolloutSpec:
    raw = spec_dict(
        analysis=analysis_dict({"name": "error-rate", "template": "errorRate", "max": 0.01}),
        steps=[{"setWeight": 5}, {"pause": {"duration": "1h"}}, {"setWeight": 50}],
    )
    raw.update(overrides)
    return AgentRolloutSpec.model_validate(raw)


def gates(*gate_list: dict[str, Any]) -> dict[str, Any]:
    return analysis_dict(*gate_list)


def fields(spec: AgentRolloutSpec) -> list[str]:
    return [p.field for p in validate(spec)]


def test_a_sound_spec_has_no_problems() -> None:
    assert validate(make_spec()) == []
    assert validate(make_spec(analysis=None)) == []


def test_decreasing_weight_names_the_step() -> None:
    spec = make_spec(steps=[{"setWeight": 25}, {"pause": {}}, {"setWeight": 25}, {"setWeight": 10}])
    assert validate(spec) == [
        SpecProblem(
            "spec.steps[3].setWeight",
            "setWeight 10 is lower than setWeight 25 at spec.steps[2]; weights must not decrease",
        )
    ]


def test_gate_without_a_bound_is_a_problem() -> None:
    spec = make_spec(analysis=gates({"name": "cost", "template": "costPerRequest"}))
    assert fields(spec) == ["spec.analysis.gates[0]"]


def test_compare_without_a_comparison_is_no_bound() -> None:
    spec = make_spec(analysis=gates({"name": "latency", "template": "latencyQuantile", "compare": {}}))
    assert fields(spec) == ["spec.analysis.gates[0].compare"]


@pytest.mark.parametrize("template", ["errorRate", "flagRate", "evalAccuracy"])
def test_two_proportion_accepts_yes_no_templates(template: str) -> None:
    spec = make_spec(analysis=gates({"name": "g", "template": template, "compare": {"twoProportion": True}}))
    assert validate(spec) == []


@pytest.mark.parametrize("template", ["latencyQuantile", "costPerRequest", "tokensPerRequest"])
def test_two_proportion_rejects_continuous_templates(template: str) -> None:
    spec = make_spec(analysis=gates({"name": "g", "template": template, "compare": {"twoProportion": True}}))
    assert fields(spec) == ["spec.analysis.gates[0].compare.twoProportion"]


def test_two_proportion_on_a_custom_query_needs_samples_query() -> None:
    custom = {"name": "g", "query": 'sum(rate(x{v="{{version}}"}[2m]))', "compare": {"twoProportion": True}}
    assert fields(make_spec(analysis=gates(custom))) == ["spec.analysis.gates[0].compare.twoProportion"]
    counted = {**custom, "samplesQuery": "sum(increase(requests[2m]))"}
    assert validate(make_spec(analysis=gates(counted))) == []


def test_duplicate_gate_names_name_the_second_gate() -> None:
    gate = {"name": "error-rate", "template": "errorRate", "max": 0.01}
    problems = validate(make_spec(analysis=gates(gate, {**gate, "max": 0.02})))
    assert problems == [
        SpecProblem(
            "spec.analysis.gates[1].name", "duplicate gate name 'error-rate' (also spec.analysis.gates[0])"
        )
    ]


def test_min_above_max_is_a_problem() -> None:
    spec = make_spec(analysis=gates({"name": "accuracy", "template": "evalAccuracy", "min": 0.9, "max": 0.8}))
    assert validate(spec) == [
        SpecProblem("spec.analysis.gates[0].min", "gate 'accuracy': min 0.9 is greater than max 0.8")
    ]


def test_legacy_and_candidate_must_differ() -> None:
    assert fields(make_spec(candidate={"deployment": "triage-rules"})) == ["spec.candidate.deployment"]


def test_gateway_backends_must_differ() -> None:
    router = {"httpRoute": "triage", "legacyBackend": "triage", "candidateBackend": "triage"}
    assert fields(make_spec(traffic={"gatewayAPI": router})) == ["spec.traffic.gatewayAPI.candidateBackend"]


def test_every_problem_is_reported_at_once() -> None:
    spec = make_spec(
        candidate={"deployment": "triage-rules"},
        steps=[{"setWeight": 50}, {"setWeight": 5}],
        analysis=gates({"name": "cost", "template": "costPerRequest"}),
    )
    assert fields(spec) == ["spec.candidate.deployment", "spec.steps[1].setWeight", "spec.analysis.gates[0]"]


def test_custom_queries_that_cannot_be_rendered_or_compared_name_the_field() -> None:
    def fields(**gate: Any) -> list[str]:
        spec = make_spec(analysis=gates({"name": "g", **gate}))
        return [p.field for p in validate(spec)]

    assert fields(template="errorRate", max=0.01) == []
    assert fields(query="x{{nope}}", max=1) == ["spec.analysis.gates[0].query"]
    assert fields(query='x{v="{{candidate}}"}', compare={"maxRatio": 2}) == ["spec.analysis.gates[0].query"]
    assert fields(query="x{{version}}", minSamples=10, max=1) == ["spec.analysis.gates[0].minSamples"]
    assert fields(query="x{{version}}", samplesQuery="y{{version}}", minSamples=10, max=1) == []


def test_a_zero_window_names_the_field() -> None:
    gate = {"name": "error-rate", "template": "errorRate", "max": 0.01}
    spec = make_spec(analysis=gates({**gate, "window": "0s"}, {**gate, "name": "later", "window": "30s2m"}))
    assert validate(spec) == [
        SpecProblem("spec.analysis.gates[0].window", "gate 'error-rate': window must be longer than 0")
    ]
