"""Batched reads of the templates: building blocks grouped by namespace and version, combined per
rollout in Python, must give what each rollout's own PromQL gives (checked with Prometheus' engine)."""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path
from typing import Any

import pytest

from agent_rollout.analysis.templates import TemplateError, template_queries, template_read
from agent_rollout.api import MetricNames, Template
from tests.test_templates import CANDIDATE, LEGACY, PROMTOOL, agent_series

BATCHED_CASES = [
    (Template.ERROR_RATE, 0.95, None),
    (Template.LATENCY_QUANTILE, 0.5, None),
    (Template.LATENCY_QUANTILE, 0.95, None),
    (Template.FLAG_RATE, 0.95, None),
    (Template.COST_PER_REQUEST, 0.95, None),
    (Template.COST_PER_REQUEST, 0.95, 0.001),
    (Template.TOKENS_PER_REQUEST, 0.95, None),
    (Template.EVAL_ACCURACY, 0.95, None),
]


def test_batched_reads_equal_the_per_rollout_queries_with_prometheus_engine(tmp_path: Path) -> None:
    # Per-step increments (ok, errors, flagged, cost, tokens, evals) of four versions, one of them
    # error-free and unflagged (no such series at all), one the same name in another namespace.
    quiet = {"version": "quiet", "namespace": "support"}
    elsewhere = {"version": "triage-agent-v2", "namespace": "elsewhere"}
    profiles: list[tuple[dict[str, str], int, int, int, float, tuple[int, int], tuple[int, int]]] = [
        (CANDIDATE, 3, 1, 1, 0.5, (30, 10), (4, 3)),
        (LEGACY, 9, 0, 0, 0.1, (5, 5), (4, 4)),
        (quiet, 4, 0, 0, 0.25, (1, 1), (2, 1)),
        (elsewhere, 1, 1, 2, 1.0, (2, 2), (4, 1)),
    ]
    input_series = []
    for labels, *profile in profiles:
        own = agent_series(labels, *profile)  # type: ignore[arg-type]
        input_series += [s for s in own if labels is not quiet or "error_type" not in s["series"]]

    # increase() over 2m at t=5m extrapolates 7 scrape intervals to 8 scrapes' worth; the buckets
    # (1, 2, 4, 4 per scrape below le 1, 2, 4, +Inf) put p50 at 2 and p95 at 3.8.
    by_kind: dict[str, dict[tuple[str, str], float]] = {k: {} for k in ("req", "err", "flag", "cost", "tok")}
    by_kind.update({"evals": {}, "correct": {}, "p50": {}, "p95": {}})
    for labels, ok, errors, flagged, cost, tokens, evals in profiles:
        key = (labels["namespace"], labels["version"])
        by_kind["req"][key] = 8.0 * (ok + errors)
        if labels is not quiet:
            by_kind["err"][key] = 8.0 * errors
        if flagged:
            by_kind["flag"][key] = 8.0 * flagged
        by_kind["cost"][key] = 8 * cost
        by_kind["tok"][key] = 8.0 * sum(tokens)
        by_kind["evals"][key], by_kind["correct"][key] = 8.0 * evals[0], 8.0 * evals[1]
        by_kind["p50"][key], by_kind["p95"][key] = 2.0, 3.8
    reads = {
        (t, q, p): template_read(t, MetricNames(price_per_token=p), window="2m", quantile=q)
        for t, q, p in BATCHED_CASES
    }
    kind_of = {
        reads[(Template.ERROR_RATE, 0.95, None)].value: "err",
        reads[(Template.ERROR_RATE, 0.95, None)].samples: "req",
        reads[(Template.LATENCY_QUANTILE, 0.5, None)].value: "p50",
        reads[(Template.LATENCY_QUANTILE, 0.95, None)].value: "p95",
        reads[(Template.FLAG_RATE, 0.95, None)].value: "flag",
        reads[(Template.COST_PER_REQUEST, 0.95, None)].value: "cost",
        reads[(Template.TOKENS_PER_REQUEST, 0.95, None)].value: "tok",
        reads[(Template.EVAL_ACCURACY, 0.95, None)].value: "correct",
        reads[(Template.EVAL_ACCURACY, 0.95, None)].samples: "evals",
    }
    vectors = {block: by_kind[kind] for block, kind in kind_of.items()}
    assert {b for r in reads.values() for b in r.blocks} == set(vectors)  # 9 blocks serve 8 cases

    tests: list[dict[str, object]] = []
    for block, vector in vectors.items():  # each block is what Prometheus computes (rounded: exact)
        groups = [
            {"labels": f'{{namespace="{ns}",version="{v}"}}', "value": x} for (ns, v), x in vector.items()
        ]
        tests.append({"expr": f"round({block.promql}, 0.000001)", "eval_time": "5m", "exp_samples": groups})
    compared = 0
    for (template, quantile, price), read in reads.items():
        versions = [(labels["namespace"], labels["version"]) for labels, *_ in profiles]
        for ns, version in [*versions, ("support", "no-traffic")]:
            value, samples = read.measure(vectors, ns, version)
            rendered = template_queries(
                template,
                MetricNames(price_per_token=price),
                version=version,
                namespace=ns,
                window="2m",
                quantile=quantile,
            )
            assert rendered.samples is not None
            for query, python in ((rendered.value, value), (rendered.samples, samples)):
                if python is None:
                    tests.append({"expr": query, "eval_time": "5m", "exp_samples": []})
                else:
                    check = f"abs(({query}) - {python!r}) < bool 1e-9"
                    tests.append(
                        {"expr": check, "eval_time": "5m", "exp_samples": [{"labels": "{}", "value": 1}]}
                    )
                compared += 1
    assert compared == 2 * len(reads) * 5
    path = tmp_path / "batched_test.yml"
    path.write_text(
        json.dumps({"tests": [{"interval": "15s", "input_series": input_series, "promql_expr_test": tests}]})
    )
    assert PROMTOOL is not None, "promtool not found: run `make bootstrap` (installs Debian's prometheus)"
    done = subprocess.run(
        [str(PROMTOOL), "test", "rules", str(path)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_batched_read_semantics_match_the_per_rollout_queries() -> None:
    error_rate = template_read(Template.ERROR_RATE, MetricNames(), window="2m")
    cost = template_read(Template.COST_PER_REQUEST, MetricNames(), window="2m")
    key = ("support", "v")

    def measure(read: Any, value: float | None, requests: float | None) -> tuple[float | None, float | None]:
        vectors = {read.value: {} if value is None else {key: value}, read.samples: {}}
        if requests is not None:
            vectors[read.samples] = {key: requests}
        return read.measure(vectors, *key)  # type: ignore[no-any-return]

    assert measure(error_rate, None, 100.0) == (0.0, 100.0)  # `or vector(0)`: no error series yet
    assert measure(error_rate, 5.0, 100.0) == (0.05, 100.0)
    assert measure(error_rate, None, None) == (None, None)  # no traffic: no data
    assert measure(error_rate, 0.0, 0.0) == (None, 0.0)  # 0/0 is NaN in PromQL: no data
    assert measure(error_rate, 3.0, 0.0) == (None, 0.0)  # x/0 is Inf: no data
    assert measure(cost, None, 100.0) == (None, 100.0)  # no cost series: no data, not free
    latency = template_read(Template.LATENCY_QUANTILE, MetricNames(), window="2m")
    nan, _ = measure(latency, float("nan"), 10.0)  # passed on: gate evaluation reads NaN as no data
    assert nan is not None and math.isnan(nan)


def test_blocks_are_shared_across_spellings_of_a_window_and_differ_by_what_they_read() -> None:
    def read(template: Template = Template.ERROR_RATE, window: str = "2m", **metrics: Any) -> Any:
        return template_read(template, MetricNames(**metrics), window=window)

    assert read(window="2m") == read(window="120s") == read(window="1m60s")
    assert read().samples == read(Template.FLAG_RATE).samples == read(Template.LATENCY_QUANTILE).samples
    assert read().samples != read(window="5m").samples
    assert read(Template.COST_PER_REQUEST) == read(Template.COST_PER_REQUEST, legacyVersion="v1")
    assert read(versionLabel="app").value.promql.startswith("sum by (namespace, app) (")
    quantiles = {
        template_read(Template.LATENCY_QUANTILE, MetricNames(), window="2m", quantile=q).value
        for q in (0.5, 0.95)
    }
    assert len(quantiles) == 2
    assert read(Template.TOKENS_PER_REQUEST).value.promql == (
        "sum by (namespace, version) (increase(gen_ai_client_token_usage_sum"
        '{gen_ai_token_type=~"input|output"}[120s]))'
    )
    bad = MetricNames.model_construct(**{**MetricNames().model_dump(), "namespace_label": "ns} or x"})
    with pytest.raises(TemplateError, match="label name"):
        template_read(Template.ERROR_RATE, bad, window="2m")


def test_a_focused_block_names_each_namespace_and_version_once() -> None:
    """Rollouts of one namespace named it once each in the regex Prometheus matches every series'
    label against: 100 times over for a namespace of 100 rollouts at 10,000."""
    block = template_read(Template.ERROR_RATE, MetricNames(), window="60s").value
    query = block.focused({("team-a", "v1"), ("team-a", "v2"), ("team-b", "v2")})
    assert 'namespace=~"team-a|team-b"' in query and 'version=~"v1|v2"' in query
