"""The Prometheus adapter against a tiny local HTTP server, and gate measurement end to end."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest

from agent_rollout.analysis.prometheus import (
    PrometheusGateway,
    PrometheusUnavailable,
    candidate_requests,
    measure_gates,
    parse_scalar,
    prometheus_client,
)
from agent_rollout.analysis.templates import gate_queries
from agent_rollout.api import AgentRolloutSpec, Verdict, parse_spec

# (status, JSON body, seconds to wait before answering) for a query
Responder = Callable[[str], tuple[int, Any, float]]


def vector(*values: str) -> dict[str, Any]:
    result = [{"metric": {"i": str(i)}, "value": [1700000000.0, v]} for i, v in enumerate(values)]
    return {"status": "success", "data": {"resultType": "vector", "result": result}}


class FakePrometheus:
    def __init__(self) -> None:
        self.respond: Responder = lambda query: (200, vector("1"), 0.0)
        self.queries: list[str] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                url = urlparse(self.path)
                query = parse_qs(url.query).get("query", [""])[0]
                fake.queries.append(query)
                status, body, delay = fake.respond(query) if url.path == "/api/v1/query" else (404, {}, 0.0)
                time.sleep(delay)
                payload = json.dumps(body).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except OSError:
                    pass  # the client gave up first: that is what the timeout tests want

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.02,), daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def prometheus() -> Iterator[FakePrometheus]:
    fake = FakePrometheus()
    yield fake
    fake.close()


def scalar(url: str, query: str = "up", timeout: float = 2.0) -> float | None:
    return asyncio.run(PrometheusGateway(url, timeout=timeout).scalar(query))


# ---------------------------------------------------------------- scalar()


def test_single_series_value_is_parsed(prometheus: FakePrometheus) -> None:
    prometheus.respond = lambda q: (200, vector("0.0125"), 0.0)
    assert scalar(prometheus.url, 'sum(x{a="b"})') == 0.0125
    assert prometheus.queries == ['sum(x{a="b"})']


def test_nan_and_inf_come_back_as_floats_for_gates_to_judge(prometheus: FakePrometheus) -> None:
    prometheus.respond = lambda q: (200, vector("NaN" if q == "a" else "+Inf"), 0.0)
    nan = scalar(prometheus.url, "a")
    assert nan is not None and nan != nan
    assert scalar(prometheus.url, "b") == float("inf")


def test_empty_result_is_none(prometheus: FakePrometheus) -> None:
    prometheus.respond = lambda q: (200, vector(), 0.0)
    assert scalar(prometheus.url) is None


def test_scalar_result_type_is_parsed(prometheus: FakePrometheus) -> None:
    body = {"status": "success", "data": {"resultType": "scalar", "result": [1700000000.0, "42"]}}
    prometheus.respond = lambda q: (200, body, 0.0)
    assert scalar(prometheus.url, "scalar(x)") == 42.0


def test_several_series_is_an_error_not_a_guess(prometheus: FakePrometheus) -> None:
    prometheus.respond = lambda q: (200, vector("1", "2"), 0.0)
    with pytest.raises(PrometheusUnavailable, match="2 series"):
        scalar(prometheus.url)


def test_slow_prometheus_times_out_as_unavailable(prometheus: FakePrometheus) -> None:
    prometheus.respond = lambda q: (200, vector("1"), 3.0)
    started = time.monotonic()
    with pytest.raises(PrometheusUnavailable, match=r"within 0\.3s"):
        scalar(prometheus.url, timeout=0.3)
    assert time.monotonic() - started < 1.5


def test_timed_out_query_frees_its_thread_soon(prometheus: FakePrometheus) -> None:
    # The HTTP timeout, not only asyncio's, must end the request: otherwise threads pile up.
    prometheus.respond = lambda q: (200, vector("1"), 3.0)
    executor = ThreadPoolExecutor(max_workers=1)
    gateway = PrometheusGateway(prometheus.url, timeout=0.3, executor=executor)
    with pytest.raises(PrometheusUnavailable):
        asyncio.run(gateway.scalar("up"))
    started = time.monotonic()
    executor.shutdown(wait=True)
    assert time.monotonic() - started < 1.5


def test_http_500_is_unavailable(prometheus: FakePrometheus) -> None:
    prometheus.respond = lambda q: (500, {"status": "error", "error": "boom"}, 0.0)
    started = time.monotonic()
    with pytest.raises(PrometheusUnavailable, match="500"):
        scalar(prometheus.url)
    assert time.monotonic() - started < 1.0  # no retries with backoff inside one evaluation


def test_bad_query_is_unavailable(prometheus: FakePrometheus) -> None:
    body = {"status": "error", "errorType": "bad_data", "error": "parse error"}
    prometheus.respond = lambda q: (400, body, 0.0)
    with pytest.raises(PrometheusUnavailable, match="parse error"):
        scalar(prometheus.url, "sum(")


def test_non_json_answer_is_unavailable(prometheus: FakePrometheus) -> None:
    prometheus.respond = lambda q: (200, "not the prometheus api", 0.0)
    with pytest.raises(PrometheusUnavailable):
        scalar(prometheus.url)


def test_connection_refused_is_unavailable() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(PrometheusUnavailable, match=str(port)):
        scalar(f"http://127.0.0.1:{port}")


def test_clients_are_cached_per_url() -> None:
    assert prometheus_client("http://a:9090") is prometheus_client("http://a:9090")
    assert prometheus_client("http://a:9090") is not prometheus_client("http://b:9090")


def test_slow_prometheus_does_not_block_the_event_loop(prometheus: FakePrometheus) -> None:
    prometheus.respond = lambda q: (200, vector("1"), 0.5)

    async def scenario() -> int:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        task = asyncio.create_task(ticker())
        await PrometheusGateway(prometheus.url, timeout=2).scalar("up")
        task.cancel()
        return ticks

    assert asyncio.run(scenario()) >= 20


def test_parse_scalar_refuses_range_vectors() -> None:
    with pytest.raises(PrometheusUnavailable, match="range vector"):
        parse_scalar([{"metric": {}, "values": [[1, "1"], [2, "2"]]}])


# ---------------------------------------------------------------- measure_gates / candidate_requests


def make_spec(gates: list[dict[str, Any]], min_samples: int = 100) -> AgentRolloutSpec:
    return parse_spec(
        {
            "legacy": {"deployment": "triage-rules"},
            "candidate": {"deployment": "triage-agent-v2"},
            "traffic": {"gatewayAPI": {"httpRoute": "r", "legacyBackend": "a", "candidateBackend": "b"}},
            "analysis": {"prometheus": {"url": "http://p:9090"}, "minSamples": min_samples, "gates": gates},
            "steps": [{"setWeight": 5}],
        }
    )


class FakeGateway:
    """Answers by exact query text; records concurrency so the test can see queries overlap."""

    def __init__(self, answers: dict[str, float | None], fail: str | None = None) -> None:
        self.answers = answers
        self.fail = fail
        self.asked: list[str] = []
        self.in_flight = 0
        self.max_in_flight = 0

    async def scalar(self, promql: str) -> float | None:
        self.asked.append(promql)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        await asyncio.sleep(0.01)
        self.in_flight -= 1
        if promql == self.fail:
            raise PrometheusUnavailable("connection refused")
        return self.answers.get(promql)


def test_measure_gates_queries_concurrently_and_evaluates_each_gate() -> None:
    spec = make_spec(
        [
            {"name": "errors", "template": "errorRate", "max": 0.01},
            {"name": "latency", "template": "latencyQuantile", "compare": {"maxRatio": 1.2}},
            {"name": "cost", "template": "costPerRequest", "max": 0.03},
        ]
    )
    gates = spec.analysis.gates  # type: ignore[union-attr]
    errors = gate_queries(gates[0], spec, "support", "candidate")
    latency_c = gate_queries(gates[1], spec, "support", "candidate")
    latency_l = gate_queries(gates[1], spec, "support", "legacy")
    gateway = FakeGateway(
        {
            errors.value: 0.002,
            errors.samples or "": 500.0,  # the same request count serves every template
            latency_c.value: 9.0,
            latency_l.value: 6.0,
            latency_l.samples or "": 9000.0,
        }
    )
    results = asyncio.run(measure_gates(spec, "support", gateway))
    assert [(r.name, r.verdict) for r in results] == [
        ("errors", Verdict.PASS),
        ("latency", Verdict.FAIL),
        ("cost", Verdict.INCONCLUSIVE),  # no cost series: no data, not "free"
    ]
    assert results[1].legacy_value == 6.0 and results[1].query == latency_c.value
    # 6 distinct queries: the request count shared by errors, latency and cost is asked once per side
    assert len(gateway.asked) == len(set(gateway.asked)) == 6
    assert gateway.max_in_flight == 6


def test_measure_gates_raises_when_any_query_fails() -> None:
    spec = make_spec([{"name": "errors", "template": "errorRate", "max": 0.01}])
    failing = gate_queries(spec.analysis.gates[0], spec, "support", "candidate").value  # type: ignore[union-attr]
    with pytest.raises(PrometheusUnavailable):
        asyncio.run(measure_gates(spec, "support", FakeGateway({}, fail=failing)))


def test_unrenderable_gate_is_inconclusive_and_others_still_measured() -> None:
    spec = make_spec(
        [
            {"name": "custom", "query": 'x{v="{{nope}}"}', "max": 1},
            {"name": "errors", "template": "errorRate", "max": 0.01},
        ],
        min_samples=0,
    )
    gateway = FakeGateway({})
    results = asyncio.run(measure_gates(spec, "support", gateway))
    assert results[0].verdict is Verdict.INCONCLUSIVE and "unknown variable" in results[0].message
    assert results[1].name == "errors" and len(gateway.asked) == 2


def test_measure_gates_without_analysis_measures_nothing() -> None:
    spec = make_spec([])
    assert asyncio.run(measure_gates(spec.model_copy(update={"analysis": None}), "s", FakeGateway({}))) == ()


def test_candidate_requests_counts_since_step_start() -> None:
    spec = make_spec([])
    gateway = FakeGateway({})
    gateway.answers = {
        'sum(increase(gen_ai_client_operation_duration_seconds_count{version="triage-agent-v2",'
        'namespace="support"}[91s]))': 1000.4
    }
    assert asyncio.run(candidate_requests(spec, "support", 90.2, gateway)) == 1000
    assert asyncio.run(candidate_requests(spec, "other", 90.2, gateway)) is None  # no series: unknown
    assert asyncio.run(candidate_requests(spec, "support", 0.4, gateway)) == 0
