"""The shadow comparator: an async HTTP service that replays mirrored requests to legacy and candidate.

The gateway mirrors a share of live requests here (a Gateway API RequestMirror filter) and ignores
the answer, so each mirrored request is answered at once (202) and compared in the background:

1. the request (method, path, query, headers, body) is sent to legacy and to the candidate, with
   `X-Agent-Shadow: 1`: both copies are shadow traffic, and an agent must skip its side effects for
   them (send no mail, write no ticket, charge nobody); the live request already reached legacy;
2. with probability `noise_share`, a third copy goes to legacy, and legacy's two answers are compared
   with the same comparison: the noise floor of a non-deterministic agent (Twitter's Diffy idea);
3. the answers are compared (compare.py); an optional external judge decides the pairs the comparison
   calls different (POST {request, legacy, candidate}, answer {"agree": bool});
4. the verdicts are counted in Prometheus counters labelled by namespace and version.

The comparison is the flags' (--mode, --field, --threshold, --judge-url), unless the comparator follows
a rollout (--rollout NAMESPACE/NAME, follow.py): while that rollout is live on a shadow step with
`compare`, the step's comparison applies, to the requests that arrive from then on.

Privacy: requests and answers are never logged. Only when `mismatch_sample` > 0 are the last N
mismatches (request and both answers, each truncated) kept in memory and served on the admin port.
The admin port (/metrics, /healthz, /mismatches) is separate from the mirror port so that no mirrored
path can reach it and a mirror Service never exposes the sample.

Bounded: at most `max_in_flight` comparisons run at once; beyond that a mirrored request is refused
(503) and counted as dropped, so a traffic spike costs the comparator nothing but a counter.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import random
import signal
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, generate_latest

from agent_rollout.comparator.compare import (
    Answer,
    Comparison,
    Mode,
    Outcome,
    Verdict,
    compare,
    judge_request,
    judge_verdict,
)
from agent_rollout.comparator.follow import Follower, Rule, parse_rollout_ref, step_rule
from agent_rollout.kube import ListWatchClient

log = logging.getLogger(__name__)

SHADOW_HEADER = "X-Agent-Shadow"
# Never forwarded: they describe the gateway's connection to us, not the request (RFC 9110 7.6.1).
_NOT_FORWARDED = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
        SHADOW_HEADER.lower(),
    }
)
SAMPLE_BODY_BYTES = 4096  # each text kept in the mismatch sample is cut here


@dataclass(frozen=True)
class Settings:
    legacy_url: str
    candidate_url: str
    namespace: str = "default"
    version: str = "candidate"
    comparison: Comparison = field(default_factory=Comparison)
    judge_url: str | None = None
    noise_share: float = 0.0  # share of mirrored requests also sent to legacy a second time
    mismatch_sample: int = 0  # 0: keep nothing
    timeout_s: float = 30.0
    max_in_flight: int = 256
    max_body_bytes: int = 1 << 20
    answer_after_compare: bool = False  # benchmarks and debugging: answer with the verdict
    host: str = "0.0.0.0"
    port: int = 8080
    admin_port: int = 9090
    seed: int | None = None
    port_file: str | None = None  # where to write the bound ports, {"port": .., "adminPort": ..}
    rollout: str | None = None  # NAMESPACE/NAME: follow its shadow steps' `compare` (follow.py)
    kubeconfig: str | None = None  # outside a cluster, with --rollout; in a pod: the ServiceAccount's token

    def __post_init__(self) -> None:
        if not 0.0 <= self.noise_share <= 1.0:
            raise ValueError(f"noise share must be within [0, 1], got {self.noise_share}")
        if self.mismatch_sample < 0 or self.max_in_flight < 1 or self.max_body_bytes < 1:
            raise ValueError("mismatch sample must be >= 0, max in flight and max body bytes >= 1")
        if self.timeout_s <= 0:
            raise ValueError("timeout must be positive")
        if self.rollout is not None:
            parse_rollout_ref(self.rollout)


@dataclass(frozen=True)
class Mirrored:
    method: str
    path_qs: str
    headers: CIMultiDict[str]
    body: bytes


class ShadowMetrics:
    """Counters of verdicts; every series exists at 0 from the start, so rate() sees the first event."""

    def __init__(self, namespace: str, version: str, registry: CollectorRegistry) -> None:
        labels = ["namespace", "version", "outcome"]
        self.comparisons = Counter(
            "agent_shadow_comparisons",
            "Mirrored requests compared, legacy vs candidate, by outcome "
            "(match, mismatch, candidate_error, legacy_error, skipped, judge_error).",
            labels,
            registry=registry,
        )
        self.noise = Counter(
            "agent_shadow_noise_comparisons",
            "Sampled mirrored requests sent to legacy twice, legacy vs legacy, by outcome: the noise floor.",
            labels,
            registry=registry,
        )
        self.dropped = Counter(
            "agent_shadow_dropped",
            "Mirrored requests refused because max_in_flight comparisons were running.",
            ["namespace", "version"],
            registry=registry,
        )
        self._labels = (namespace, version)
        for outcome in Outcome:
            self.comparisons.labels(*self._labels, outcome.value)
            if outcome is not Outcome.CANDIDATE_ERROR:  # the noise pair has no candidate
                self.noise.labels(*self._labels, outcome.value)
        self.dropped.labels(*self._labels)
        self.unreadable = Gauge(
            "agent_shadow_rollout_unreadable",
            "1 while the followed AgentRollout (--rollout) cannot be read; the last comparison applies.",
            ["namespace", "version"],
            registry=registry,
        )
        self.from_step = Gauge(
            "agent_shadow_step_comparison",
            "1 while the comparison is the current shadow step's `compare`, 0 while it is the flags'.",
            ["namespace", "version"],
            registry=registry,
        )
        self.unreadable.labels(*self._labels)
        self.from_step.labels(*self._labels)

    def count(self, verdict: Verdict) -> None:
        self.comparisons.labels(*self._labels, verdict.outcome.value).inc()

    def count_noise(self, verdict: Verdict) -> None:
        # For the noise pair the "other" answer is legacy's second: its failure is a legacy error.
        outcome = Outcome.LEGACY_ERROR if verdict.outcome is Outcome.CANDIDATE_ERROR else verdict.outcome
        self.noise.labels(*self._labels, outcome.value).inc()

    def count_dropped(self) -> None:
        self.dropped.labels(*self._labels).inc()

    def set_readable(self, readable: bool) -> None:
        self.unreadable.labels(*self._labels).set(0 if readable else 1)

    def set_from_step(self, from_step: bool) -> None:
        self.from_step.labels(*self._labels).set(1 if from_step else 0)


class MismatchSample:
    """The last N mismatches, in memory only (opt-in: they hold requests and answers)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._entries: deque[dict[str, Any]] = deque(maxlen=capacity or 1)

    def add(self, mirrored: Mirrored, legacy: Answer, candidate: Answer, verdict: Verdict) -> None:
        if not self.capacity:
            return
        self._entries.append(
            {
                "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "method": mirrored.method,
                "path": mirrored.path_qs,
                "request": _cut(mirrored.body),
                "legacy": {"status": legacy.status, "body": _cut(legacy.body)},
                "candidate": {"status": candidate.status, "body": _cut(candidate.body)},
                "reason": verdict.reason,
            }
        )

    def entries(self) -> list[dict[str, Any]]:
        return list(self._entries) if self.capacity else []


def _cut(body: bytes) -> str:
    return body[:SAMPLE_BODY_BYTES].decode("utf-8", errors="replace")


class Comparator:
    def __init__(
        self, settings: Settings, session: aiohttp.ClientSession, registry: CollectorRegistry
    ) -> None:
        self.settings = settings
        self.metrics = ShadowMetrics(settings.namespace, settings.version, registry)
        self.sample = MismatchSample(settings.mismatch_sample)
        self._session = session
        self._rng = random.Random(settings.seed)
        self._in_flight = 0
        self._tasks: set[asyncio.Task[dict[str, Any]]] = set()
        self.default_rule = Rule(settings.comparison, settings.judge_url)
        self.rule = self.default_rule  # read once per mirrored request, when it arrives

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def follow(self, rollout: dict[str, Any] | None) -> None:
        """The followed rollout as it is now (None: absent): its shadow step's comparison, or the flags'."""
        rule = step_rule(rollout) or self.default_rule
        if rule != self.rule:
            log.info("comparison now: %s", rule.describe())
        self.rule = rule
        self.metrics.set_from_step(rule is not self.default_rule)

    async def handle_mirror(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        if self._in_flight >= self.settings.max_in_flight:
            self.metrics.count_dropped()
            return web.Response(status=503, text="comparator busy: mirrored request dropped\n")
        headers = CIMultiDict((k, v) for k, v in request.headers.items() if k.lower() not in _NOT_FORWARDED)
        mirrored = Mirrored(request.method, request.path_qs, headers, body)
        self._in_flight += 1  # counted here, not in the task: the bound holds before the task starts
        rule = self.rule  # the comparison when the request arrived, whatever changes while it runs
        if self.settings.answer_after_compare:
            return web.json_response(await self._process(mirrored, rule))
        task = asyncio.create_task(self._process(mirrored, rule))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return web.Response(status=202)

    async def drain(self) -> None:
        """Wait for the comparisons under way (shutdown, tests)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def _process(self, mirrored: Mirrored, rule: Rule) -> dict[str, Any]:
        try:
            noise = self.settings.noise_share > 0 and self._rng.random() < self.settings.noise_share
            targets = [self.settings.legacy_url, self.settings.candidate_url]
            if noise:
                targets.append(self.settings.legacy_url)
            answers = await asyncio.gather(*(self._call(url, mirrored) for url in targets))
            legacy, candidate = answers[0], answers[1]
            verdict = await self._verdict(mirrored, legacy, candidate, rule)
            self.metrics.count(verdict)
            if verdict.outcome is Outcome.MISMATCH:
                self.sample.add(mirrored, legacy, candidate, verdict)
            result: dict[str, Any] = {"outcome": verdict.outcome.value, "reason": verdict.reason}
            if noise:
                noise_verdict = await self._verdict(mirrored, legacy, answers[2], rule)
                self.metrics.count_noise(noise_verdict)
                result["noise"] = {"outcome": noise_verdict.outcome.value, "reason": noise_verdict.reason}
            return result
        except Exception:  # a bug here must not kill the service; the content stays out of the log
            log.exception("comparison failed")
            return {"outcome": "internal_error", "reason": "see the comparator's log"}
        finally:
            self._in_flight -= 1

    async def _verdict(self, mirrored: Mirrored, reference: Answer, other: Answer, rule: Rule) -> Verdict:
        verdict = compare(reference, other, rule.comparison)
        if verdict.outcome is not Outcome.MISMATCH or not rule.judge_url:
            return verdict
        status, body = None, b""
        with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError, OSError):
            async with self._session.post(
                rule.judge_url, json=judge_request(mirrored.body, reference, other)
            ) as resp:
                status, (body, _) = resp.status, await _read_capped(resp, self.settings.max_body_bytes)
        return judge_verdict(status, body)

    async def _call(self, base_url: str, mirrored: Mirrored) -> Answer:
        headers = CIMultiDict(mirrored.headers)
        headers[SHADOW_HEADER] = "1"
        url = base_url.rstrip("/") + mirrored.path_qs
        try:
            async with self._session.request(
                mirrored.method, url, headers=headers, data=mirrored.body, allow_redirects=False
            ) as resp:
                body, too_large = await _read_capped(resp, self.settings.max_body_bytes)
                return Answer(resp.status, body, too_large)
        except (TimeoutError, aiohttp.ClientError, OSError):
            return Answer(None)


async def _read_capped(resp: aiohttp.ClientResponse, limit: int) -> tuple[bytes, bool]:
    chunks: list[bytes] = []
    size = 0
    async for chunk in resp.content.iter_chunked(64 * 1024):
        chunks.append(chunk)
        size += len(chunk)
        if size > limit:
            return b"".join(chunks)[:limit], True
    return b"".join(chunks), False


def admin_app(comparator: Comparator, registry: CollectorRegistry) -> web.Application:
    async def metrics(_: web.Request) -> web.Response:
        return web.Response(body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"ok": True, "inFlight": comparator.in_flight})

    async def mismatches(_: web.Request) -> web.Response:
        if not comparator.sample.capacity:
            return web.json_response(
                {"error": "the mismatch sample is off (--mismatch-sample N)"}, status=404
            )
        return web.json_response(
            {"capacity": comparator.sample.capacity, "mismatches": comparator.sample.entries()}
        )

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/mismatches", mismatches)
    return app


@dataclass
class Running:
    """A started comparator: its bound ports, and how to stop it."""

    comparator: Comparator
    port: int
    admin_port: int
    _runners: Sequence[web.AppRunner]
    _session: aiohttp.ClientSession
    _follower: Follower | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    async def close(self) -> None:
        if self._follower is not None:
            self._follower.stop()
        for runner in self._runners:
            await runner.cleanup()
        await self.comparator.drain()
        await self._session.close()


async def start(settings: Settings, registry: CollectorRegistry | None = None) -> Running:
    """Serve the mirror and admin ports (0 picks free ports, see Running)."""
    registry = registry or CollectorRegistry(auto_describe=True)
    connector = aiohttp.TCPConnector(limit=settings.max_in_flight * 3 + 8)
    session = aiohttp.ClientSession(
        connector=connector,
        timeout=aiohttp.ClientTimeout(total=settings.timeout_s),
        auto_decompress=False,  # compare what the agents sent, and skip the work
    )
    comparator = Comparator(settings, session, registry)
    mirror = web.Application(client_max_size=settings.max_body_bytes)
    mirror.router.add_route("*", "/{tail:.*}", comparator.handle_mirror)
    runners = []
    ports = []
    for app, port in ((mirror, settings.port), (admin_app(comparator, registry), settings.admin_port)):
        runner = web.AppRunner(app, access_log=None)  # no access log: paths may carry personal data
        await runner.setup()
        site = web.TCPSite(runner, settings.host, port)
        await site.start()
        runners.append(runner)
        ports.append(int(runner.addresses[-1][1]))
    follower = None
    if settings.rollout is not None:
        follower = _follower(settings, comparator)
        follower.start()
    return Running(comparator, ports[0], ports[1], runners, session, follower)


def _follower(settings: Settings, comparator: Comparator) -> Follower:
    assert settings.rollout is not None
    namespace, name = parse_rollout_ref(settings.rollout)
    client = ListWatchClient.from_environment(2, settings.kubeconfig, identity="comparator")
    log.info(
        "following rollout %s/%s; until a shadow step says otherwise: %s",
        namespace,
        name,
        comparator.default_rule.describe(),
    )
    return Follower(client, namespace, name, comparator.follow, comparator.metrics.set_readable)


def parse_args(argv: Sequence[str] | None = None) -> Settings:
    parser = argparse.ArgumentParser(
        prog="agent-rollout-comparator",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--legacy-url", required=True, help="base URL of legacy, e.g. http://support-legacy")
    parser.add_argument("--candidate-url", required=True, help="base URL of the candidate")
    parser.add_argument(
        "--namespace",
        default=os.environ.get("POD_NAMESPACE", "default"),
        help="namespace label of the metrics",
    )
    parser.add_argument(
        "--version", default="candidate", help="version label of the metrics (the candidate's)"
    )
    parser.add_argument("--mode", choices=[m.value for m in Mode], default=Mode.EXACT.value)
    parser.add_argument(
        "--field", action="append", default=[], help="json/text: a JSON pointer or top-level key (repeat)"
    )
    parser.add_argument("--threshold", type=float, default=0.8, help="text: minimum similarity (0..1)")
    parser.add_argument(
        "--judge-url", help="POST {request, legacy, candidate} -> {agree: bool}, for mismatches"
    )
    parser.add_argument("--noise-share", type=float, default=0.0, help="share sent to legacy twice (0..1)")
    parser.add_argument("--mismatch-sample", type=int, default=0, help="keep the last N mismatches (0: none)")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per agent call")
    parser.add_argument("--max-in-flight", type=int, default=256)
    parser.add_argument("--max-body-bytes", type=int, default=1 << 20)
    parser.add_argument("--answer-after-compare", action="store_true", help="answer with the verdict (debug)")
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=8080, help="mirror port")
    parser.add_argument("--admin-port", type=int, default=9090, help="/metrics, /healthz, /mismatches")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--port-file", help='write {"port": .., "adminPort": ..} here once listening')
    parser.add_argument(
        "--rollout",
        help="NAMESPACE/NAME of the AgentRollout to follow: its shadow step's `compare` overrides the "
        "flags' comparison during the step (needs get/list/watch on it)",
    )
    parser.add_argument("--kubeconfig", help="with --rollout outside a cluster (default: $KUBECONFIG)")
    args = parser.parse_args(argv)
    try:
        return Settings(
            legacy_url=args.legacy_url,
            candidate_url=args.candidate_url,
            namespace=args.namespace,
            version=args.version,
            comparison=Comparison(Mode(args.mode), tuple(args.field), args.threshold),
            judge_url=args.judge_url,
            noise_share=args.noise_share,
            mismatch_sample=args.mismatch_sample,
            timeout_s=args.timeout,
            max_in_flight=args.max_in_flight,
            max_body_bytes=args.max_body_bytes,
            answer_after_compare=args.answer_after_compare,
            host=args.host,
            port=args.port,
            admin_port=args.admin_port,
            seed=args.seed,
            port_file=args.port_file,
            rollout=args.rollout,
            kubeconfig=args.kubeconfig,
        )
    except ValueError as e:
        parser.error(str(e))


async def serve(settings: Settings) -> None:
    running = await start(settings)
    log.info("comparator: mirror port %d, admin port %d", running.port, running.admin_port)
    if settings.port_file:  # atomically, after bind: whoever started us learns the ports without a race
        tmp = f"{settings.port_file}.tmp"
        with open(tmp, "w") as f:
            json.dump({"port": running.port, "adminPort": running.admin_port}, f)
        os.replace(tmp, settings.port_file)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):  # the pod's SIGTERM: stop listening, finish what runs
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await running.close()


def main(argv: Sequence[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    settings = parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(settings))
