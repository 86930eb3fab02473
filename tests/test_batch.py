"""Batched reads of template building blocks, against a local HTTP server that counts the queries."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import pytest

from agent_rollout.analysis.batch import BatchReader
from agent_rollout.analysis.prometheus import PrometheusGateway, PrometheusUnavailable, measure_gates
from agent_rollout.analysis.templates import Block, BlockValues, template_read
from agent_rollout.api import AgentRolloutSpec, GateResult, MetricNames, Template, Verdict, parse_spec
from tests.fakes import unfocused
from tests.prometheus_http import FakePrometheusServer, loop_ticks_during, series

GATES: list[dict[str, Any]] = [
    {"name": "errors", "template": "errorRate", "max": 0.01},
    {"name": "p95", "template": "latencyQuantile", "compare": {"maxRatio": 1.5}},
    {"name": "flagged", "template": "flagRate", "max": 0.02},
    {"name": "cost", "template": "costPerRequest", "max": 0.05},
    {"name": "accuracy", "template": "evalAccuracy", "min": 0.9},
]
ROLLOUTS = 40
OPERATOR = Path(__file__).resolve().parents[1] / "operator"


def blocks(template: Template) -> tuple[Block, ...]:
    return template_read(template, MetricNames(), window="2m").blocks  # (value, samples)


ERRORS, REQUESTS = blocks(Template.ERROR_RATE)
P95, _ = blocks(Template.LATENCY_QUANTILE)
FLAGGED, _ = blocks(Template.FLAG_RATE)
COST, _ = blocks(Template.COST_PER_REQUEST)
CORRECT, EVALS = blocks(Template.EVAL_ACCURACY)
ALL_BLOCKS = {b.promql for b in (REQUESTS, ERRORS, P95, FLAGGED, COST, CORRECT, EVALS)}


def noted(
    sent: list[str], name: str, until: asyncio.Event | None = None, answer: BlockValues | None = None
) -> Callable[[], Awaitable[BlockValues]]:
    """A query that notes its sending in `sent`, is answered once `until` is set, with `answer`."""

    async def query() -> BlockValues:
        sent.append(name)
        if until is not None:
            await until.wait()
        return answer or {}

    return query


def spec(i: int, gates: list[dict[str, Any]] = GATES) -> AgentRolloutSpec:
    return parse_spec(
        {
            "legacy": {"deployment": "rules"},
            "candidate": {"deployment": f"agent-{i}"},
            "traffic": {"gatewayAPI": {"httpRoute": "r", "legacyBackend": "a", "candidateBackend": "b"}},
            "analysis": {"prometheus": {"url": "http://p:9090"}, "minSamples": 100, "gates": gates},
            "steps": [{"setWeight": 5}],
        }
    )


def namespace(i: int) -> str:
    return f"team-{i}"


def data(generation: int = 0) -> dict[str, dict[tuple[str, str], float]]:
    """Every rollout's series, distinct per rollout; rollout 0's candidate has no error series yet."""
    out: dict[str, dict[tuple[str, str], float]] = {b: {} for b in ALL_BLOCKS}
    for i in range(ROLLOUTS):
        for version in (f"agent-{i}", "rules"):
            key, n = (namespace(i), version), 1000.0 + i + generation
            out[REQUESTS.promql][key] = n
            if i:
                out[ERRORS.promql][key] = float(i % 7)
            out[P95.promql][key] = 1.0 + i / 100 if version != "rules" else 1.0
            out[FLAGGED.promql][key] = float(i % 5)
            out[COST.promql][key] = 0.01 * n
            out[EVALS.promql][key] = n / 2
            out[CORRECT.promql][key] = 0.95 * n / 2
    return out


def serve(
    prometheus: FakePrometheusServer,
    answers: Mapping[str, Mapping[tuple[str, str], float]],
    delay: float = 0.0,
    fail: str = "",
) -> None:
    def respond(query: str) -> tuple[int, Any, float]:
        if query == fail:
            return 500, {"status": "error", "error": "boom"}, delay
        plain, selects = unfocused(query)  # a focused block: the whole one's series it selects
        labelled = (({"namespace": ns, "version": v}, x) for (ns, v), x in answers[plain].items())
        return 200, series(*((labels, x) for labels, x in labelled if selects(labels))), delay

    prometheus.respond = respond


def expected(i: int, answers: Mapping[str, Mapping[tuple[str, str], float]]) -> dict[str, float]:
    """What each gate's per-rollout query gives for rollout i."""
    key = (namespace(i), f"agent-{i}")
    n = answers[REQUESTS.promql][key]
    return {
        "errors": answers[ERRORS.promql].get(key, 0.0) / n,
        "p95": answers[P95.promql][key],
        "flagged": answers[FLAGGED.promql][key] / n,
        "cost": answers[COST.promql][key] / n,
        "accuracy": answers[CORRECT.promql][key] / answers[EVALS.promql][key],
    }


async def measure_all(gateways: list[PrometheusGateway]) -> list[tuple[GateResult, ...]]:
    return await asyncio.gather(
        *(measure_gates(spec(i), namespace(i), gateways[i % len(gateways)]) for i in range(ROLLOUTS))
    )


def test_concurrent_rollouts_share_one_query_per_building_block(prometheus: FakePrometheusServer) -> None:
    answers = data()
    serve(prometheus, answers, delay=0.1)
    reader = BatchReader(ttl=60)
    # Rollouts with different timeouts have different gateways, and still share the one reader.
    gateways = [PrometheusGateway(prometheus.url, timeout=t, reader=reader) for t in (5.0, 7.0)]

    results = asyncio.run(measure_all(gateways))

    assert sorted(prometheus.queries) == sorted(ALL_BLOCKS)  # 7 queries for 40 rollouts, not 40 x 6
    for i, gates in enumerate(results):
        assert {g.name: g.value for g in gates} == expected(i, answers)
        assert gates[0].samples == round(answers[REQUESTS.promql][(namespace(i), f"agent-{i}")])
        assert gates[1].legacy_value == 1.0
        assert f'version="agent-{i}"' in gates[0].query and gates[0].query.startswith("(sum(increase(")
    assert results[0][0].verdict is Verdict.PASS and results[0][0].value == 0.0  # no error series: 0

    asyncio.run(measure_all(gateways))  # within the TTL: answered from the cache
    assert len(prometheus.queries) == len(ALL_BLOCKS)


def test_answers_expire_after_the_ttl(prometheus: FakePrometheusServer) -> None:
    now = [100.0]
    gateway = PrometheusGateway(
        prometheus.url, timeout=5.0, reader=BatchReader(ttl=1.0, clock=lambda: now[0])
    )
    serve(prometheus, data(0))
    asyncio.run(measure_all([gateway]))
    serve(prometheus, data(1))  # new traffic arrives

    now[0] += 0.9
    stale = asyncio.run(measure_all([gateway]))
    assert len(prometheus.queries) == len(ALL_BLOCKS)
    assert {g.name: g.value for g in stale[3]} == expected(3, data(0))

    now[0] += 0.2
    fresh = asyncio.run(measure_all([gateway]))
    assert len(prometheus.queries) == 2 * len(ALL_BLOCKS)
    assert {g.name: g.value for g in fresh[3]} == expected(3, data(1))


def test_concurrent_reads_share_the_query_in_flight(prometheus: FakePrometheusServer) -> None:
    serve(prometheus, data(), delay=0.3)
    gateway = PrometheusGateway(prometheus.url, timeout=5.0, reader=BatchReader(ttl=0))

    async def twenty_reads() -> list[Mapping[tuple[str, str], float]]:
        return await asyncio.gather(*(gateway.block(REQUESTS) for _ in range(20)))

    reads = asyncio.run(twenty_reads())
    assert prometheus.queries == [REQUESTS.promql]
    assert all(r is reads[0] for r in reads) and reads[0][("team-3", "agent-3")] == 1003.0
    asyncio.run(gateway.block(REQUESTS))  # ttl 0: shared while in flight, never cached
    assert prometheus.queries == [REQUESTS.promql] * 2


def test_a_failed_block_fails_only_the_rollouts_that_need_it_and_is_not_cached(
    prometheus: FakePrometheusServer,
) -> None:
    serve(prometheus, data(), delay=0.05, fail=ERRORS.promql)
    gateway = PrometheusGateway(prometheus.url, timeout=5.0, reader=BatchReader(ttl=60))
    latency_only = spec(1, [GATES[1]])

    async def both() -> Any:
        return await asyncio.gather(
            measure_gates(spec(1), namespace(1), gateway),
            measure_gates(spec(2), namespace(2), gateway),
            measure_gates(latency_only, namespace(1), gateway),
            return_exceptions=True,
        )

    needs_errors, also_needs_errors, latency = asyncio.run(both())
    assert isinstance(needs_errors, PrometheusUnavailable) and "500" in str(needs_errors)
    assert isinstance(also_needs_errors, PrometheusUnavailable)
    assert isinstance(latency, tuple) and latency[0].value == 1.01
    assert prometheus.queries.count(ERRORS.promql) == 1  # one failed query, raised to both waiters

    serve(prometheus, data())
    assert asyncio.run(measure_gates(spec(1), namespace(1), gateway))[0].value == 1 / 1001
    assert prometheus.queries.count(ERRORS.promql) == 2  # the failure was not cached


def test_a_caller_gives_up_at_its_own_timeout_without_cancelling_the_shared_query(
    prometheus: FakePrometheusServer,
) -> None:
    serve(prometheus, data(), delay=0.6)
    reader = BatchReader(ttl=60)
    impatient = PrometheusGateway(prometheus.url, timeout=0.2, reader=reader)
    patient = PrometheusGateway(prometheus.url, timeout=3.0, reader=reader)

    async def both() -> Any:
        return await asyncio.gather(
            patient.block(REQUESTS), impatient.block(REQUESTS), return_exceptions=True
        )

    answer, gave_up = asyncio.run(both())
    assert isinstance(gave_up, PrometheusUnavailable) and "within 0.2s" in str(gave_up)
    assert answer[("team-0", "rules")] == 1000.0
    assert prometheus.queries == [REQUESTS.promql]


def test_block_reads_do_not_block_the_event_loop(prometheus: FakePrometheusServer) -> None:
    serve(prometheus, data(), delay=0.5)
    gateway = PrometheusGateway(prometheus.url, timeout=2.0, reader=BatchReader(ttl=0))

    assert loop_ticks_during(lambda: gateway.block(REQUESTS)) >= 20


def test_a_negative_ttl_is_refused() -> None:
    with pytest.raises(ValueError, match="ttl"):
        BatchReader(ttl=-1)


def test_a_reader_that_accepts_older_answers_gets_them_up_to_the_readers_longest() -> None:
    """The fast check wants second-old answers, an evaluation accepts older ones: one answer serves
    both while it is young, only the evaluation while it is older, nobody past `longest`."""
    now = [0.0]
    reader = BatchReader(ttl=1.0, clock=lambda: now[0], longest=5.0)
    block = blocks(Template.ERROR_RATE)[0]
    fetched: list[float] = []

    async def fetch() -> BlockValues:
        fetched.append(now[0])
        return {("support", "candidate"): 1.0}

    async def read(max_age: float | None) -> None:
        await reader.read(block, fetch, timeout=1.0, max_age=max_age)

    async def scenario() -> None:
        await read(None)
        now[0] = 3.0
        await read(5.0)  # the evaluation: a 3 s old answer will do
        assert fetched == [0.0]
        await read(None)  # the fast check: not 3 s old
        assert fetched == [0.0, 3.0]
        now[0] = 30.0
        await read(60.0)  # asks for more than the reader allows: 27 s is too old
        assert fetched == [0.0, 3.0, 30.0]

    asyncio.run(scenario())


def test_a_stale_answer_is_taken_at_once_while_one_query_fetches_a_fresh_one() -> None:
    """Stale while revalidate: an answer older than max_age but younger than stale_age is returned
    without waiting, the query it starts (one, however many read) answers the readers after it;
    a reader without stale_age, or with an answer past it, waits as before."""
    now = [0.0]
    reader = BatchReader(ttl=1.0, clock=lambda: now[0], longest=5.0)
    block = blocks(Template.ERROR_RATE)[0]
    key = ("support", "candidate")
    answered = asyncio.Event()
    fetched: list[float] = []

    async def fetch() -> BlockValues:
        fetched.append(now[0])
        await answered.wait()
        return {key: float(len(fetched))}

    async def read(stale_age: float | None, wait: float = 0.1) -> float:
        values = await asyncio.wait_for(
            reader.read(block, fetch, timeout=5.0, max_age=5.0, stale_age=stale_age), wait
        )
        return values[key]

    async def scenario() -> None:
        answered.set()
        assert await read(None) == 1.0
        answered.clear()  # Prometheus is slow from now on
        now[0] = 7.0
        assert await read(10.0) == 1.0  # 7 s old, at once
        assert await read(10.0) == 1.0
        assert fetched == [0.0, 7.0]  # one query for both
        with pytest.raises(TimeoutError):
            await read(None)  # 7 s is too old for it: it waits for the query in flight
        answered.set()
        await asyncio.sleep(0.01)
        assert await read(10.0) == 2.0  # the fresh answer, for the readers after it
        answered.clear()
        now[0] = 18.0  # 11 s old: past the stale reader's 10 s
        with pytest.raises(TimeoutError):
            await read(10.0)
        answered.set()
        assert await read(10.0, wait=1.0) == 3.0
        answered.clear()
        now[0] = 29.0  # 11 s old again, and 60 s asked for: no older than twice the reader's longest
        with pytest.raises(TimeoutError):
            await read(60.0)
        answered.set()

    asyncio.run(scenario())


def test_with_prometheus_down_a_stale_answer_serves_until_stale_age_then_the_error_does() -> None:
    now = [0.0]
    reader = BatchReader(ttl=1.0, clock=lambda: now[0], longest=5.0)
    block = blocks(Template.ERROR_RATE)[0]
    down = [False]
    fetched: list[float] = []

    async def fetch() -> BlockValues:
        fetched.append(now[0])
        if down[0]:
            raise PrometheusUnavailable("connection refused")
        return {("support", "candidate"): 1.0}

    async def read() -> BlockValues:
        return await reader.read(block, fetch, timeout=1.0, max_age=5.0, stale_age=10.0)

    async def scenario() -> None:
        await read()
        down[0] = True
        now[0] = 6.0
        assert (await read())[("support", "candidate")] == 1.0  # stale, its refresh fails meanwhile
        await asyncio.sleep(0.01)  # the failed refresh is done
        now[0] = 9.0
        assert (await read())[("support", "candidate")] == 1.0  # the failure was not cached: asked again
        await asyncio.sleep(0.01)  # the failed refresh is done
        assert fetched == [0.0, 6.0, 9.0]
        now[0] = 10.0  # as old as the stale reader accepts: it waits, and gets the error
        with pytest.raises(PrometheusUnavailable):
            await read()

    asyncio.run(scenario())


def test_an_evaluation_judges_steady_gates_on_a_stale_answer_and_young_ones_on_a_fresh_one(
    prometheus: FakePrometheusServer,
) -> None:
    """At an interval of 30s an evaluation uses answers up to 5 s old and, for steady gates (window
    whole 10 s back), up to 10 s old without waiting; Prometheus answers slowly here (0.5 s)."""
    now = [100.0]
    reader = BatchReader(ttl=1.0, clock=lambda: now[0], longest=5.0)
    gateway = PrometheusGateway(prometheus.url, timeout=5.0, reader=reader)
    gates = [{"name": "errors", "template": "errorRate", "max": 0.01}]
    serve(prometheus, data(0), delay=0.5)

    async def measure(steady: frozenset[str]) -> float | None:
        results = await asyncio.wait_for(
            measure_gates(spec(3, gates), namespace(3), gateway, steady=steady), 0.3
        )
        return results[0].value

    async def scenario() -> None:
        with pytest.raises(TimeoutError):
            await measure(frozenset())  # nothing cached: even a steady gate waits for its first answer
        await asyncio.sleep(0.5)
        before = len(prometheus.queries)
        serve(prometheus, data(1), delay=0.5)  # new traffic; the cached answers hold data(0)
        now[0] += 7.0
        assert await measure(frozenset({"errors"})) == expected(3, data(0))["errors"]  # at once, 7 s old
        with pytest.raises(TimeoutError):
            await measure(frozenset())  # a young gate's evaluation waits for the fresh answer
        await asyncio.sleep(0.5)
        assert await measure(frozenset()) == expected(3, data(1))["errors"]
        assert len(prometheus.queries) == before + 2  # the two blocks once, for all three evaluations

    asyncio.run(scenario())


def focused_pairs(promql: str) -> set[tuple[str, str]]:
    """The (namespace, version) pairs a focused query selects among this file's rollouts."""
    _, selects = unfocused(promql)
    return {
        (namespace(i), v)
        for i in range(ROLLOUTS)
        for v in (f"agent-{i}", "rules")
        if selects({"namespace": namespace(i), "version": v})
    }


def test_a_focused_query_an_urgent_reader_gathered_into_is_sent_urgent() -> None:
    """A confirm (urgent) joining an evaluation's focused query still gathering readers makes it urgent:
    sent as the evaluation's, it would wait in the shared workers' queue with a breach in its answer."""
    reader = BatchReader(ttl=1.0, gather=0.02)
    block = blocks(Template.ERROR_RATE)[0]
    sent: list[tuple[frozenset[tuple[str, str]], bool]] = []

    async def fetch(pairs: frozenset[tuple[str, str]], urgent: bool = False) -> BlockValues:
        sent.append((pairs, urgent))
        return dict.fromkeys(pairs, 1.0)

    a, b = ("team-1", "agent-1"), ("team-2", "agent-2")

    async def scenario() -> None:
        evaluation = reader.read_focused(block, frozenset({a}), fetch, timeout=1.0)
        confirm = reader.read_focused(block, frozenset({b}), fetch, timeout=1.0, after=0.0, urgent=True)
        await asyncio.gather(evaluation, confirm)
        assert sent == [(frozenset({a, b}), True)]
        await reader.read_focused(block, frozenset({("team-3", "agent-3")}), fetch, timeout=1.0)
        assert sent[1][1] is False  # an evaluation's own is not

    asyncio.run(scenario())


def test_focused_reads_within_the_gather_time_are_one_query_for_all_their_pairs() -> None:
    now = [0.0]
    reader = BatchReader(ttl=1.0, clock=lambda: now[0], longest=5.0)
    block = blocks(Template.ERROR_RATE)[0]
    fetched: list[frozenset[tuple[str, str]]] = []
    fail = [False]

    async def fetch(pairs: frozenset[tuple[str, str]], urgent: bool = False) -> BlockValues:
        fetched.append(pairs)
        if fail[0]:
            raise PrometheusUnavailable("boom")
        return {pair: float(len(fetched)) for pair in pairs}

    async def read(*pairs: tuple[str, str], max_age: float = 5.0) -> BlockValues:
        return await reader.read_focused(block, frozenset(pairs), fetch, timeout=1.0, max_age=max_age)

    a, b, c = ("team-1", "agent-1"), ("team-2", "agent-2"), ("team-3", "agent-3")

    async def scenario() -> None:
        first = await asyncio.gather(read(a), read(b), read(a, c))
        assert fetched == [frozenset({a, b, c})]  # one query for the three readers
        assert all(answer[a] == 1.0 for answer in (first[0], first[2])) and first[1][b] == 1.0
        now[0] = 3.0
        assert (await read(c))[c] == 1.0 and len(fetched) == 1  # covered by that answer, 3 s old
        assert (await read(c, max_age=1.0))[c] == 2.0  # too old for this reader
        assert (await read(("team-4", "agent-4")))[("team-4", "agent-4")] == 3.0  # not covered: asked
        assert len(fetched) == 3

        fail[0] = True
        now[0] = 20.0
        failed = await asyncio.gather(read(a), read(b), return_exceptions=True)
        assert all(isinstance(e, PrometheusUnavailable) for e in failed) and len(fetched) == 4
        fail[0] = False
        assert (await read(a))[a] == 5.0  # the failure was not kept

        # An answer of the whole block covers every pair: no focused query.
        async def whole() -> BlockValues:
            return {a: 9.0, b: 9.0}

        now[0] = 40.0
        await reader.read(block, whole, timeout=1.0)
        assert (await read(b))[b] == 9.0 and len(fetched) == 5

    asyncio.run(scenario())


def test_a_young_steps_window_is_read_for_its_rollouts_only_the_full_window_for_the_fleet(
    prometheus: FakePrometheusServer,
) -> None:
    """Rollouts whose step is younger than the gates' window (planner.gate_windows clamps it) share
    one focused query per block, naming only their own series; the others read the whole block."""
    full, young = data(), {i for i in range(ROLLOUTS) if i % 4 == 0}
    short = {
        b.promql: b
        for g in GATES
        for b in template_read(Template(g["template"]), MetricNames(), window="30s").blocks
    }
    answers = {**full, **{promql: full[_two_minutes(promql)] for promql in short}}
    serve(prometheus, answers)
    gateway = PrometheusGateway(prometheus.url, timeout=5.0, reader=BatchReader(ttl=1.0))
    clamped = frozenset(g["name"] for g in GATES)

    async def measure_all_now() -> list[tuple[GateResult, ...]]:
        return await asyncio.gather(
            *(
                measure_gates(
                    spec(i, [{**g, "window": "30s"} for g in GATES]), namespace(i), gateway, clamped
                )
                if i in young
                else measure_gates(spec(i), namespace(i), gateway)
                for i in range(ROLLOUTS)
            )
        )

    results = asyncio.run(measure_all_now())

    for i, gates in enumerate(results):
        assert {g.name: g.value for g in gates} == expected(i, answers)  # the same numbers either way
    focused = [q for q in prometheus.queries if q not in ALL_BLOCKS]
    assert sorted(q for q in prometheus.queries if q in ALL_BLOCKS) == sorted(ALL_BLOCKS)
    assert len(focused) == len(short)  # one per block, shared by the 10 young rollouts
    for query in focused:
        pairs = focused_pairs(query)
        assert {ns for ns, _ in pairs} == {namespace(i) for i in young}
        assert {(ns, v) for ns, v in pairs if v != "rules"} == {(namespace(i), f"agent-{i}") for i in young}


def _two_minutes(promql: str) -> str:
    return promql.replace("[30s]", "[120s]")


def test_a_focused_query_too_long_for_a_url_goes_as_a_form(prometheus: FakePrometheusServer) -> None:
    serve(prometheus, {REQUESTS.promql: {(f"ns-{i}", f"agent-{i}"): float(i) for i in range(300)}})
    gateway = PrometheusGateway(prometheus.url, timeout=5.0, reader=BatchReader(ttl=0))
    pairs = frozenset((f"ns-{i}", f"agent-{i}") for i in range(0, 300, 2))

    answer = asyncio.run(gateway.block(REQUESTS, keys=pairs))

    assert prometheus.methods == ["POST"] and len(prometheus.queries[0]) > 2048
    assert set(answer) == pairs and answer[("ns-4", "agent-4")] == 4.0


def test_a_reader_after_a_moment_never_takes_an_answer_or_a_query_in_flight_from_before_it() -> None:
    """The fast check confirming a suspicion, and the evaluation it wakes, must see what Prometheus
    holds now: an answer sent before the suspicion (cached, or still in flight, whole or focused) may
    predate the breach. At 10,000 rollouts a confirmation that joined such queries took two or more
    rounds (the latency breach's p99 went from 3.4 to 8.2 s)."""
    now = [0.0]
    reader = BatchReader(ttl=1.0, clock=lambda: now[0], longest=5.0, gather=0)
    block = blocks(Template.LATENCY_QUANTILE)[0]
    key = ("support", "candidate")
    whole_sent: list[float] = []
    focused_sent: list[float] = []
    slow = asyncio.Event()

    async def whole() -> BlockValues:
        whole_sent.append(now[0])
        await slow.wait()
        return {key: 1.0, ("other", "agent"): 1.0}

    async def focused(pairs: frozenset[tuple[str, str]], urgent: bool = False) -> BlockValues:
        focused_sent.append(now[0])
        return dict.fromkeys(pairs, 12.0)  # the breach, in Prometheus since 1 s

    async def scenario() -> None:
        slow.set()
        await reader.read(block, whole, timeout=1.0)  # the fleet's answer, sent at 0
        now[0] = 1.0
        assert (await reader.read_focused(block, frozenset({key}), focused, 1.0, max_age=5.0))[key] == 1.0
        fresh = await reader.read_focused(block, frozenset({key}), focused, 1.0, max_age=5.0, after=1.0)
        assert fresh[key] == 12.0 and focused_sent == [1.0]  # not the cached answer sent at 0

        slow.clear()
        now[0] = 2.0
        flying = asyncio.create_task(reader.read(block, whole, timeout=5.0, max_age=0.5))
        await asyncio.sleep(0.01)  # the fleet's query is in flight, sent at 2
        now[0] = 2.5
        fresh = await reader.read_focused(block, frozenset({key}), focused, 1.0, after=2.5)
        assert fresh[key] == 12.0 and focused_sent == [1.0, 2.5]  # not joined: sent before 2.5
        # The evaluation the confirmation woke takes that very answer: no query of its own.
        again = await reader.read_focused(block, frozenset({key}), focused, 1.0, max_age=5.0, after=2.5)
        assert again[key] == 12.0 and focused_sent == [1.0, 2.5]
        # A whole read after a moment does not join the query in flight from before it either.
        now[0] = 3.0
        newer = asyncio.create_task(reader.read(block, whole, timeout=5.0, after=3.0))
        await asyncio.sleep(0.01)
        assert whole_sent == [0.0, 2.0, 3.0]
        slow.set()
        await asyncio.gather(flying, newer)
        assert reader._cache[block].sent == 3.0  # the older query, answered last, is not kept over it

    asyncio.run(scenario())


def test_a_fleet_query_that_is_not_urgent_is_sent_once_the_urgent_ones_in_flight_have_answered() -> None:
    """The fast check's value blocks go first on a Prometheus that shares its CPU between the queries
    in flight; every other fleet query (a count, an evaluation's quantile) is sent after them, and at
    once when none is in flight. Its answer is as old as its sending, not as its asking."""
    now = [0.0]
    reader = BatchReader(ttl=1.0, clock=lambda: now[0], longest=5.0, quiet_wait=1.0)
    key = ("support", "candidate")
    sent: dict[str, float] = {}
    errors_answer = asyncio.Event()

    def fetch(name: str, answered: asyncio.Event | None = None) -> Callable[[], Awaitable[BlockValues]]:
        async def query() -> BlockValues:
            sent[name] = now[0]
            if answered is not None:
                await answered.wait()
            return {key: 1.0}

        return query

    async def scenario() -> None:
        await reader.read(REQUESTS, fetch("alone"), timeout=1.0)
        assert sent == {"alone": 0.0}  # nothing urgent in flight: sent at once
        now[0] = 2.0
        urgent = asyncio.create_task(reader.read(ERRORS, fetch("errors", errors_answer), 5.0, urgent=True))
        await asyncio.sleep(0.01)
        count = asyncio.create_task(reader.read(REQUESTS, fetch("count"), timeout=5.0, max_age=0.5))
        quantile = asyncio.create_task(reader.read(P95, fetch("quantile"), timeout=5.0))
        await asyncio.sleep(0.05)
        assert set(sent) == {"alone", "errors"}  # the others wait for the errors' answer
        now[0] = 2.3
        errors_answer.set()
        await asyncio.gather(urgent, count, quantile)
        assert sent == {"alone": 0.0, "errors": 2.0, "count": 2.3, "quantile": 2.3}
        now[0] = 2.7  # 0.4 s after the count was sent, though 0.7 s after it was asked for
        before = sent["count"]
        await reader.read(REQUESTS, fetch("again"), timeout=1.0, max_age=0.5)
        assert "again" not in sent and sent["count"] == before

    asyncio.run(scenario())


def test_a_waiting_query_is_sent_after_quiet_wait_however_long_the_urgent_ones_take() -> None:
    reader = BatchReader(ttl=1.0, quiet_wait=0.05)
    stuck = asyncio.Event()
    sent: list[str] = []
    count = noted(sent, "count", answer={("support", "candidate"): 3.0})

    async def scenario() -> None:
        urgent = asyncio.create_task(reader.read(ERRORS, noted(sent, "errors", stuck), 5.0, urgent=True))
        await asyncio.sleep(0.01)
        values = await asyncio.wait_for(reader.read(REQUESTS, count, timeout=5.0), 1.0)
        assert values == {("support", "candidate"): 3.0} and sent == ["errors", "count"]
        assert not urgent.done()  # answered while the urgent query was still out
        stuck.set()
        await urgent

    asyncio.run(scenario())


def test_an_urgent_reader_that_joins_a_waiting_query_sends_it_at_once() -> None:
    """An evaluation asked for the errors block first (it waits behind the latency shortfall); the
    fast check's read of the same block joins that query and must not wait with it."""
    reader = BatchReader(ttl=1.0, quiet_wait=10.0)
    shortfall_answer = asyncio.Event()
    sent: list[str] = []
    half = {("support", "candidate"): 0.5}

    def fetch(name: str, answered: asyncio.Event | None = None) -> Callable[[], Awaitable[BlockValues]]:
        return noted(sent, name, answered, half)

    async def scenario() -> None:
        shortfall = asyncio.create_task(
            reader.read(P95, fetch("shortfall", shortfall_answer), 5.0, urgent=True)
        )
        await asyncio.sleep(0.01)
        evaluation = asyncio.create_task(reader.read(ERRORS, fetch("errors"), timeout=5.0))
        await asyncio.sleep(0.01)
        assert sent == ["shortfall"]
        fast_check = await asyncio.wait_for(reader.read(ERRORS, fetch("again"), 5.0, urgent=True), 1.0)
        assert fast_check == half and sent == ["shortfall", "errors"]
        assert (await evaluation) == fast_check  # one query for both
        shortfall_answer.set()
        await shortfall

    asyncio.run(scenario())


def test_a_confirm_never_joins_a_fleet_query_waiting_in_the_lane() -> None:
    """A suspect's exact read (focused, after the suspicion) is a small query of its own: joined to
    the evaluations' fleet quantile waiting behind the fast check, it waited for the lane and then for
    the whole fleet's query."""
    reader = BatchReader(ttl=1.0, quiet_wait=10.0, gather=0)
    key = ("support", "candidate")
    shortfall_answer = asyncio.Event()
    sent: list[str] = []

    async def shortfall() -> BlockValues:
        sent.append("shortfall")
        await shortfall_answer.wait()
        return {}

    async def fleet() -> BlockValues:
        sent.append("fleet quantile")
        return {key: 3.0}

    async def focused(pairs: frozenset[tuple[str, str]], urgent: bool = False) -> BlockValues:
        sent.append("confirm")
        return dict.fromkeys(pairs, 12.0)

    async def scenario() -> None:
        urgent = asyncio.create_task(reader.read(ERRORS, shortfall, timeout=20.0, urgent=True))
        await asyncio.sleep(0.01)
        evaluation = asyncio.create_task(reader.read(P95, fleet, timeout=20.0))
        await asyncio.sleep(0.01)
        now = time.monotonic()
        confirm = reader.read_focused(P95, frozenset({key}), focused, timeout=1.0, after=now)
        assert (await asyncio.wait_for(confirm, 0.5))[key] == 12.0
        assert sent == ["shortfall", "confirm"]  # the fleet's quantile still waits
        shortfall_answer.set()
        await asyncio.gather(urgent, evaluation)

    asyncio.run(scenario())


def test_a_readers_timeout_is_prometheus_time_not_the_lanes() -> None:
    """A rollout whose Prometheus timeout is shorter than the lane's wait is not told Prometheus is
    unavailable because its query waited behind the fast check's."""
    reader = BatchReader(ttl=1.0, quiet_wait=0.3)
    held = asyncio.Event()

    async def urgent_query() -> BlockValues:
        await held.wait()
        return {}

    async def count() -> BlockValues:
        return {("support", "candidate"): 7.0}

    async def scenario() -> None:
        urgent = asyncio.create_task(reader.read(ERRORS, urgent_query, timeout=5.0, urgent=True))
        await asyncio.sleep(0.01)
        values = await reader.read(REQUESTS, count, timeout=0.2)  # sent after 0.3 s, answered at once
        assert values == {("support", "candidate"): 7.0}
        held.set()
        await urgent

    asyncio.run(scenario())


def test_the_evaluation_a_confirm_woke_takes_the_confirms_answer_not_a_fleet_query_in_flight() -> None:
    """The confirm's focused answer, sent after the suspicion, is in hand; the fleet's quantile sent
    after it too is still in flight. The woken evaluation reads the answer at once: joined to the
    fleet's query, the rollback waited for it (1.0 s at 10,000 rollouts)."""
    now = [0.0]
    reader = BatchReader(ttl=1.0, clock=lambda: now[0], longest=5.0, gather=0)
    key = ("support", "candidate")
    fleet_answer = asyncio.Event()

    async def fleet() -> BlockValues:
        await fleet_answer.wait()
        return {key: 3.0}

    async def confirm(pairs: frozenset[tuple[str, str]], urgent: bool = False) -> BlockValues:
        return dict.fromkeys(pairs, 12.0)

    async def scenario() -> None:
        now[0] = 10.0
        assert (await reader.read_focused(P95, frozenset({key}), confirm, 1.0, after=10.0))[key] == 12.0
        now[0] = 10.2
        evaluations = asyncio.create_task(reader.read(P95, fleet, timeout=5.0))  # sent at 10.2
        await asyncio.sleep(0.01)
        woken = reader.read_focused(P95, frozenset({key}), confirm, 1.0, max_age=5.0, after=10.0)
        assert (await asyncio.wait_for(woken, 0.5))[key] == 12.0
        fleet_answer.set()
        await evaluations

    asyncio.run(scenario())


@pytest.mark.parametrize("value", ["-1", "nan", "soon"])
def test_a_lane_wait_that_is_no_number_of_seconds_stops_the_operator_naming_it(value: str) -> None:
    ran = subprocess.run(
        [sys.executable, "-c", "import agent_rollout.handlers"],
        env={**os.environ, "PYTHONPATH": str(OPERATOR), "AGENT_ROLLOUT_LANE_WAIT": value},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert ran.returncode != 0 and "AGENT_ROLLOUT_LANE_WAIT" in ran.stderr


def test_by_default_every_query_is_sent_as_it_is_asked() -> None:
    """No lanes (QUIET_WAIT 0, AGENT_ROLLOUT_LANE_WAIT unset or 0): a count goes beside the fast
    check's queries."""
    reader = BatchReader(ttl=1.0)
    held = asyncio.Event()
    sent: list[str] = []

    async def scenario() -> None:
        urgent = asyncio.create_task(reader.read(ERRORS, noted(sent, "errors", held), 5.0, urgent=True))
        await asyncio.sleep(0.01)
        await asyncio.wait_for(reader.read(REQUESTS, noted(sent, "count"), timeout=5.0), 0.1)
        assert sent == ["errors", "count"] and not urgent.done()
        held.set()
        await urgent

    asyncio.run(scenario())


@pytest.mark.parametrize(("value", "wait"), [(None, "0.0"), ("1.5", "1.5")])
def test_the_operators_readers_take_the_lane_wait_from_the_environment(value: str | None, wait: str) -> None:
    probe = (
        "from agent_rollout import handlers; "
        "print(handlers._gateway_for('http://p:9090', 5.0).reader.quiet_wait)"
    )
    env = {k: v for k, v in os.environ.items() if k != "AGENT_ROLLOUT_LANE_WAIT"}
    ran = subprocess.run(
        [sys.executable, "-c", probe],
        env={**env, "PYTHONPATH": str(OPERATOR), **({"AGENT_ROLLOUT_LANE_WAIT": value} if value else {})},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.split() == [wait]
