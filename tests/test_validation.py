"""Spec rules the CRD schema cannot express: each problem names the field to fix."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

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
    custom = {
        "name": "g",
        "query": 'sum(rate(x{v="{{version}}"}[2m]))',
        "compare": {"twoProportion": True},
        "direction": "higherIsWorse",
    }
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
    assert fields(query='x{v="{{candidate}}"}', compare={"maxRatio": 2}, max=9) == [
        "spec.analysis.gates[0].query"
    ]
    assert fields(query='x{v="{{version}"}', max=1) == ["spec.analysis.gates[0].query"]
    assert fields(query="x{{version}}", samplesQuery="y{{version", max=1) == [
        "spec.analysis.gates[0].samplesQuery"
    ]
    assert fields(query="x{{version}}", minSamples=10, max=1) == ["spec.analysis.gates[0].minSamples"]
    assert fields(query="x{{version}}", samplesQuery="y{{version}}", minSamples=10, max=1) == []


def test_a_zero_window_names_the_field() -> None:
    gate = {"name": "error-rate", "template": "errorRate", "max": 0.01}
    spec = make_spec(analysis=gates({**gate, "window": "0s"}, {**gate, "name": "later", "window": "30s2m"}))
    assert validate(spec) == [
        SpecProblem("spec.analysis.gates[0].window", "gate 'error-rate': window must be longer than 0")
    ]


# ---------------------------------------------------------------- gate direction


def direction_problems(**gate: Any) -> list[SpecProblem]:
    return [p for p in validate(make_spec(analysis=gates({"name": "g", **gate}))) if "direction" in p.field]


@pytest.mark.parametrize(
    "gate",
    [
        {"query": 'x{v="{{version}}"}', "samplesQuery": "n", "compare": {"twoProportion": True}},
        {"query": 'x{v="{{version}}"}', "compare": {"maxRatio": 1.2}},
        {"query": 'x{v="{{version}}"}', "min": 0, "max": 1, "compare": {"maxRatio": 1.2}},
    ],
    ids=["twoProportion-only", "maxRatio-only", "min-and-max"],
)
def test_custom_compare_without_a_one_sided_bound_needs_a_direction(gate: dict[str, Any]) -> None:
    assert direction_problems(**gate) == [
        SpecProblem(
            "spec.analysis.gates[0].direction",
            "gate 'g': compare needs direction (higherIsWorse or lowerIsWorse): "
            "it is inferred for a custom query only from max alone or min alone",
        )
    ]
    assert direction_problems(**gate, direction="higherIsWorse") == []
    assert direction_problems(**gate, direction="lowerIsWorse") == []


def test_direction_is_inferred_from_a_one_sided_bound_or_a_template() -> None:
    compare = {"compare": {"maxRatio": 1.2}}
    assert direction_problems(query='x{v="{{version}}"}', max=1, **compare) == []
    assert direction_problems(query='x{v="{{version}}"}', min=1, **compare) == []
    assert direction_problems(template="latencyQuantile", **compare) == []
    assert direction_problems(template="evalAccuracy", **compare, direction="lowerIsWorse") == []
    # Without compare the direction is never needed: min and max are absolute.
    assert direction_problems(query="x", min=0, max=1) == []


@pytest.mark.parametrize(
    ("template", "direction"),
    [("errorRate", "lowerIsWorse"), ("latencyQuantile", "lowerIsWorse"), ("evalAccuracy", "higherIsWorse")],
)
def test_a_direction_contradicting_the_template_is_a_problem(template: str, direction: str) -> None:
    [problem] = direction_problems(template=template, max=1, direction=direction)
    assert problem.field == "spec.analysis.gates[0].direction"
    assert "contradicts" in problem.message and template in problem.message


# ---------------------------------------------------------------- Prometheus source


def prometheus_problems(**source: Any) -> list[SpecProblem]:
    spec = make_spec(
        analysis={**analysis_dict({"name": "e", "template": "errorRate", "max": 0.01}), "prometheus": source}
    )
    return validate(spec)


@pytest.mark.parametrize(
    "url",
    ["http://prometheus.monitoring:9090", "https://prom.example.com/prometheus/", "http://[::1]:9090"],
)
def test_a_plain_prometheus_url_is_accepted(url: str) -> None:
    assert prometheus_problems(url=url) == []


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("unused", "URL needs the scheme http:// or https://"),
        ("prometheus:9090", "URL needs the scheme http:// or https://"),
        ("ftp://prometheus", "URL needs the scheme http:// or https://"),
        ("http://", "URL has no host"),
        ("http://prometheus :9090", "URL contains whitespace or control characters"),
        ("http://prometheus:9090\n", "URL contains whitespace or control characters"),
        ("http://prometheus:99999", "not a URL (Port out of range 0-65535)"),
        ("http://prometheus:9090/?x=1", "URL must not have a query string or fragment"),
    ],
)
def test_a_garbage_prometheus_url_names_the_field(url: str, why: str) -> None:
    [problem] = prometheus_problems(url=url)
    assert problem.field == "spec.analysis.prometheus.url"
    assert problem.message.startswith(why), problem.message


def test_an_overlong_url_is_refused_by_the_schema() -> None:
    with pytest.raises(ValidationError, match="at most 2048 characters"):
        prometheus_problems(url="http://" + "p" * 2050)


@pytest.mark.parametrize("timeout", ["0s", "0ms", "5m1s", "1h"])
def test_a_timeout_of_zero_or_over_five_minutes_names_the_field(timeout: str) -> None:
    assert prometheus_problems(url="http://p:9090", timeout=timeout) == [
        SpecProblem(
            "spec.analysis.prometheus.timeout", f"timeout {timeout} must be longer than 0s and at most 5m"
        )
    ]


@pytest.mark.parametrize("timeout", ["1ms", "10s", "5m"])
def test_a_timeout_within_bounds_is_accepted(timeout: str) -> None:
    assert prometheus_problems(url="http://p:9090", timeout=timeout) == []


def test_two_notification_sinks_of_one_name_are_refused_naming_the_second() -> None:
    sink = {"name": "oncall", "urlFrom": {"secretKeyRef": {"name": "hooks", "key": "slack"}}}
    spec = AgentRolloutSpec.model_validate(spec_dict(notifications=[sink, {**sink, "type": "slack"}]))
    problems = validate(spec)
    assert [p.field for p in problems] == ["spec.notifications[1].name"]
    assert "spec.notifications[0]" in problems[0].message


def test_one_reconcile_validates_the_spec_once_and_still_names_the_field(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from agent_rollout import validation
    from tests.test_reconcile import World, rollout_body

    calls: list[int] = []
    targets = validation._target_problems

    def counted(spec: AgentRolloutSpec) -> list[SpecProblem]:
        calls.append(1)
        return targets(spec)

    monkeypatch.setattr(validation, "_target_problems", counted)
    world = World(rollout_body([{"setWeight": 50}, {"setWeight": 10}]), acknowledged=False)
    world.tick()
    assert len(calls) == 1
    assert world.status["phase"] == "Failed"
    assert "spec.steps[1].setWeight" in world.condition("SpecValid")["message"]
