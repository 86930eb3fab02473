"""Issue 4: every gate template's PromQL, rendered by agent_rollout.analysis.templates, run against the real
Prometheus fed by simulated agents with known profiles after a known number of requests.

How the numbers are made exact: every counter a template reads is created at 0 by the agent and scraped at
0 before the first request, and the window (10m) is longer than the data. increase() then has no start to
extrapolate to (a counter that starts at 0 has its zero point at its first sample), and querying at the
timestamp of the latest scrape leaves no end to extrapolate to either, so counts are exact. The one series
that appears mid-way, the candidate's error series, is created by a warm-up that stops at its first error
and is scraped at 1; increase()'s zero-point extrapolation then recovers that first error exactly.
Through the operator's own adapter (queries at "now") the end extrapolation is back; it only inflates
counts, by at most one scrape interval's worth of rate, and bounds are asserted accordingly.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import secrets
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from prometheus_api_client import PrometheusConnect

from agent_rollout import api
from agent_rollout.analysis.batch import BatchReader
from agent_rollout.analysis.gates import may_breach_quantile_max
from agent_rollout.analysis.prometheus import (
    PrometheusGateway,
    PrometheusUnavailable,
    QueryRejected,
    api_get,
    check_queries,
    measure_gates,
    parse_scalar,
    parse_vector,
)
from agent_rollout.analysis.templates import (
    SHARE_TOLERANCE,
    Block,
    BlockValues,
    bucket_bounds_block,
    bucket_under,
    quantile_bucket_read,
    template_queries,
    template_read,
)
from agent_rollout.api import MetricNames, Template
from e2e.cluster import ClusterState
from e2e.rollout.scene import wait_until
from e2e.sim.launcher import AgentGroup, start_agents
from e2e.sim.metrics import DURATION_BUCKETS_S
from e2e.sim.profile import FaultProfile

LEGACY, CANDIDATE = "legacy", "candidate"
SENT = 1000  # requests per version
WINDOW = "10m"  # longer than the data
PRICE_PER_TOKEN = 0.00001
SIGMAS = 4.5  # statistical tolerance against the profile (the agents are seeded, so this never flakes)

# Constant latencies: histogram_quantile's linear interpolation inside the one bucket they fall into is
# then an exact expectation (2.5 s lies in (2, 3], so p95 reads 2 + 0.95 x (3 - 2)).
PROFILES = {
    CANDIDATE: FaultProfile(
        error_ratio=0.1,
        latency_distribution="constant",
        latency_median_s=2.5,
        latency_p95_s=2.5,
        latency_sleep=False,
        flagged_ratio=0.05,
        input_tokens=400,
        output_tokens=150,
        cost_per_request_usd=0.004,
        eval_accuracy=0.9,
    ),
    LEGACY: FaultProfile(
        error_ratio=0.0,
        latency_distribution="constant",
        latency_median_s=0.7,
        latency_p95_s=0.7,
        latency_sleep=False,
        flagged_ratio=0.01,
        input_tokens=300,
        output_tokens=100,
        cost_per_request_usd=0.002,
        eval_accuracy=0.97,
    ),
}


def scalar(prometheus: PrometheusConnect, promql: str, at: float | None = None) -> float | None:
    params = {"time": f"{at:.3f}"} if at is not None else None
    return parse_scalar(prometheus.custom_query(promql, params=params))


@dataclass
class Totals:
    """A version's raw counters as Prometheus stored them at `at` (no increase(), no extrapolation)."""

    at: float  # timestamp of the version's latest scrape, which holds every request
    requests: float
    errors: float
    flagged: float
    cost: float
    tokens: float
    evals: float
    correct: float


@dataclass
class KnownTraffic:
    namespace: str
    agents: AgentGroup
    stats: dict[str, dict[str, Any]]  # each agent's own count of what it answered
    totals: dict[str, Totals]
    scraped_since: float  # time.time() by which Prometheus had scraped every counter at 0

    def selector(self, version: str, extra: str = "") -> str:
        return f'{{version="{version}",namespace="{self.namespace}"{extra}}}'

    def spec(self, gates: list[dict[str, Any]], **metrics: Any) -> api.AgentRolloutSpec:
        return api.parse_spec(
            {
                "legacy": {"deployment": LEGACY},
                "candidate": {"deployment": CANDIDATE},
                "traffic": {
                    "gatewayAPI": {"httpRoute": "r", "legacyBackend": LEGACY, "candidateBackend": CANDIDATE}
                },
                "analysis": {"prometheus": {"url": "unused"}, "metrics": metrics, "gates": gates},
                "steps": [{"setWeight": 100}],
            }
        )


def _totals(prometheus: PrometheusConnect, known: KnownTraffic, version: str) -> Totals:
    sel = known.selector
    at = scalar(prometheus, f"max(timestamp(gen_ai_client_operation_duration_seconds_count{sel(version)}))")
    assert at is not None

    def total(metric: str, extra: str = "") -> float:
        return scalar(prometheus, f"sum({metric}{sel(version, extra)})", at) or 0.0

    return Totals(
        at=at,
        requests=total("gen_ai_client_operation_duration_seconds_count"),
        errors=total("gen_ai_client_operation_duration_seconds_count", ',error_type!=""'),
        flagged=total("agent_answers_flagged_total"),
        cost=total("agent_cost_usd_total"),
        tokens=total("gen_ai_client_token_usage_sum"),
        evals=total("agent_eval_total"),
        correct=total("agent_eval_correct_total"),
    )


@pytest.fixture(scope="module")
def known(cluster: ClusterState, prometheus: PrometheusConnect) -> Iterator[KnownTraffic]:
    """SENT requests sent straight to each agent (no route), every one of them scraped."""
    namespace = f"e2e-templates-{secrets.token_hex(3)}"  # only a label value: no Kubernetes objects
    agents = start_agents(
        namespace,
        PROFILES,
        file_sd_dir=cluster.file_sd_dir,
        prometheus_url=cluster.prometheus_url,
        log_dir=cluster.run_dir / "agents",
        seed=4,
    )
    try:
        agents.wait_scraped()
        scraped_since = time.time()
        known = KnownTraffic(namespace, agents, {}, {}, scraped_since)
        failed = known.selector(CANDIDATE, ',error_type!=""')
        errors = f"sum(gen_ai_client_operation_duration_seconds_count{failed})"
        # Warm-up: until the candidate's first error, then let Prometheus see its error series at 1.
        warm_up = 0
        while True:
            warm_up += 1
            if agents[CANDIDATE].invoke(1) != [200]:
                break
            assert warm_up < 200, "a 10% error profile answered 200 times without an error"
        wait_until(
            "the candidate's first error in Prometheus",
            lambda: scalar(prometheus, errors) == 1.0,
            timeout_s=20,
        )

        agents[CANDIDATE].invoke(SENT - warm_up)
        agents[LEGACY].invoke(SENT)

        def all_scraped() -> bool:
            requests = "sum(gen_ai_client_operation_duration_seconds_count{})"
            return all(scalar(prometheus, requests.format(known.selector(v))) == SENT for v in PROFILES)

        wait_until(f"{SENT} requests per version in Prometheus", all_scraped, timeout_s=20)
        known.stats = {v: agents[v].stats() for v in PROFILES}
        known.totals = {v: _totals(prometheus, known, v) for v in PROFILES}
        yield known
    finally:
        agents.stop()


# ---------------------------------------------------------------- expectations


@dataclass(frozen=True)
class Case:
    id: str
    template: Template
    quantile: float = 0.95
    price_per_token: float | None = None

    def metrics(self) -> MetricNames:
        return MetricNames(price_per_token=self.price_per_token)

    def exact(self, t: Totals, profile: FaultProfile) -> tuple[float, float]:
        """(value, samples) from the raw counters: what the template must read."""
        if self.template is Template.ERROR_RATE:
            return t.errors / t.requests, t.requests
        if self.template is Template.LATENCY_QUANTILE:
            lower, upper = _bucket(profile.latency_median_s)
            return lower + self.quantile * (upper - lower), t.requests
        if self.template is Template.FLAG_RATE:
            return t.flagged / t.requests, t.requests
        if self.template is Template.COST_PER_REQUEST and self.price_per_token is None:
            return t.cost / t.requests, t.requests
        if self.template is Template.COST_PER_REQUEST:
            return t.tokens * self.price_per_token / t.requests, t.requests
        if self.template is Template.TOKENS_PER_REQUEST:
            return t.tokens / t.requests, t.requests
        assert self.template is Template.EVAL_ACCURACY
        return t.correct / t.evals, t.evals

    def from_profile(self, p: FaultProfile) -> tuple[float, float]:
        """(expected value, tolerance) from the profile alone: SIGMAS binomial standard deviations."""
        ok = 1.0 - p.error_ratio  # failed calls carry no tokens, cost, flag or evaluation

        def proportion(share: float, n: float) -> tuple[float, float]:
            return share, SIGMAS * math.sqrt(share * (1 - share) / n) + 1e-12

        def per_request(amount: float) -> tuple[float, float]:
            return amount * ok, SIGMAS * amount * math.sqrt(ok * (1 - ok) / SENT) + 1e-12

        tokens = p.input_tokens + p.output_tokens
        if self.template is Template.ERROR_RATE:
            return proportion(p.error_ratio, SENT)
        if self.template is Template.LATENCY_QUANTILE:
            lower, upper = _bucket(p.latency_median_s)
            return (lower + upper) / 2, (upper - lower) / 2  # the true latency's bucket
        if self.template is Template.FLAG_RATE:
            return proportion(p.flagged_ratio * ok, SENT)
        if self.template is Template.COST_PER_REQUEST and self.price_per_token is None:
            return per_request(p.cost_per_request_usd)
        if self.template is Template.COST_PER_REQUEST:
            return per_request(tokens * self.price_per_token)
        if self.template is Template.TOKENS_PER_REQUEST:
            return per_request(tokens)
        return proportion(p.eval_accuracy, SENT * ok)


def _bucket(latency_s: float) -> tuple[float, float]:
    bounds = (0.0, *DURATION_BUCKETS_S)
    return next((lo, hi) for lo, hi in itertools.pairwise(bounds) if lo < latency_s <= hi)


CASES = [
    Case("errorRate", Template.ERROR_RATE),
    Case("latency-p50", Template.LATENCY_QUANTILE, quantile=0.5),
    Case("latency-p95", Template.LATENCY_QUANTILE, quantile=0.95),
    Case("latency-p99", Template.LATENCY_QUANTILE, quantile=0.99),
    Case("flagRate", Template.FLAG_RATE),
    Case("costPerRequest-counter", Template.COST_PER_REQUEST),
    Case("costPerRequest-pricePerToken", Template.COST_PER_REQUEST, price_per_token=PRICE_PER_TOKEN),
    Case("tokensPerRequest", Template.TOKENS_PER_REQUEST),
    Case("evalAccuracy", Template.EVAL_ACCURACY),
]


# ---------------------------------------------------------------- tests


def test_prometheus_holds_exactly_what_the_agents_answered(known: KnownTraffic) -> None:
    for version, profile in PROFILES.items():
        t, stats = known.totals[version], known.stats[version]
        assert stats["requests"] == SENT and t.requests == SENT
        assert t.errors == stats["by_code"].get("500", 0)
        successes = SENT - t.errors
        assert t.evals == successes
        assert t.tokens == successes * (profile.input_tokens + profile.output_tokens)
        assert t.cost == pytest.approx(successes * profile.cost_per_request_usd)
    assert known.totals[CANDIDATE].errors > 0 and known.totals[LEGACY].errors == 0


@pytest.mark.parametrize("version", [CANDIDATE, LEGACY])
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_template_reads_the_known_profile(
    case: Case, version: str, known: KnownTraffic, prometheus: PrometheusConnect
) -> None:
    queries = template_queries(
        case.template,
        case.metrics(),
        version=version,
        namespace=known.namespace,
        window=WINDOW,
        quantile=case.quantile,
    )
    totals, profile = known.totals[version], PROFILES[version]
    assert queries.samples is not None
    value = scalar(prometheus, queries.value, totals.at)
    samples = scalar(prometheus, queries.samples, totals.at)
    want_value, want_samples = case.exact(totals, profile)
    print(f"\n{case.id} {version}: {value} over {samples} samples; raw counters give {want_value}")

    assert value is not None and samples is not None, queries
    assert samples == pytest.approx(want_samples, abs=1e-6)
    if case.template is not Template.EVAL_ACCURACY:
        assert samples == pytest.approx(SENT, abs=1e-6), "every request sent is one sample"
    assert value == pytest.approx(want_value, rel=1e-9, abs=1e-12)
    expected, tolerance = case.from_profile(profile)
    assert abs(value - expected) <= tolerance, f"{value} not within {tolerance:.3g} of {expected}"


def _latest_scrape(prometheus: PrometheusConnect, known: KnownTraffic, version: str) -> float:
    """Timestamp of `version`'s latest scrape that Prometheus has stored."""
    query = f"max(timestamp(gen_ai_client_operation_duration_seconds_count{known.selector(version)}))"
    latest = scalar(prometheus, query)
    assert latest is not None, f"Prometheus holds no scrape of the {version}"
    return latest


def _fresh_scrape(prometheus: PrometheusConnect, known: KnownTraffic, version: str = CANDIDATE) -> float:
    """Wait for the next scrape of `version`; returns its timestamp."""
    query = f"max(timestamp(gen_ai_client_operation_duration_seconds_count{known.selector(version)}))"
    before = scalar(prometheus, query)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        latest = scalar(prometheus, query)
        if latest is not None and latest != before:
            return latest
        time.sleep(0.02)
    raise AssertionError(f"Prometheus stopped scraping the {version}")


@pytest.mark.parametrize("version", [CANDIDATE, LEGACY])
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_batched_read_equals_the_per_rollout_query(
    case: Case, version: str, known: KnownTraffic, cluster: ClusterState, prometheus: PrometheusConnect
) -> None:
    """What the operator computes from the shared building blocks (every namespace and version this
    Prometheus holds, other tests' agents included) is what the per-rollout query, the one recorded
    as evidence, gives."""
    metrics = case.metrics()
    read = template_read(case.template, metrics, window=WINDOW, quantile=case.quantile)
    queries = template_queries(
        case.template,
        metrics,
        version=version,
        namespace=known.namespace,
        window=WINDOW,
        quantile=case.quantile,
    )
    assert queries.samples is not None
    labels = (metrics.namespace_label, metrics.version_label)

    # Evaluated at one instant: the same numbers, up to the order of floating-point sums. The instant is
    # this version's latest scrape already stored, not "now": a scrape stamped before "now" but stored
    # between two of these queries would give them different data (and increase() a different
    # extrapolation), which is a race in the test, not a difference between the two readings.
    at = _latest_scrape(prometheus, known, version)
    vectors = {
        b: parse_vector(prometheus.custom_query(b.promql, params={"time": f"{at:.3f}"}), labels)
        for b in read.blocks
    }
    value, samples = read.measure(vectors, known.namespace, version)
    assert value == pytest.approx(scalar(prometheus, queries.value, at), rel=1e-12, abs=1e-15)
    assert samples == pytest.approx(scalar(prometheus, queries.samples, at), rel=1e-12)

    # Focused on a few pairs (a young step's window, Block.focused), the same block gives the same
    # numbers for them and holds no series of any other namespace or version. Values with regex
    # metacharacters match only themselves: "candidat." must not select the candidate.
    odd = [("no-such-namespace", 'v1.0+"x|y'), (known.namespace, version[:-1] + ".")]
    focused = {
        b: parse_vector(
            prometheus.custom_query(
                b.focused([(known.namespace, version), *odd]), params={"time": f"{at:.3f}"}
            ),
            labels,
        )
        for b in read.blocks
    }
    assert read.measure(focused, known.namespace, version) == (value, samples)
    assert {pair for vector in focused.values() for pair in vector} == {(known.namespace, version)}
    only_odd = [parse_vector(prometheus.custom_query(b.focused(odd)), labels) for b in read.blocks]
    assert only_odd == [{} for _ in read.blocks]

    # Through the operator's gateway, at "now": increase() extrapolates from the version's latest
    # scrape to the query time, so both readings may exceed the exact counts by up to `slack` (see the
    # test below). Each version is scraped at its own moment, hence the wait for this version's scrape.
    gateway = PrometheusGateway(cluster.prometheus_url, timeout=5.0, reader=BatchReader(ttl=0))

    async def read_blocks() -> list[BlockValues]:
        return await asyncio.gather(*(gateway.block(b) for b in read.blocks))

    last_scrape = _fresh_scrape(prometheus, known, version)
    batched = read.measure(
        dict(zip(read.blocks, asyncio.run(read_blocks()), strict=True)), known.namespace, version
    )
    per_rollout = scalar(prometheus, queries.value), scalar(prometheus, queries.samples)
    slack = (time.time() - last_scrape) / (last_scrape - known.scraped_since)
    print(f"\n{case.id} {version}: batched {batched}, per-rollout {per_rollout}, slack {slack:.2%}")
    assert batched[0] == pytest.approx(per_rollout[0], rel=2 * slack + 1e-12), (batched, per_rollout)
    assert batched[1] == pytest.approx(per_rollout[1], rel=slack + 1e-12), (batched, per_rollout)


def test_measure_gates_through_the_prometheus_gateway(
    known: KnownTraffic, cluster: ClusterState, prometheus: PrometheusConnect
) -> None:
    """The operator's async path: render, query concurrently through the thread pool, evaluate."""
    gates = [
        {"name": "error-rate", "template": "errorRate", "max": 0.05},
        {"name": "error-rate-wait", "template": "errorRate", "max": 0.05, "minSamples": 5000},
        {"name": "p50", "template": "latencyQuantile", "quantile": 0.5, "max": 8},
        {"name": "p95-vs-legacy", "template": "latencyQuantile", "compare": {"maxRatio": 1.2}},
        {"name": "p99", "template": "latencyQuantile", "quantile": 0.99, "max": 8},
        {"name": "flagged", "template": "flagRate", "compare": {"twoProportion": True}},
        {"name": "cost", "template": "costPerRequest", "max": 0.004},
        {"name": "tokens", "template": "tokensPerRequest", "max": 1000, "compare": {"maxRatio": 1.5}},
        {"name": "accuracy", "template": "evalAccuracy", "min": 0.95},
    ]
    for gate in gates:
        gate["window"] = WINDOW
    priced = [{"name": "cost-by-tokens", "template": "costPerRequest", "max": 0.004, "window": WINDOW}]
    gateway = PrometheusGateway(cluster.prometheus_url, timeout=5.0, reader=BatchReader(ttl=60))

    async def measure() -> tuple[list[api.GateResult], list[api.GateResult]]:
        by_counter, by_tokens = await asyncio.gather(
            measure_gates(known.spec(gates), known.namespace, gateway),
            measure_gates(known.spec(priced, pricePerToken=PRICE_PER_TOKEN), known.namespace, gateway),
        )
        return list(by_counter), list(by_tokens)

    last_scrape = _fresh_scrape(prometheus, known)  # measure right after one: little to extrapolate
    by_counter, by_tokens = asyncio.run(measure())
    finished = time.time()
    # Both rollouts' 10 template gates read 10 shared blocks, each queried once: requests, errors,
    # p50/p95/p99, flagged, cost, tokens, eval total and correct.
    assert gateway.reader.fetches == 10
    results = {r.name: r for r in by_counter + by_tokens}
    for r in results.values():
        print(f"\n{r.name}: {r.verdict.value} value={r.value} legacy={r.legacy_value} samples={r.samples}")

    verdicts = {name: r.verdict.value for name, r in results.items()}
    assert verdicts == {
        "error-rate": "Fail",  # 0.1 > 0.05
        "error-rate-wait": "Inconclusive",  # the same value, but 1000 < 5000 samples
        "p50": "Pass",
        "p95-vs-legacy": "Fail",  # 2.95 s vs 0.975 s
        "p99": "Pass",
        "flagged": "Fail",  # 4.5% vs 1% over 1000 requests each: p far below 0.05
        "cost": "Pass",  # the cost counter: 0.004 x 0.9 = 0.0036 per request
        "tokens": "Pass",  # 495 vs 400 per request: within 1.5 x legacy
        "accuracy": "Fail",  # 0.9 < 0.95
        "cost-by-tokens": "Fail",  # the same bound on tokens x price: 550 x 0.9 x 1e-5 = 0.00495
    }
    waiting = results["error-rate-wait"]
    assert waiting.message == f"waiting for samples {waiting.samples}/5000"
    assert waiting.value == pytest.approx(results["error-rate"].value)  # measured, recorded, not judged

    # Queried at "now", increase() extrapolates from the latest scrape to the query time, at most
    # `finished - last_scrape`, at the rate of a sampled interval of at least `last_scrape - scraped_since`:
    # counts may only grow, and by that share at most.
    slack = (finished - last_scrape) / (last_scrape - known.scraped_since)
    print(f"\ncounts may read up to {slack:.1%} high ({finished - last_scrape:.2f}s past the latest scrape)")
    cases = {
        "error-rate": CASES[0],
        "p50": CASES[1],
        "p95-vs-legacy": CASES[2],
        "p99": CASES[3],
        "flagged": CASES[4],
        "cost": CASES[5],
        "cost-by-tokens": CASES[6],
        "tokens": CASES[7],
        "accuracy": CASES[8],
    }
    for name, case in cases.items():
        r = results[name]
        value, samples = case.exact(known.totals[CANDIDATE], PROFILES[CANDIDATE])
        assert r.samples is not None and r.value is not None, r
        assert round(samples) <= r.samples <= samples * (1 + slack) + 1, (name, r.samples, samples, slack)
        # Ratios of counters of one scrape target: the extrapolation cancels but for the error series,
        # which started later than the others.
        assert r.value == pytest.approx(value, rel=2 * slack), (name, r.value, value)
        assert r.query.startswith(("sum(", "(sum(", "histogram_quantile(")) and known.namespace in r.query
        if r.legacy_value is not None:
            legacy_value, _ = case.exact(known.totals[LEGACY], PROFILES[LEGACY])
            assert r.legacy_value == pytest.approx(legacy_value, rel=2 * slack), (name, r.legacy_value)
    for name in ("p95-vs-legacy", "flagged", "tokens"):
        assert results[name].legacy_value is not None, name


# ---------------------------------------------------------------- queries the real Prometheus rejects

CHECK_NAMESPACE = "e2e-check"  # only a label value: nothing is created


def _spec(gates: list[dict[str, Any]], steps: list[dict[str, Any]] | None = None) -> api.AgentRolloutSpec:
    return api.parse_spec(
        {
            "legacy": {"deployment": LEGACY},
            "candidate": {"deployment": CANDIDATE},
            "traffic": {
                "gatewayAPI": {"httpRoute": "r", "legacyBackend": LEGACY, "candidateBackend": CANDIDATE}
            },
            "analysis": {"prometheus": {"url": "http://prometheus.invalid:9090"}, "gates": gates},
            "steps": steps or [{"setWeight": 100}],
        }
    )


def _unreachable_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


CUSTOM = 'sum(rate(gen_ai_client_operation_duration_seconds_count{version="{{version}}"}[{{window}}]))'


def test_prometheus_accepts_every_template_and_a_valid_custom_query(cluster: ClusterState) -> None:
    gates: list[dict[str, Any]] = [
        {"name": t.value.lower(), "template": t.value, "compare": {"maxRatio": 1.5}} for t in Template
    ]
    gates.append({"name": "custom", "query": CUSTOM, "samplesQuery": CUSTOM, "max": 5})
    spec = _spec(gates, steps=[{"setWeight": 5}, {"pause": {"minRequests": 100}}])
    gateway = PrometheusGateway(cluster.prometheus_url, timeout=5.0)
    assert asyncio.run(check_queries(spec, CHECK_NAMESPACE, gateway)) == []
    # This Prometheus has format_query, so checking parses the queries without running them.
    assert api_get(cluster.prometheus_url, "/api/v1/format_query", "sum( up )", 5.0) == "sum(up)"


def test_prometheus_rejects_a_missing_bracket_naming_the_field(cluster: ClusterState) -> None:
    spec = _spec(
        [
            {"name": "error-rate", "template": "errorRate", "max": 0.05},
            {"name": "custom", "query": CUSTOM, "max": 5},
            {"name": "broken", "query": CUSTOM.removesuffix(")"), "max": 5},
            {"name": "unterminated", "query": CUSTOM.replace("{{version}}", "{{version}"), "max": 5},
        ]
    )
    gateway = PrometheusGateway(cluster.prometheus_url, timeout=5.0)

    problems = asyncio.run(check_queries(spec, CHECK_NAMESPACE, gateway))

    assert [p.field for p in problems] == ["spec.analysis.gates[2].query", "spec.analysis.gates[3].query"]
    broken, unterminated = problems
    print(f"\n{broken.field}: {broken.message}\n{unterminated.field}: {unterminated.message}")
    # Prometheus' own parser's words, as the real Prometheus says them.
    assert broken.message.startswith("gate 'broken': Prometheus rejected the query: ")
    assert "parse error" in broken.message and "parenthes" in broken.message
    assert unterminated.message.startswith("gate 'unterminated': {{ at character")

    # The same query, measured: rejected (not "unavailable"), naming the gate and its field.
    with pytest.raises(QueryRejected) as rejected:
        asyncio.run(measure_gates(spec.model_copy(update={"analysis": _only_gate(spec, 2)}), "x", gateway))
    assert (rejected.value.gate, rejected.value.field) == ("broken", "spec.analysis.gates[0].query")
    assert "parse error" in rejected.value.reason


def _only_gate(spec: api.AgentRolloutSpec, index: int) -> api.Analysis:
    assert spec.analysis is not None
    return spec.analysis.model_copy(update={"gates": [spec.analysis.gates[index]]})


def test_an_unreachable_prometheus_is_unavailable_not_a_rejection() -> None:
    spec = _spec([{"name": "broken", "query": CUSTOM.removesuffix(")"), "max": 5}])
    gateway = PrometheusGateway(_unreachable_url(), timeout=2.0)
    with pytest.raises(PrometheusUnavailable):
        asyncio.run(check_queries(spec, CHECK_NAMESPACE, gateway))
    with pytest.raises(PrometheusUnavailable):
        asyncio.run(measure_gates(spec, CHECK_NAMESPACE, gateway))


def test_a_latency_max_read_from_one_bucket_on_the_real_prometheus(
    known: KnownTraffic, prometheus: PrometheusConnect
) -> None:
    """The fast check's stand-in for a latency quantile (sentinel._bucket_read), on this Prometheus'
    own spelling of `le` (2.x keeps the exporter's "2", 3.x stores "2.0"): the bound it picks under a
    max of 2.4 s is the 2 s bucket, and Prometheus answers a shortfall at it (quantile x total - the
    bucket's count) exactly for the version whose histogram_quantile is above the max, and nothing for
    the other. A bound no series has (a version without the bucket) leaves every version a suspect
    with its whole quantile x total. Candidate: every request 2.5 s (p95 2.95 s); legacy 0.7 s."""
    metrics = MetricNames()
    labels = (metrics.namespace_label, metrics.version_label)
    bounds = parse_vector(prometheus.custom_query(bucket_bounds_block(metrics).promql), ("le", "le"))
    limit = 2.4
    spellings = bucket_under(bounds, limit)
    assert spellings is not None and {float(s) for s in spellings} == {2.0}, bounds
    shortfall_read = quantile_bucket_read(metrics, window=WINDOW, spellings=spellings, quantile=0.95)
    missing_read = quantile_bucket_read(metrics, window=WINDOW, spellings=("2.25",), quantile=0.95)
    exact_read = template_read(Template.LATENCY_QUANTILE, metrics, window=WINDOW, quantile=0.95)
    gate = api.Gate.model_validate(
        {"name": "p95", "template": "latencyQuantile", "max": limit, "minSamples": 10}
    )
    analysis = known.spec([]).analysis
    assert analysis is not None
    for version, breached in ((CANDIDATE, True), (LEGACY, False)):
        at = _latest_scrape(prometheus, known, version)  # one instant for every read

        def read(blocks: tuple[Block, ...], at: float = at) -> dict[Block, BlockValues]:
            return {
                b: parse_vector(prometheus.custom_query(b.promql, params={"time": f"{at:.3f}"}), labels)
                for b in blocks
            }

        shortfall, samples = shortfall_read.measure(read(shortfall_read.blocks), known.namespace, version)
        quantile, exact_samples = exact_read.measure(read(exact_read.blocks), known.namespace, version)
        assert quantile is not None and (quantile > limit) is breached, (version, quantile)
        assert samples == exact_samples and samples
        # The candidate has no request at or under 2 s: it lacks the whole quantile x total.
        whole = (0.95 + SHARE_TOLERANCE) * _histogram_count(prometheus, known, version, at)
        assert shortfall == (pytest.approx(whole) if breached else None), (version, shortfall)
        assert may_breach_quantile_max(gate, analysis, shortfall, samples) is breached
        missing, _ = missing_read.measure(read(missing_read.blocks), known.namespace, version)
        assert missing == pytest.approx(whole), (version, missing)
        assert may_breach_quantile_max(gate, analysis, missing, samples)


def _histogram_count(prometheus: PrometheusConnect, known: KnownTraffic, version: str, at: float) -> float:
    """The version's requests over the window as its histogram counts them (the +Inf bucket)."""
    selector = known.selector(version, ',le="+Inf"')
    promql = f"sum(increase(gen_ai_client_operation_duration_seconds_bucket{selector}[{WINDOW}]))"
    value = scalar(prometheus, promql, at)
    assert value is not None, promql
    return value
