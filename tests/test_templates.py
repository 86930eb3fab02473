"""PromQL rendering: what each template measures, and that spec values cannot inject query text."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent_rollout.analysis.templates import (
    TemplateError,
    candidate_requests_query,
    gate_queries,
    promql_escape,
    render_variables,
    template_queries,
    version_values,
)
from agent_rollout.api import AgentRolloutSpec, MetricNames, Template, parse_spec

INJECTION = 'a"} or vector(1) #'


def make_spec(gates: list[dict[str, Any]], metrics: dict[str, Any] | None = None) -> AgentRolloutSpec:
    return parse_spec(
        {
            "legacy": {"deployment": "triage-rules"},
            "candidate": {"deployment": "triage-agent-v2"},
            "traffic": {"gatewayAPI": {"httpRoute": "r", "legacyBackend": "a", "candidateBackend": "b"}},
            "analysis": {
                "prometheus": {"url": "http://prometheus:9090"},
                "metrics": metrics or {},
                "gates": gates,
            },
            "steps": [{"setWeight": 5}],
        }
    )


def unquote_promql(text: str, start: int) -> tuple[str, int]:
    """Decode the PromQL double-quoted string opening at text[start]; return (content, index after it).

    Mirrors the PromQL lexer: a string ends at the first unescaped quote; a raw newline is an error.
    """
    assert text[start] == '"'
    escapes = {"\\": "\\", '"': '"', "n": "\n", "r": "\r", "t": "\t"}
    out: list[str] = []
    i = start + 1
    while True:
        ch = text[i]
        if ch == '"':
            return "".join(out), i + 1
        assert ch != "\n", "raw newline inside a PromQL string"
        if ch == "\\":
            out.append(escapes[text[i + 1]])
            i += 2
        else:
            out.append(ch)
            i += 1


def label_values(query: str, label: str) -> list[str]:
    """Every value matched to `label` in the query, decoded as PromQL would."""
    values = []
    for match in re.finditer(rf'(?<![a-zA-Z0-9_]){label}(=|!=|=~|!~)"', query):
        value, _ = unquote_promql(query, match.end() - 1)
        values.append(value)
    return values


# ---------------------------------------------------------------- escaping


def test_injection_in_version_is_escaped() -> None:
    spec = make_spec(
        [{"name": "errors", "template": "errorRate", "max": 0.01}], {"candidateVersion": INJECTION}
    )
    query = gate_queries(spec.analysis.gates[0], spec, "support", "candidate").value  # type: ignore[union-attr]
    assert "or vector(1) #" not in query.replace(promql_escape(INJECTION), "")
    assert label_values(query, "version") == [INJECTION, INJECTION]


def test_injection_in_custom_query_variables_is_escaped() -> None:
    spec = make_spec(
        [{"name": "custom", "query": 'sum(x{version="{{version}}",ns="{{namespace}}"})', "max": 1}],
        {"candidateVersion": INJECTION},
    )
    query = gate_queries(spec.analysis.gates[0], spec, 'ns"\n', "candidate").value  # type: ignore[union-attr]
    assert label_values(query, "version") == [INJECTION]
    assert label_values(query, "ns") == ['ns"\n']
    assert "\n" not in query


@given(st.text(min_size=1))
def test_any_version_value_round_trips_through_the_label_literal(version: str) -> None:
    metrics = MetricNames(candidate_version=version)
    queries = template_queries(Template.FLAG_RATE, metrics, version=version, namespace="support", window="2m")
    for query in (queries.value, queries.samples):
        assert query is not None
        assert label_values(query, "version") == [version] * query.count("version=")
        assert label_values(query, "namespace") == ["support"] * query.count("namespace=")


def test_substituted_values_are_not_expanded_again() -> None:
    rendered = render_variables('x{a="{{candidate}}"}', {"candidate": "{{window}}", "window": "2m"})
    assert rendered == 'x{a="{{window}}"}'


def test_unknown_variable_is_an_error() -> None:
    with pytest.raises(TemplateError, match="candidat"):
        render_variables('x{a="{{candidat}}"}', {"candidate": "v2"})


@pytest.mark.parametrize(
    ("query", "at"),
    [('x{v="{{version}"}', 6), ("x{{", 2), ("{{{version}}}", 1), ('x{v="{{ver sion}}"}', 6)],
)
def test_a_brace_pair_that_opens_no_variable_is_an_error(query: str, at: int) -> None:
    # Left alone, it would reach Prometheus as text and fail every evaluation of the gate.
    with pytest.raises(TemplateError, match=rf"^{{{{ at character {at} opens no variable"):
        render_variables(query, {"version": "v2"})
    assert render_variables('x{v="{{ version }}"}', {"version": "v2"}) == 'x{v="v2"}'


def test_invalid_names_are_refused_even_without_model_validation() -> None:
    metrics = MetricNames.model_construct(**{**MetricNames().model_dump(), "version_label": 'v"} or x'})
    with pytest.raises(TemplateError, match="label name"):
        template_queries(Template.ERROR_RATE, metrics, version="v", namespace="n", window="2m")
    metrics = MetricNames.model_construct(**{**MetricNames().model_dump(), "cost_counter": "c{a}"})
    with pytest.raises(TemplateError, match="metric name"):
        template_queries(Template.COST_PER_REQUEST, metrics, version="v", namespace="n", window="2m")
    with pytest.raises(TemplateError, match="duration"):
        template_queries(Template.ERROR_RATE, MetricNames(), version="v", namespace="n", window="2m]")


@pytest.mark.parametrize(
    ("window", "rendered"),
    [
        ("2m", "2m"),
        ("1h30m", "1h30m"),
        ("0h5m", "0h5m"),
        ("1m500ms", "1m500ms"),
        ("30s2m", "150s"),  # PromQL wants units in order: "[30s2m]" is a parse error
        ("1m1m", "120s"),  # and each unit once
        ("500ms1s", "1500ms"),
    ],
)
def test_windows_render_as_durations_promql_parses(window: str, rendered: str) -> None:
    queries = template_queries(Template.ERROR_RATE, MetricNames(), version="v", namespace="n", window=window)
    assert re.findall(r"\[([^]]+)\]", queries.value) == [rendered, rendered]
    spec = make_spec([{"name": "c", "query": "rate(x[{{window}}])", "max": 1, "window": window}])
    assert spec.analysis is not None
    assert gate_queries(spec.analysis.gates[0], spec, "n", "candidate").value == f"rate(x[{rendered}])"


def test_a_zero_window_cannot_be_rendered() -> None:
    # PromQL refuses "[0s]", which would fail every query of the evaluation as if Prometheus were down.
    with pytest.raises(TemplateError, match="longer than 0"):
        template_queries(Template.FLAG_RATE, MetricNames(), version="v", namespace="n", window="0s")
    spec = make_spec([{"name": "c", "query": "rate(x[{{window}}])", "max": 1, "window": "0m0s"}])
    assert spec.analysis is not None
    with pytest.raises(TemplateError, match="longer than 0"):
        gate_queries(spec.analysis.gates[0], spec, "n", "candidate")


# ---------------------------------------------------------------- versions and variables


def test_versions_default_to_deployment_names() -> None:
    assert version_values(make_spec([])) == ("triage-rules", "triage-agent-v2")


def test_versions_follow_metrics_overrides() -> None:
    spec = make_spec([], {"legacyVersion": "v1", "candidateVersion": "v2"})
    assert version_values(spec) == ("v1", "v2")


def test_legacy_side_measures_the_legacy_version() -> None:
    spec = make_spec([{"name": "errors", "template": "errorRate", "max": 0.01}])
    gate = spec.analysis.gates[0]  # type: ignore[union-attr]
    assert set(label_values(gate_queries(gate, spec, "s", "legacy").value, "version")) == {"triage-rules"}
    candidate = gate_queries(gate, spec, "s", "candidate").value
    assert set(label_values(candidate, "version")) == {"triage-agent-v2"}


def test_custom_gate_renders_every_variable() -> None:
    spec = make_spec(
        [
            {
                "name": "custom",
                "query": "f({{namespace}},{{legacy}},{{candidate}},{{ version }},{{window}})",
                "samplesQuery": "g({{version}})",
                "window": "5m",
                "max": 1,
            }
        ]
    )
    queries = gate_queries(spec.analysis.gates[0], spec, "support", "legacy")  # type: ignore[union-attr]
    assert queries.value == "f(support,triage-rules,triage-agent-v2,triage-rules,5m)"
    assert queries.samples == "g(triage-rules)"


def test_custom_gate_without_samples_query_has_no_samples_query() -> None:
    spec = make_spec([{"name": "custom", "query": "up", "max": 1}])
    assert gate_queries(spec.analysis.gates[0], spec, "s", "candidate").samples is None  # type: ignore[union-attr]


def test_price_per_token_switches_cost_to_tokens_times_price() -> None:
    priced = template_queries(
        Template.COST_PER_REQUEST,
        MetricNames(price_per_token=2e-06),
        version="v",
        namespace="n",
        window="2m",
    )
    assert "gen_ai_client_token_usage_sum" in priced.value and "* 2e-06 /" in priced.value
    assert "agent_cost_usd_total" not in priced.value


def test_candidate_requests_query_counts_candidate_requests_over_the_step() -> None:
    query = candidate_requests_query(make_spec([]), "support", 3600)
    assert query == (
        "sum(increase(gen_ai_client_operation_duration_seconds_count"
        '{version="triage-agent-v2",namespace="support"}[3600s]))'
    )
    with pytest.raises(TemplateError):
        candidate_requests_query(make_spec([]), "support", 0)


# ---------------------------------------------------------------- PromQL semantics (promtool)

PROMTOOL = shutil.which("promtool")


# promtool ships with Debian's prometheus package, which `make bootstrap` installs: a missing promtool
# is a broken set-up and must fail, never skip silently.
@pytest.fixture(autouse=True, scope="module")
def _promtool_installed() -> None:
    assert PROMTOOL is not None, "promtool not found: run `make bootstrap` (installs Debian's prometheus)"


CANDIDATE = {"version": "triage-agent-v2", "namespace": "support"}
LEGACY = {"version": "triage-rules", "namespace": "support"}


def series(metric: str, labels: dict[str, str], per_step: float) -> dict[str, str]:
    inner = ",".join(f'{k}="{promql_escape(v)}"' for k, v in labels.items())
    return {"series": f"{metric}{{{inner}}}", "values": f"0+{per_step}x40"}


def agent_series(
    labels: dict[str, str],
    ok: int,
    errors: int,
    flagged: int,
    cost: float,
    tokens: tuple[int, int],
    evals: tuple[int, int],
) -> list[dict[str, str]]:
    """One simulated agent version: counters grow by these amounts every 15 s scrape."""
    d = "gen_ai_client_operation_duration_seconds"
    out = [
        series(f"{d}_count", labels, ok),
        series(f"{d}_count", {**labels, "error_type": "timeout"}, errors),
        series(f"{d}_bucket", {**labels, "le": "1"}, 1),
        series(f"{d}_bucket", {**labels, "le": "2"}, 2),
        series(f"{d}_bucket", {**labels, "le": "4"}, 4),
        series(f"{d}_bucket", {**labels, "le": "+Inf"}, 4),
        series("agent_cost_usd_total", labels, cost),
        series("gen_ai_client_token_usage_sum", {**labels, "gen_ai_token_type": "input"}, tokens[0]),
        series("gen_ai_client_token_usage_sum", {**labels, "gen_ai_token_type": "output"}, tokens[1]),
        series("agent_eval_total", labels, evals[0]),
        series("agent_eval_correct_total", labels, evals[1]),
    ]
    if flagged:
        out.append(series("agent_answers_flagged_total", labels, flagged))
    return out


def promtool_expect(
    tmp_path: Path, input_series: list[dict[str, str]], expected: dict[str, float | None]
) -> None:
    """Evaluate each query with Prometheus' own engine at t=5m and compare (None: empty result)."""
    tests: list[dict[str, object]] = []
    for query, value in expected.items():
        if value is None:
            tests.append({"expr": query, "eval_time": "5m", "exp_samples": []})
        else:  # compare inside PromQL: promtool checks floats for exact equality
            check = f"abs(({query}) - {value!r}) < bool 1e-9"
            tests.append({"expr": check, "eval_time": "5m", "exp_samples": [{"labels": "{}", "value": 1}]})
    path = tmp_path / "templates_test.yml"
    path.write_text(
        json.dumps({"tests": [{"interval": "15s", "input_series": input_series, "promql_expr_test": tests}]})
    )
    done = subprocess.run(
        [str(PROMTOOL), "test", "rules", str(path)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_templates_measure_the_candidate_with_prometheus_engine(tmp_path: Path) -> None:
    # Both versions serve traffic; only the candidate's numbers may come out.
    input_series = agent_series(CANDIDATE, ok=3, errors=1, flagged=1, cost=0.5, tokens=(30, 10), evals=(4, 3))
    input_series += agent_series(LEGACY, ok=9, errors=0, flagged=0, cost=0.1, tokens=(5, 5), evals=(4, 4))
    metrics = MetricNames()

    def queries(template: Template, quantile: float = 0.95, m: MetricNames = metrics) -> tuple[str, str]:
        q = template_queries(
            template, m, version="triage-agent-v2", namespace="support", window="2m", quantile=quantile
        )
        assert q.samples is not None
        return q.value, q.samples

    # 4 requests per 15 s scrape; increase() over 2m extrapolates 7 scrape intervals to 8.
    requests = 32.0
    expected: dict[str, float | None] = {}
    for template, value, samples in [
        (Template.ERROR_RATE, 0.25, requests),
        (Template.FLAG_RATE, 0.25, requests),
        (Template.COST_PER_REQUEST, 0.125, requests),
        (Template.TOKENS_PER_REQUEST, 10.0, requests),
        (Template.EVAL_ACCURACY, 0.75, 32.0),
    ]:
        value_query, samples_query = queries(template)
        expected[value_query] = value
        expected[samples_query] = samples
    expected[queries(Template.LATENCY_QUANTILE, quantile=0.5)[0]] = 2.0
    expected[queries(Template.COST_PER_REQUEST, m=MetricNames(price_per_token=0.001))[0]] = 0.01
    promtool_expect(tmp_path, input_series, expected)


def test_a_window_written_out_of_order_measures_with_prometheus_engine(tmp_path: Path) -> None:
    input_series = agent_series(CANDIDATE, ok=3, errors=1, flagged=1, cost=0.5, tokens=(30, 10), evals=(4, 3))
    queries = template_queries(
        Template.ERROR_RATE, MetricNames(), version="triage-agent-v2", namespace="support", window="30s1m"
    )
    promtool_expect(tmp_path, input_series, {queries.value: 0.25})


def test_error_free_candidate_has_error_rate_zero_not_no_data(tmp_path: Path) -> None:
    # Labeled counters appear at their first increment: no error series exists yet.
    input_series = [
        s for s in agent_series(CANDIDATE, 4, 0, 0, 0.5, (1, 1), (1, 1)) if "error_type" not in s["series"]
    ]
    error_rate = queries_for(Template.ERROR_RATE)
    flag_rate = queries_for(Template.FLAG_RATE)
    promtool_expect(tmp_path, input_series, {error_rate: 0.0, flag_rate: 0.0})


def test_version_without_traffic_has_no_data(tmp_path: Path) -> None:
    input_series = agent_series(LEGACY, 4, 1, 1, 0.5, (1, 1), (1, 1))
    expected: dict[str, float | None] = {queries_for(t): None for t in Template}
    promtool_expect(tmp_path, input_series, expected)


@pytest.mark.parametrize("version", [INJECTION, 'back\\slash\\"', "new\nline\r\t", "unicode-日本"])
def test_escaped_versions_select_exactly_their_own_series(tmp_path: Path, version: str) -> None:
    # Prometheus' own parser must read each value back unchanged: the version with traffic answers,
    # a version that only extends it (so a broken-out quote would still match) has no data.
    input_series = agent_series({"version": version, "namespace": "support"}, 3, 1, 0, 0.5, (1, 1), (1, 1))
    own = template_queries(
        Template.ERROR_RATE, MetricNames(), version=version, namespace="support", window="2m"
    )
    other = template_queries(
        Template.ERROR_RATE, MetricNames(), version=version + '"', namespace="support", window="2m"
    )
    promtool_expect(tmp_path, input_series, {own.value: 0.25, other.value: None})


def queries_for(template: Template) -> str:
    return template_queries(
        template, MetricNames(), version="triage-agent-v2", namespace="support", window="2m"
    ).value
