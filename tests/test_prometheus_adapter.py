"""The Prometheus adapter against a tiny local HTTP server, and gate measurement end to end."""

from __future__ import annotations

import asyncio
import functools
import gc
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from agent_rollout.analysis import prometheus as prometheus_module
from agent_rollout.analysis.prometheus import (
    PrometheusGateway,
    PrometheusUnavailable,
    QueryRejected,
    candidate_requests,
    check_queries,
    measure_gates,
    parse_scalar,
    parse_vector,
    prometheus_session,
)
from agent_rollout.analysis.templates import (
    Block,
    BlockValues,
    Pair,
    candidate_requests_query,
    gate_queries,
    template_read,
)
from agent_rollout.api import AgentRolloutSpec, MetricNames, Step, Template, Verdict, parse_spec
from agent_rollout.domain import SpecProblem
from tests.prometheus_http import FakePrometheusServer, loop_ticks_during, series, vector


def scalar(url: str, query: str = "up", timeout: float = 2.0) -> float | None:
    return asyncio.run(PrometheusGateway(url, timeout=timeout).scalar(query))


# ---------------------------------------------------------------- scalar()


def test_single_series_value_is_parsed(prometheus: FakePrometheusServer) -> None:
    prometheus.respond = lambda q: (200, vector("0.0125"), 0.0)
    assert scalar(prometheus.url, 'sum(x{a="b"})') == 0.0125
    assert prometheus.queries == ['sum(x{a="b"})']


def test_nan_and_inf_come_back_as_floats_for_gates_to_judge(prometheus: FakePrometheusServer) -> None:
    prometheus.respond = lambda q: (200, vector("NaN" if q == "a" else "+Inf"), 0.0)
    nan = scalar(prometheus.url, "a")
    assert nan is not None and nan != nan
    assert scalar(prometheus.url, "b") == float("inf")


def test_empty_result_is_none(prometheus: FakePrometheusServer) -> None:
    prometheus.respond = lambda q: (200, vector(), 0.0)
    assert scalar(prometheus.url) is None


def test_scalar_result_type_is_parsed(prometheus: FakePrometheusServer) -> None:
    body = {"status": "success", "data": {"resultType": "scalar", "result": [1700000000.0, "42"]}}
    prometheus.respond = lambda q: (200, body, 0.0)
    assert scalar(prometheus.url, "scalar(x)") == 42.0


def test_several_series_is_an_error_not_a_guess(prometheus: FakePrometheusServer) -> None:
    prometheus.respond = lambda q: (200, vector("1", "2"), 0.0)
    with pytest.raises(PrometheusUnavailable, match="2 series"):
        scalar(prometheus.url)


def test_slow_prometheus_times_out_as_unavailable(prometheus: FakePrometheusServer) -> None:
    # A wide margin between the answer (10 s) and the bound (5 s): the test tells a timeout from a
    # wait for the answer, even on a machine busy enough to overshoot 0.3 s many times over.
    prometheus.respond = lambda q: (200, vector("1"), 10.0)
    started = time.monotonic()
    with pytest.raises(PrometheusUnavailable, match=r"within 0\.3s"):
        scalar(prometheus.url, timeout=0.3)
    assert time.monotonic() - started < 5.0


def test_timed_out_query_frees_its_thread_soon(prometheus: FakePrometheusServer) -> None:
    # The HTTP timeout, not only asyncio's, must end the request: otherwise threads pile up.
    prometheus.respond = lambda q: (200, vector("1"), 10.0)
    executor = ThreadPoolExecutor(max_workers=1)
    gateway = PrometheusGateway(prometheus.url, timeout=0.3, executor=executor)
    with pytest.raises(PrometheusUnavailable):
        asyncio.run(gateway.scalar("up"))
    started = time.monotonic()
    executor.shutdown(wait=True)
    assert time.monotonic() - started < 5.0


def test_http_500_is_unavailable(prometheus: FakePrometheusServer) -> None:
    prometheus.respond = lambda q: (500, {"status": "error", "error": "boom"}, 0.0)
    started = time.monotonic()
    with pytest.raises(PrometheusUnavailable, match="500"):
        scalar(prometheus.url)
    assert time.monotonic() - started < 1.0  # no retries with backoff inside one evaluation


PARSE_ERROR = {
    "status": "error",
    "errorType": "bad_data",
    "error": 'invalid parameter "query": 1:5: parse error: unclosed left parenthesis',
}


def test_query_prometheus_cannot_parse_is_rejected_not_unavailable(prometheus: FakePrometheusServer) -> None:
    prometheus.respond = lambda q: (400, PARSE_ERROR, 0.0)
    with pytest.raises(QueryRejected) as rejected:
        scalar(prometheus.url, "sum(")
    assert not isinstance(rejected.value, PrometheusUnavailable)
    assert rejected.value.reason == PARSE_ERROR["error"] and rejected.value.query == "sum("
    assert str(rejected.value) == f"Prometheus rejected the query: {PARSE_ERROR['error']}"


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (422, {"status": "error", "errorType": "execution", "error": "found duplicate series"}),
        (400, {"error": "a proxy in between"}),  # not Prometheus' own verdict on the query
        (400, "<html>bad request</html>"),
        (503, {"status": "error", "errorType": "unavailable", "error": "shutting down"}),
        (404, {}),
    ],
)
def test_only_bad_data_is_a_rejection(prometheus: FakePrometheusServer, status: int, body: Any) -> None:
    prometheus.respond = lambda q: (status, body, 0.0)
    with pytest.raises(PrometheusUnavailable, match=str(status)):
        scalar(prometheus.url)


def test_non_json_answer_is_unavailable(prometheus: FakePrometheusServer) -> None:
    prometheus.respond = lambda q: (200, "not the prometheus api", 0.0)
    with pytest.raises(PrometheusUnavailable):
        scalar(prometheus.url)


def test_connection_refused_is_unavailable() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(PrometheusUnavailable, match=str(port)):
        scalar(f"http://127.0.0.1:{port}")


def test_sessions_are_cached_per_url() -> None:
    assert prometheus_session("http://a:9090") is prometheus_session("http://a:9090")
    assert prometheus_session("http://a:9090") is not prometheus_session("http://b:9090")


def test_trailing_slash_and_path_prefix_of_the_url_are_kept(prometheus: FakePrometheusServer) -> None:
    assert scalar(prometheus.url + "/", "up") == 1.0
    assert prometheus.paths == ["/api/v1/query"]


def test_slow_prometheus_does_not_block_the_event_loop(prometheus: FakePrometheusServer) -> None:
    prometheus.respond = lambda q: (200, vector("1"), 0.5)

    assert loop_ticks_during(lambda: PrometheusGateway(prometheus.url, timeout=2).scalar("up")) >= 20


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


def test_parse_vector_keys_series_by_namespace_and_version() -> None:
    result = [
        {"metric": {"namespace": "a", "version": "v1"}, "value": [1, "2"]},
        {"metric": {"namespace": "a"}, "value": [1, "NaN"]},  # an absent label is "", as in a matcher
    ]
    values = parse_vector(result, ("namespace", "version"))
    assert values[("a", "v1")] == 2.0 and values[("a", "")] != values[("a", "")]
    with pytest.raises(PrometheusUnavailable, match="instant vector"):
        parse_vector([1700000000.0, "42"], ("namespace", "version"))  # a scalar
    with pytest.raises(PrometheusUnavailable, match="not an instant vector"):
        parse_vector([{"metric": {}, "values": [[1, "1"]]}], ("namespace", "version"))  # a range vector
    with pytest.raises(PrometheusUnavailable, match="not an instant vector"):
        parse_vector([{"metric": {}, "value": [1, "many"]}], ("namespace", "version"))


def test_answers_share_their_keys_so_a_new_answer_keeps_no_new_tuple() -> None:
    """Every fleet answer names the same (namespace, version) pairs: the second answer's keys are the
    first one's tuples (made once; each new one was a young object for the collector to walk), and
    a full table is emptied rather than grown."""

    def answer(n: int) -> list[dict[str, Any]]:
        return [{"metric": {"namespace": "ns", "version": f"v{i}"}, "value": [1, str(i)]} for i in range(n)]

    first = parse_vector(answer(50), ("namespace", "version"))
    second = parse_vector(answer(50), ("namespace", "version"))
    assert second == first
    kept = {id(key) for key in first}
    assert all(id(key) in kept for key in second)
    prometheus_module.PAIRS_KEPT, before = 10, prometheus_module.PAIRS_KEPT
    try:
        parse_vector(answer(50), ("namespace", "version"))  # the table is full: emptied, then filled
        assert len(prometheus_module._PAIRS) == 50
    finally:
        prometheus_module.PAIRS_KEPT = before


class FakeGateway:
    """Answers scalars by exact query text and blocks by their PromQL; records concurrency."""

    def __init__(self, answers: dict[str, Any], fail: str | None = None) -> None:
        self.answers = answers
        self.fail = fail
        self.reject: set[str] = set()
        self.asked: list[str] = []
        self.in_flight = 0
        self.max_in_flight = 0

    async def _answer(self, promql: str) -> Any:
        self.asked.append(promql)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        await asyncio.sleep(0.01)
        self.in_flight -= 1
        if promql == self.fail:
            raise PrometheusUnavailable("connection refused")
        if promql in self.reject:
            raise QueryRejected("parse error", query=promql)
        return self.answers.get(promql)

    async def scalar(self, promql: str) -> float | None:
        answer: float | None = await self._answer(promql)
        return answer

    async def block(
        self,
        block: Block,
        max_age: float | None = None,
        keys: frozenset[Pair] | None = None,
        stale_age: float | None = None,
        after: float | None = None,
        urgent: bool = False,
    ) -> BlockValues:
        return await self._answer(block.promql) or {}


def blocks_of(template: Template, **kwargs: Any) -> tuple[str, ...]:
    return tuple(b.promql for b in template_read(template, MetricNames(), window="2m", **kwargs).blocks)


def test_measure_gates_reads_blocks_and_queries_concurrently_and_evaluates_each_gate() -> None:
    spec = make_spec(
        [
            {"name": "errors", "template": "errorRate", "max": 0.01},
            {"name": "latency", "template": "latencyQuantile", "compare": {"maxRatio": 1.2}},
            {"name": "cost", "template": "costPerRequest", "max": 0.03},
            {"name": "custom", "query": 'x{v="{{version}}"}', "compare": {"maxRatio": 1.2}, "max": 9},
        ],
        min_samples=0,
    )
    gates = spec.analysis.gates  # type: ignore[union-attr]
    errors, requests = blocks_of(Template.ERROR_RATE)  # (value, samples)
    latency, _ = blocks_of(Template.LATENCY_QUANTILE)
    candidate, legacy = ("support", "triage-agent-v2"), ("support", "triage-rules")
    custom_c = gate_queries(gates[3], spec, "support", "candidate").value
    custom_l = gate_queries(gates[3], spec, "support", "legacy").value
    gateway = FakeGateway(
        {
            requests: {candidate: 500.0, legacy: 9000.0, ("other", "triage-agent-v2"): 1.0},
            errors: {candidate: 1.0},
            latency: {candidate: 9.0, legacy: 6.0},
            custom_c: 1.0,
            custom_l: 1.0,
        }
    )
    results = asyncio.run(measure_gates(spec, "support", gateway))
    assert [(r.name, r.verdict, r.value) for r in results] == [
        ("errors", Verdict.PASS, 0.002),
        ("latency", Verdict.FAIL, 9.0),
        ("cost", Verdict.INCONCLUSIVE, None),  # no cost series: no data, not "free"
        ("custom", Verdict.PASS, 1.0),
    ]
    assert results[1].legacy_value == 6.0 and results[1].samples == 500
    # Evidence is the per-rollout query a human can paste into Prometheus, as before batching.
    assert [r.query for r in results] == [gate_queries(g, spec, "support", "candidate").value for g in gates]
    # One read per building block (the request count serves every template) and per custom query.
    assert sorted(gateway.asked) == sorted(
        [requests, errors, latency, blocks_of(Template.COST_PER_REQUEST)[0], custom_c, custom_l]
    )
    assert gateway.max_in_flight == 6


def test_measure_gates_raises_when_any_query_fails() -> None:
    spec = make_spec([{"name": "errors", "template": "errorRate", "max": 0.01}])
    with pytest.raises(PrometheusUnavailable):
        asyncio.run(measure_gates(spec, "support", FakeGateway({}, fail=blocks_of(Template.ERROR_RATE)[0])))


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
    assert results[1].name == "errors" and sorted(gateway.asked) == sorted(blocks_of(Template.ERROR_RATE))


def test_measure_gates_without_analysis_measures_nothing() -> None:
    spec = make_spec([])
    assert asyncio.run(measure_gates(spec.model_copy(update={"analysis": None}), "s", FakeGateway({}))) == ()


def test_candidate_requests_counts_since_step_start() -> None:
    spec = make_spec([])
    gateway = FakeGateway({})
    gateway.answers = {
        'sum(increase(gen_ai_client_operation_duration_seconds_count{version="triage-agent-v2",'
        'namespace="support"}[90s]))': 1000.4
    }
    # Rounded down: a [91s] window would count requests served before the step began.
    assert asyncio.run(candidate_requests(spec, "support", 90.9, gateway)) == 1000
    assert asyncio.run(candidate_requests(spec, "other", 90.9, gateway)) is None  # no series: unknown
    assert asyncio.run(candidate_requests(spec, "support", 0.4, gateway)) == 0


# ---------------------------------------------------------------- rejected queries


def test_rejected_custom_query_names_its_gate_and_field(prometheus: FakePrometheusServer) -> None:
    spec = make_spec(
        [
            {"name": "errors", "template": "errorRate", "max": 0.01},
            {"name": "fine", "query": 'sum(x{v="{{version}}"})', "max": 1},
            {"name": "broken", "query": 'sum(x{v="{{version}}"}', "max": 1},  # the bracket is missing
        ],
        min_samples=0,
    )
    broken = gate_queries(spec.analysis.gates[2], spec, "support", "candidate").value  # type: ignore[union-attr]

    def respond(query: str) -> tuple[int, Any, float]:
        return (400, PARSE_ERROR, 0.0) if query == broken else (200, vector(), 0.0)

    prometheus.respond = respond
    with pytest.raises(QueryRejected) as rejected:
        asyncio.run(measure_gates(spec, "support", PrometheusGateway(prometheus.url, timeout=2)))
    assert (rejected.value.gate, rejected.value.field) == ("broken", "spec.analysis.gates[2].query")
    assert rejected.value.reason == PARSE_ERROR["error"]
    assert str(rejected.value) == f"gate 'broken': Prometheus rejected the query: {PARSE_ERROR['error']}"


def test_rejected_samples_query_and_template_block_name_their_fields() -> None:
    spec = make_spec(
        [
            {"name": "errors", "template": "errorRate", "max": 0.01},
            {"name": "custom", "query": "v", "samplesQuery": "n", "max": 1},
        ]
    )
    gateway = FakeGateway({})
    gateway.reject = {"n"}
    with pytest.raises(QueryRejected) as rejected:
        asyncio.run(measure_gates(spec, "support", gateway))
    assert (rejected.value.gate, rejected.value.field) == ("custom", "spec.analysis.gates[1].samplesQuery")
    gateway.reject = {blocks_of(Template.ERROR_RATE)[0]}
    with pytest.raises(QueryRejected) as rejected:
        asyncio.run(measure_gates(spec, "support", gateway))
    assert (rejected.value.gate, rejected.value.field) == ("errors", "spec.analysis.gates[0].template")


def test_a_rejected_query_outranks_an_unavailable_one() -> None:
    # Both in one evaluation: the rejection is the one that will not pass by waiting.
    spec = make_spec(
        [{"name": "a", "query": "a", "max": 1}, {"name": "b", "query": "b", "max": 1}], min_samples=0
    )
    gateway = FakeGateway({}, fail="a")
    gateway.reject = {"b"}
    with pytest.raises(QueryRejected, match="gate 'b'"):
        asyncio.run(measure_gates(spec, "support", gateway))


def test_candidate_requests_raises_rejected_too() -> None:
    spec = make_spec([])
    gateway = FakeGateway({})
    gateway.reject = {candidate_requests_query(spec, "support", 90)}
    with pytest.raises(QueryRejected):
        asyncio.run(candidate_requests(spec, "support", 90.5, gateway))


# ---------------------------------------------------------------- check(), check_queries()


def check(url: str, promql: str) -> str | None:
    return asyncio.run(PrometheusGateway(url, timeout=2).check(promql))


def test_check_parses_without_running_the_query(prometheus: FakePrometheusServer) -> None:
    prometheus.format_query = lambda q: (200, {"status": "success", "data": q}, 0.0)
    assert check(prometheus.url, "sum(up)") is None
    prometheus.format_query = lambda q: (400, PARSE_ERROR, 0.0)
    assert check(prometheus.url, "sum(up") == PARSE_ERROR["error"]
    assert prometheus.paths == ["/api/v1/format_query"] * 2  # never /api/v1/query


def test_check_runs_the_query_once_where_format_query_is_missing(prometheus: FakePrometheusServer) -> None:
    # A Prometheus before 2.38 answers 404 to format_query.
    prometheus.respond = lambda q: (400, PARSE_ERROR, 0.0) if q == "sum(up" else (200, vector("1"), 0.0)
    assert check(prometheus.url, "sum(up)") is None
    assert check(prometheus.url, "sum(up") == PARSE_ERROR["error"]
    assert prometheus.paths == ["/api/v1/format_query", "/api/v1/query"] * 2


def test_check_raises_unavailable_when_prometheus_cannot_tell(prometheus: FakePrometheusServer) -> None:
    prometheus.format_query = lambda q: (503, {"status": "error", "errorType": "unavailable"}, 0.0)
    with pytest.raises(PrometheusUnavailable, match="503"):
        check(prometheus.url, "sum(up)")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(PrometheusUnavailable, match=str(port)):
        check(f"http://127.0.0.1:{port}", "sum(up)")


class FakeChecker:
    def __init__(self, rejects: dict[str, str] | None = None, fail: bool = False) -> None:
        self.rejects = rejects or {}
        self.fail = fail
        self.asked: list[str] = []

    async def check(self, promql: str) -> str | None:
        self.asked.append(promql)
        if self.fail:
            raise PrometheusUnavailable("connection refused")
        return next((why for part, why in self.rejects.items() if part in promql), None)


def test_check_queries_names_each_rejected_field_in_spec_order() -> None:
    spec = make_spec(
        [
            {"name": "errors", "template": "errorRate", "max": 0.01},
            {"name": "fine", "query": 'sum(ok{v="{{version}}"})', "max": 1},
            {
                "name": "broken",
                "query": 'sum(bad{v="{{version}}"}',
                "samplesQuery": "sum(badcount",
                "compare": {"maxRatio": 1.2},
                "direction": "higherIsWorse",
            },
        ]
    )
    checker = FakeChecker({"bad{": "unclosed left parenthesis", "badcount": "unclosed left parenthesis"})
    problems = asyncio.run(check_queries(spec, "support", checker))
    assert problems == [
        SpecProblem(
            "spec.analysis.gates[2].query",
            "gate 'broken': Prometheus rejected the query: unclosed left parenthesis",
        ),
        SpecProblem(
            "spec.analysis.gates[2].samplesQuery",
            "gate 'broken': Prometheus rejected the query: unclosed left parenthesis",
        ),
    ]
    gates = spec.analysis.gates  # type: ignore[union-attr]
    # Every query the rollout will send, once each: blocks, evidence, both sides of a comparison.
    expected = {
        *blocks_of(Template.ERROR_RATE),
        gate_queries(gates[0], spec, "support", "candidate").value,
        gate_queries(gates[1], spec, "support", "candidate").value,
        gate_queries(gates[2], spec, "support", "candidate").value,
        gate_queries(gates[2], spec, "support", "legacy").value,
        "sum(badcount",
    }
    assert sorted(checker.asked) == sorted(expected)


def test_check_queries_accepts_a_valid_spec_and_checks_the_request_count() -> None:
    spec = make_spec([{"name": "errors", "template": "errorRate", "max": 0.01}])
    spec = spec.model_copy(
        update={"steps": [*spec.steps, Step.model_validate({"pause": {"minRequests": 1000}})]}
    )
    checker = FakeChecker()
    assert asyncio.run(check_queries(spec, "support", checker)) == []
    assert candidate_requests_query(spec, "support", 60) in checker.asked
    checker = FakeChecker({"increase(gen_ai_client_operation_duration_seconds_count{version=": "bad"})
    problems = asyncio.run(check_queries(spec, "support", checker))
    assert [p.field for p in problems] == [
        "spec.analysis.gates[0].template",
        "spec.steps[1].pause.minRequests",
    ]


def test_check_queries_reports_unrenderable_queries_and_raises_when_prometheus_is_down() -> None:
    spec = make_spec([{"name": "custom", "query": "x{{nope}}", "max": 1}])
    problems = asyncio.run(check_queries(spec, "support", FakeChecker()))
    assert [p.field for p in problems] == ["spec.analysis.gates[0].query"]
    assert "unknown variable {{nope}}" in problems[0].message
    with pytest.raises(PrometheusUnavailable):
        asyncio.run(
            check_queries(
                make_spec([{"name": "e", "template": "errorRate", "max": 1}]), "s", FakeChecker(fail=True)
            )
        )
    assert asyncio.run(check_queries(spec.model_copy(update={"analysis": None}), "s", FakeChecker())) == []


def test_check_sends_a_query_whose_shape_parsed_before_only_once(prometheus: FakePrometheusServer) -> None:
    # 10,000 rollouts from one template send queries that differ only in a matcher's value.
    parsed = {"status": "success", "data": "..."}
    prometheus.format_query = lambda q: (
        (400, PARSE_ERROR, 0.0) if "[bad" in q or 'v=""' in q else (200, parsed, 0.0)
    )
    gateway = PrometheusGateway(prometheus.url, timeout=2)

    def checked(promql: str) -> str | None:
        return asyncio.run(gateway.check(promql))

    for namespace in ("team-a", "team-b", "team-c"):
        assert checked(f'sum(rate(x{{namespace="{namespace}",version="agent-2"}}[1m]))') is None
    assert len(prometheus.paths) == 1
    # What may parse differently is sent: a regex value, an empty value, a rejected query (every time).
    assert checked('sum(x{v=~"[bad"})') == PARSE_ERROR["error"]
    assert checked('sum(x{v=~"[bad"})') == PARSE_ERROR["error"]
    assert checked('sum(x{v=""})') == PARSE_ERROR["error"]
    assert checked('sum(x{v="a"})') is None
    assert len(prometheus.paths) == 5


def test_large_answers_are_decoded_one_at_a_time_small_ones_side_by_side(
    prometheus: FakePrometheusServer,
) -> None:
    """A fleet's building block (20,000 series, 2-2.5 MB) becomes about 16 MB of Python objects while
    it is parsed; decoding holds the GIL, so parsing several side by side gains nothing and only leaves
    the process as large as all of them at once. Small answers (a rollout's own queries) are not held
    up behind that lock."""
    many = [({"namespace": "team", "version": f"agent-{i}"}, 1.0) for i in range(8000)]  # about 600 KB
    prometheus.respond = lambda query: (200, series(*(many if query == "large" else many[:2])), 0.0)
    gateway = PrometheusGateway(prometheus.url, timeout=10.0, executor=ThreadPoolExecutor(max_workers=4))
    inside = {"now": 0, "most": 0}
    lock = threading.Lock()

    def parse(result: Any) -> int:
        with lock:
            inside["now"] += 1
            inside["most"] = max(inside["most"], inside["now"])
        time.sleep(0.05)  # long enough for the others to arrive while this one parses
        with lock:
            inside["now"] -= 1
        return len(result)

    async def four(query: str) -> list[int]:
        return await asyncio.gather(*(gateway._run(query, parse) for _ in range(4)))

    assert asyncio.run(four("large")) == [8000] * 4
    assert inside["most"] == 1
    inside["most"] = 0
    assert asyncio.run(four("small")) == [2] * 4
    assert inside["most"] > 1


@pytest.mark.parametrize(("series", "collecting"), [(20_000, False), (3, True)])
def test_a_large_answer_is_decoded_and_parsed_with_the_garbage_collector_paused(
    prometheus: FakePrometheusServer, series: int, collecting: bool
) -> None:
    # A fleet's block (20,000 series, over 256 KB): a collection during its parse would walk every
    # object of the answer for nothing; a small answer changes nothing.
    prometheus.respond = lambda query: (200, vector(*(["1"] * series)), 0.0)
    seen: list[bool] = []

    def parse(result: Any) -> int:
        seen.append(gc.isenabled())
        return len(result)

    gateway = PrometheusGateway(prometheus.url, timeout=5)
    assert asyncio.run(gateway._run("sum(x)", parse)) == series
    assert seen == [collecting] and gc.isenabled()


def test_a_parse_that_fails_leaves_the_garbage_collector_on(prometheus: FakePrometheusServer) -> None:
    prometheus.respond = lambda query: (200, vector(*(["1"] * 20_000)), 0.0)

    def parse(result: Any) -> int:
        raise PrometheusUnavailable("unexpected series")

    with pytest.raises(PrometheusUnavailable):
        asyncio.run(PrometheusGateway(prometheus.url, timeout=5)._run("sum(x)", parse))
    assert gc.isenabled()


def test_an_urgent_large_answer_is_decoded_before_others_waiting(prometheus: FakePrometheusServer) -> None:
    """The fast check's value block (urgent: a breach is seen through it) arrives while a fleet answer
    is being parsed and two evaluations' answers wait: it is parsed next, not last."""
    prometheus.respond = lambda query: (200, vector(*(["1"] * 20_000)), 0.0)
    gateway = PrometheusGateway(prometheus.url, timeout=10.0, executor=ThreadPoolExecutor(max_workers=4))
    turns, order = prometheus_module._DECODING, []
    holding, released = threading.Event(), threading.Event()

    def first() -> None:  # the fleet answer being parsed
        with turns.turn(urgent=False):
            holding.set()
            released.wait(timeout=5.0)

    def parse(name: str, result: Any) -> int:
        order.append(name)
        return len(result)

    async def arrive() -> list[int]:
        runs = [
            asyncio.ensure_future(gateway._run("sum(x)", functools.partial(parse, name)))
            for name in ("evaluation-1", "evaluation-2")
        ]
        while turns.waiting < 2:
            await asyncio.sleep(0.01)
        fast = functools.partial(parse, "fast-check")
        runs.append(asyncio.ensure_future(gateway._run("sum(x)", fast, urgent=True)))
        while turns.waiting < 3:
            await asyncio.sleep(0.01)
        released.set()
        return await asyncio.gather(*runs)

    holder = threading.Thread(target=first)
    holder.start()
    assert holding.wait(timeout=5.0)
    try:
        assert asyncio.run(arrive()) == [20_000] * 3
    finally:
        released.set()
        holder.join()
    assert order[0] == "fast-check"


def test_answers_that_are_not_urgent_give_way_for_a_bounded_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """A stream of urgent decodes back to back (three threads, 50 ms each) does not hold an evaluation's
    answer past URGENT_FIRST (here 0.2 s): it takes a turn between two urgent ones."""
    monkeypatch.setattr(prometheus_module, "URGENT_FIRST", 0.2)
    turns = prometheus_module._DecodeTurns()
    stop = threading.Event()
    waited: list[float] = []

    def urgent_stream() -> None:
        while not stop.is_set():
            with turns.turn(urgent=True):
                time.sleep(0.05)

    def evaluation() -> None:
        asked = time.monotonic()
        with turns.turn(urgent=False):
            waited.append(time.monotonic() - asked)

    stream = [threading.Thread(target=urgent_stream) for _ in range(3)]
    for thread in stream:
        thread.start()
    time.sleep(0.1)
    other = threading.Thread(target=evaluation)
    other.start()
    other.join(timeout=3.0)
    stop.set()
    for thread in stream:
        thread.join()
    assert waited and waited[0] < 1.0  # 0.2 s of giving way and one urgent decode, on a busy machine


def test_a_round_trip_is_prometheus_time_not_the_wait_for_a_turn_to_decode(
    prometheus: FakePrometheusServer,
) -> None:
    """answered_in (what the fast check rests for) is the HTTP round trip: a fleet answer that waited
    for its turn to be decoded (held HOLD seconds after it began waiting) took Prometheus that much
    less than its asker waited."""
    hold = 0.5
    prometheus.respond = lambda query: (200, vector(*(["1"] * 20_000)), 0.0)
    gateway = PrometheusGateway(prometheus.url, timeout=10.0)
    holding, released = threading.Event(), threading.Event()

    def decoding() -> None:  # another fleet answer's turn
        with prometheus_module._DECODING.turn(urgent=False):
            holding.set()
            released.wait(timeout=30.0)

    async def asked() -> float:
        started = time.monotonic()
        answer = asyncio.ensure_future(gateway._run("sum(x)", len))
        while not prometheus_module._DECODING.waiting:  # read, and waiting for its turn to decode
            await asyncio.sleep(0.01)
        await asyncio.sleep(hold)
        released.set()
        assert await answer == 20_000
        return time.monotonic() - started

    holder = threading.Thread(target=decoding)
    holder.start()
    assert holding.wait(timeout=5.0)
    try:
        waited = asyncio.run(asked())
    finally:
        released.set()
        holder.join()
    round_trip, times = gateway.answered_in("sum(x)"), gateway.answer_times("sum(x)")
    assert times is not None and times.turn >= hold and round_trip == times.prometheus, times
    assert round_trip <= waited - hold, (waited, round_trip)
    assert gateway.answered_in("sum(y)") is None


def test_breach_reads_have_workers_of_their_own_while_the_shared_ones_are_busy(
    prometheus: FakePrometheusServer,
) -> None:
    """The fast check's value block and a read after a moment (a confirm, the evaluation a breach woke)
    are answered while every shared worker is held by a slow query: in the shared first-in, first-out
    queue they waited for those (at 10,000 rollouts the evaluations' queries take 0.4-1.4 s each)."""
    errors, _ = template_read(Template.ERROR_RATE, MetricNames(), window="2m").blocks
    fleet = series(({"namespace": "team", "version": "agent"}, 0.5))
    prometheus.respond = lambda query: (200, fleet, 2.0 if query.startswith("slow") else 0.0)
    gateway = PrometheusGateway(prometheus.url, timeout=10.0)  # the process-wide worker pools
    pair = ("team", "agent")

    async def scenario() -> tuple[float, float, float]:
        begun = time.monotonic()
        slow = [asyncio.ensure_future(gateway.scalar(f"slow{i}")) for i in range(9)]  # 8 workers busy
        await asyncio.sleep(0.2)
        started = time.monotonic()
        assert (await gateway.block(errors, max_age=0.0, urgent=True))[pair] == 0.5
        value_block = time.monotonic() - started
        started = time.monotonic()
        assert (await gateway.block(errors, keys=frozenset({pair}), after=time.monotonic()))[pair] == 0.5
        confirm = time.monotonic() - started
        await asyncio.gather(*slow)
        return value_block, confirm, time.monotonic() - begun

    value_block, confirm, ninth = asyncio.run(scenario())
    assert ninth >= 2.0 * 2 - 0.5  # the ninth slow query waited for a shared worker: they were busy
    assert value_block < 1.0 and confirm < 1.0, (value_block, confirm)
    urgent = gateway.answer_times(errors.promql)
    assert urgent is not None and urgent.queued < 0.5, urgent


def test_every_worker_keeps_its_connection(
    prometheus: FakePrometheusServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Both worker pools busy at once (the fast check's and the shared) each hold a connection to
    Prometheus; none is dropped for a full pool (urllib3's warning; its default pool holds 10)."""
    prometheus.respond = lambda query: (200, vector("1"), 0.3)
    gateway = PrometheusGateway(prometheus.url, timeout=10.0)

    async def scenario() -> None:
        await asyncio.gather(
            *(gateway._run(f"shared{i}", parse_scalar) for i in range(prometheus_module.SHARED_WORKERS)),
            *(
                gateway._run(f"urgent{i}", parse_scalar, True)
                for i in range(prometheus_module.URGENT_WORKERS)
            ),
        )
        assert len(prometheus.queries) == 12

    with caplog.at_level("WARNING", logger="urllib3.connectionpool"):
        asyncio.run(scenario())
    assert not [r for r in caplog.records if "pool is full" in r.getMessage()]


def test_a_fleet_answer_reaches_its_reader_in_four_turns_of_the_event_loop(
    prometheus: FakePrometheusServer,
) -> None:
    """From its worker thread to the reader of a building block (the fast check): each turn of the loop
    is a wait on a busy one (at 10,000 rollouts an answer took 1.06 s to reach the fast check), and
    asyncio.wait_for spent two of them in each of its two layers (six turns in all)."""
    prometheus.respond = lambda query: (200, series(({"namespace": "team", "version": "agent"}, 0.5)), 0.0)
    gateway = PrometheusGateway(prometheus.url, timeout=10.0)
    errors, _ = template_read(Template.ERROR_RATE, MetricNames(), window="2m").blocks

    async def turns() -> int:
        loop = asyncio.get_running_loop()
        ticks: list[float] = []

        def tick() -> None:  # once per turn of the loop
            ticks.append(time.monotonic())
            loop.call_soon(tick)

        loop.call_soon(tick)
        await gateway.block(errors, urgent=True)
        resumed = time.monotonic()
        times = gateway.answer_times(errors.promql)
        assert times is not None
        return sum(1 for at in ticks if times.done <= at <= resumed)

    assert asyncio.run(turns()) <= 4
