"""The shadow comparator as a service, with real local HTTP servers standing in for legacy and candidate."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from agent_rollout.comparator.app import SHADOW_HEADER, Running, Settings, start
from agent_rollout.comparator.compare import Comparison, Mode

Reply = Callable[[web.Request, bytes], Awaitable[tuple[int, Any]]]
WAIT_S = 10.0


@dataclass
class FakeAgent:
    """A real HTTP server on a loopback port; records what reached it and answers with `reply`."""

    reply: Reply
    seen: list[dict[str, Any]] = field(default_factory=list)
    runner: web.AppRunner | None = None
    url: str = ""

    async def start(self) -> FakeAgent:
        async def handle(request: web.Request) -> web.Response:
            body = await request.read()
            self.seen.append(
                {"method": request.method, "path": request.path_qs, "headers": request.headers, "body": body}
            )
            status, answer = await self.reply(request, body)
            return web.json_response(answer, status=status)

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self.runner.addresses[0][1]}"
        return self

    async def close(self) -> None:
        if self.runner:
            await self.runner.cleanup()


def answering(answer: Any, status: int = 200) -> Reply:
    async def reply(_: web.Request, __: bytes) -> tuple[int, Any]:
        return status, answer

    return reply


async def comparator(legacy: FakeAgent, candidate: FakeAgent, **options: Any) -> Running:
    settings = Settings(
        legacy_url=legacy.url,
        candidate_url=candidate.url,
        namespace="support",
        version="v2",
        host="127.0.0.1",
        port=0,
        admin_port=0,
        **options,
    )
    return await start(settings)


async def counts(session: aiohttp.ClientSession, running: Running) -> dict[tuple[str, str], float]:
    """(metric, outcome) -> value of the comparator's counters, read from its /metrics."""
    async with session.get(f"{running.admin_url}/metrics") as resp:
        text = await resp.text()
    out: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.endswith("_total"):
                assert sample.labels["namespace"] == "support" and sample.labels["version"] == "v2"
                out[(sample.name, sample.labels.get("outcome", ""))] = sample.value
    return out


async def wait_for_counts(
    session: aiohttp.ClientSession, running: Running, expected: dict[tuple[str, str], float]
) -> dict[tuple[str, str], float]:
    deadline = time.monotonic() + WAIT_S
    while True:
        seen = await counts(session, running)
        if all(seen.get(k) == v for k, v in expected.items()):
            return seen
        if time.monotonic() > deadline:
            raise AssertionError(f"counters {seen}, expected {expected}")
        await asyncio.sleep(0.02)


COMPARISONS = "agent_shadow_comparisons_total"
NOISE = "agent_shadow_noise_comparisons_total"


def test_a_mirrored_request_is_answered_before_the_agents_and_replayed_to_both_as_shadow_traffic() -> None:
    async def scenario() -> None:
        release = asyncio.Event()

        async def slow(_: web.Request, __: bytes) -> tuple[int, Any]:
            await release.wait()  # the candidate has not answered when the mirror gets its answer
            return 200, {"label": "refund"}

        legacy = await FakeAgent(answering({"label": "refund"})).start()
        candidate = await FakeAgent(slow).start()
        running = await comparator(legacy, candidate)
        async with aiohttp.ClientSession() as session:
            async with session.post(
                f"{running.url}/invoke?lang=en",
                data=b'{"input": "where is my refund"}',
                headers={
                    "Authorization": "Bearer t",
                    "X-Request-Id": "r1",
                    "Content-Type": "application/json",
                },
            ) as resp:
                assert resp.status == 202
            before = await counts(session, running)
            assert before[(COMPARISONS, "match")] == 0 and len(candidate.seen) == 1  # still comparing
            release.set()
            seen = await wait_for_counts(session, running, {(COMPARISONS, "match"): 1})
            assert seen[(COMPARISONS, "mismatch")] == 0 and seen[(NOISE, "match")] == 0
        await running.close()
        for agent in (legacy, candidate):
            (call,) = agent.seen
            assert (call["method"], call["path"], call["body"]) == (
                "POST",
                "/invoke?lang=en",
                b'{"input": "where is my refund"}',
            )
            assert call["headers"][SHADOW_HEADER] == "1"
            assert call["headers"]["Authorization"] == "Bearer t" and call["headers"]["X-Request-Id"] == "r1"
            assert call["headers"]["Host"] == agent.url.removeprefix("http://")
        await legacy.close()
        await candidate.close()

    asyncio.run(scenario())


def test_mismatches_and_candidate_errors_are_counted_apart_and_nothing_is_kept_by_default() -> None:
    async def scenario() -> None:
        async def candidate_reply(request: web.Request, _: bytes) -> tuple[int, Any]:
            n = int(request.query["n"])
            if n % 4 == 0:
                return 500, {"error": "overloaded"}
            return 200, {"label": "refund" if n % 4 != 1 else "escalate", "latency": n}

        legacy = await FakeAgent(answering({"label": "refund", "latency": 0})).start()
        candidate = await FakeAgent(candidate_reply).start()
        running = await comparator(legacy, candidate, comparison=Comparison(Mode.JSON, ("label",)))
        async with aiohttp.ClientSession() as session:
            for n in range(8):
                async with session.post(f"{running.url}/invoke?n={n}", data=b"{}") as resp:
                    assert resp.status == 202
            await wait_for_counts(
                session,
                running,
                {
                    (COMPARISONS, "match"): 4,
                    (COMPARISONS, "mismatch"): 2,
                    (COMPARISONS, "candidate_error"): 2,
                },
            )
            async with session.get(f"{running.admin_url}/mismatches") as resp:
                assert resp.status == 404 and "off" in (await resp.json())["error"]
        await running.close()
        await legacy.close()
        await candidate.close()

    asyncio.run(scenario())


def test_an_opted_in_mismatch_sample_keeps_only_the_last_n() -> None:
    async def scenario() -> None:
        async def candidate_reply(request: web.Request, _: bytes) -> tuple[int, Any]:
            return 200, {"label": f"wrong-{request.query['n']}"}

        legacy = await FakeAgent(answering({"label": "refund"})).start()
        candidate = await FakeAgent(candidate_reply).start()
        running = await comparator(
            legacy, candidate, comparison=Comparison(Mode.JSON, ("label",)), mismatch_sample=2
        )
        async with aiohttp.ClientSession() as session:
            for n in range(5):
                async with session.post(f"{running.url}/ask?n={n}", data=f"question {n}".encode()):
                    pass
            await wait_for_counts(session, running, {(COMPARISONS, "mismatch"): 5})
            async with session.get(f"{running.admin_url}/mismatches") as resp:
                sample = await resp.json()
        await running.close()
        assert sample["capacity"] == 2
        kept = sorted(sample["mismatches"], key=lambda m: m["path"])
        assert [m["path"] for m in kept] == ["/ask?n=3", "/ask?n=4"]
        assert kept[0]["request"] == "question 3" and kept[0]["reason"] == "differ: label"
        assert json.loads(kept[0]["candidate"]["body"]) == {"label": "wrong-3"}
        assert kept[0]["legacy"] == {"status": 200, "body": '{"label": "refund"}'}
        await legacy.close()
        await candidate.close()

    asyncio.run(scenario())


def test_the_noise_floor_compares_legacy_with_itself_on_the_sampled_share() -> None:
    async def scenario() -> None:
        calls = 0

        async def flaky_legacy(_: web.Request, __: bytes) -> tuple[int, Any]:
            nonlocal calls
            calls += 1  # legacy is non-deterministic: every third answer differs
            return 200, {"label": "refund" if calls % 3 else "escalate"}

        legacy = await FakeAgent(flaky_legacy).start()
        candidate = await FakeAgent(answering({"label": "refund"})).start()
        running = await comparator(
            legacy,
            candidate,
            comparison=Comparison(Mode.JSON, ("label",)),
            noise_share=1.0,
            answer_after_compare=True,  # one request at a time, so the legacy answers pair up in order
        )
        async with aiohttp.ClientSession() as session:
            verdicts = []
            for _ in range(30):
                async with session.post(f"{running.url}/invoke", data=b"{}") as resp:
                    verdicts.append(await resp.json())
            seen = await counts(session, running)
        await running.close()
        assert len(legacy.seen) == 60 and len(candidate.seen) == 30
        noise = seen[(NOISE, "match")] + seen[(NOISE, "mismatch")]
        assert noise == 30 and seen[(NOISE, "mismatch")] > 0
        assert sum(v["noise"]["outcome"] == "mismatch" for v in verdicts) == seen[(NOISE, "mismatch")]
        assert seen[(COMPARISONS, "match")] + seen[(COMPARISONS, "mismatch")] == 30
        await legacy.close()
        await candidate.close()

    asyncio.run(scenario())


def test_the_judge_decides_only_what_the_comparison_calls_different() -> None:
    async def scenario() -> None:
        async def judge_reply(_: web.Request, body: bytes) -> tuple[int, Any]:
            pair = json.loads(body)
            return 200, {"agree": "refund" in pair["candidate"]["body"]}

        async def candidate_reply(request: web.Request, _: bytes) -> tuple[int, Any]:
            return 200, {"say": {"0": "ok", "1": "a refund, sure", "2": "no way"}[request.query["n"]]}

        legacy = await FakeAgent(answering({"say": "ok"})).start()
        candidate = await FakeAgent(candidate_reply).start()
        judge = await FakeAgent(judge_reply).start()
        running = await comparator(
            legacy, candidate, judge_url=judge.url + "/judge", answer_after_compare=True
        )
        async with aiohttp.ClientSession() as session:
            outcomes = []
            for n in range(3):
                async with session.post(f"{running.url}/invoke?n={n}", data=b"q") as resp:
                    outcomes.append((await resp.json())["outcome"])
        await running.close()
        assert outcomes == ["match", "match", "mismatch"]
        assert len(judge.seen) == 2  # the identical pair never reached the judge
        assert json.loads(judge.seen[0]["body"])["request"] == "q"
        for agent in (legacy, candidate, judge):
            await agent.close()

    asyncio.run(scenario())


def test_a_candidate_that_is_down_counts_as_candidate_errors_and_a_full_comparator_drops() -> None:
    async def scenario() -> None:
        release = asyncio.Event()

        async def stuck(_: web.Request, __: bytes) -> tuple[int, Any]:
            await release.wait()
            return 200, {}

        legacy = await FakeAgent(stuck).start()
        down = await FakeAgent(answering({})).start()
        await down.close()  # its port now refuses connections
        running = await comparator(legacy, down, max_in_flight=1)
        async with aiohttp.ClientSession() as session:
            async with session.post(f"{running.url}/invoke", data=b"1") as first:
                assert first.status == 202
            async with session.post(f"{running.url}/invoke", data=b"2") as second:
                assert second.status == 503  # the first comparison still waits for legacy
            release.set()
            await wait_for_counts(
                session, running, {(COMPARISONS, "candidate_error"): 1, ("agent_shadow_dropped_total", ""): 1}
            )
        await running.close()
        await legacy.close()

    asyncio.run(scenario())


def test_the_container_entry_point_serves_and_stops_cleanly_on_sigterm() -> None:
    argv = ["--legacy-url", "http://127.0.0.1:9", "--candidate-url", "http://127.0.0.1:9"]
    argv += ["--host", "127.0.0.1", "--port", "0", "--admin-port", "0"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "agent_rollout.comparator", *argv],
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "POD_NAMESPACE": "support"},
    )
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()  # blocks until the first log line: written once both ports are bound
        match = re.search(r"mirror port (\d+), admin port (\d+)", line)
        assert match, line
        with urllib.request.urlopen(f"http://127.0.0.1:{match[2]}/metrics", timeout=WAIT_S) as resp:
            text = resp.read().decode()
        assert (
            'agent_shadow_comparisons_total{namespace="support",outcome="match",version="candidate"} 0.0'
            in text
        )
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=WAIT_S) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
