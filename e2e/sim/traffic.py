"""A bounded load driver that splits requests between agents by an HTTPRoute's backend weights.

It stands in for the Gateway data plane: the route on the real apiserver is the only input, followed
through a WATCH, so a weight change by the operator shows up in the traffic within milliseconds.
Each request picks a backend at random in proportion to the weights (as Envoy-based gateways do) and
is sent to the agent URL the harness mapped to that Service. Loops stop by themselves at a request
count or a time limit, whichever comes first, and talk to loopback only.

RequestMirror filters are honoured as a gateway does: a filter of the rule mirrors its share
(percent, or fraction numerator/denominator; all requests when neither is set) of every request,
a filter of a backendRef only of the requests routed to that backend. The copy (same method, path,
headers and body) goes to the URL mapped to the mirror's Service, sent in the background at the same
time as the request; its answer is recorded apart (mirror_records) and never affects the request.
Unlike a gateway, which sheds copies a mirror cannot keep up with, the driver waits (up to
MIRROR_WAIT_S) for one of its MIRROR_BACKLOG_PER_WORKER slots per worker, so the mirrored share is
exact when the driver sends faster than the mirror answers; only a mirror stuck that long is shed.
"""

from __future__ import annotations

import argparse
import bisect
import concurrent.futures
import http.client
import json
import random
import threading
import time
import urllib.parse
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubernetes import client

from e2e.cluster.kubeapi import new_api_client
from e2e.sim.route import Mirror, RouteWatcher, RouteWeights, mirrors_from_route, weights_from_route

NO_URL = -1  # the route names a Service the harness has no agent for
CONNECTION_FAILED = 0
MIRROR_BACKLOG_PER_WORKER = 16  # mirrored copies under way per worker before the worker waits
MIRROR_WAIT_S = 2.0  # how long a worker waits for a slot before it sheds the copy


@dataclass(frozen=True)
class RequestRecord:
    sent_at: float  # time.monotonic() when the backend was chosen
    service: str
    status: int  # HTTP status, CONNECTION_FAILED or NO_URL
    generation: int  # RouteWeights.generation the choice was made with


@dataclass(frozen=True)
class MirrorRecord:
    sent_at: float  # time.monotonic() of the request it copies
    service: str  # the mirror's Service
    status: int  # HTTP status of the ignored answer, CONNECTION_FAILED or NO_URL
    generation: int
    routed_to: str  # the backend the live request went to


def shares(records: Iterable[RequestRecord]) -> dict[str, float]:
    counts = Counter(r.service for r in records)
    total = sum(counts.values())
    return {service: n / total for service, n in counts.items()} if total else {}


class _Budget:
    def __init__(self, max_requests: int) -> None:
        self._left = max_requests
        self._lock = threading.Lock()

    def take(self) -> bool:
        with self._lock:
            if self._left <= 0:
                return False
            self._left -= 1
            return True


class TrafficDriver:
    def __init__(
        self,
        api_client: client.ApiClient | None,
        namespace: str,
        httproute: str,
        backends: Mapping[str, str],
        *,
        concurrency: int = 4,
        seed: int | None = None,
        path: str = "/invoke",
        request_timeout_s: float = 130.0,
    ) -> None:
        """backends maps a backend Service name to its agent URL (http://127.0.0.1:port).

        api_client None: no watch; the route is given by hand with observe() (tests without an apiserver).
        """
        for url in backends.values():
            host = urllib.parse.urlsplit(url).hostname
            if host not in ("127.0.0.1", "localhost"):
                raise ValueError(f"traffic driver only talks to loopback, not {url}")
        self.namespace = namespace
        self.httproute = httproute
        self.backends = dict(backends)
        self.concurrency = concurrency
        self._seed = seed
        self._path = path
        self._request_timeout_s = request_timeout_s
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._current = RouteWeights(generation=0, weights={}, observed_at=time.monotonic())
        self._history: list[RouteWeights] = []
        self._records: list[RequestRecord] = []
        self._mirror_records: list[MirrorRecord] = []
        self._mirrors_shed = 0
        self._mirrors_pending = 0
        self._stop = threading.Event()
        self._workers: list[threading.Thread] = []
        # Mirrored copies are sent by their own threads, so a slow mirror never delays live requests.
        self._mirror_pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=max(2, concurrency), thread_name_prefix="mirror"
        )
        self._mirror_slots = threading.BoundedSemaphore(MIRROR_BACKLOG_PER_WORKER * max(2, concurrency))
        self._mirror_conns = threading.local()
        self._watcher: RouteWatcher | None = None
        if api_client is not None:
            self._watcher = RouteWatcher(api_client, namespace, httproute, self._on_route_change)
            self._watcher.start()

    # --- weights and mirrors -----------------------------------------------------------------

    def observe(self, route: Mapping[str, Any] | None, resource_version: str = "") -> None:
        """Route by this HTTPRoute object from now on, as if the watch had delivered it."""
        self._on_route_change(weights_from_route(route), mirrors_from_route(route), resource_version)

    def _on_route_change(
        self, weights: dict[str, int], mirrors: tuple[Mirror, ...], resource_version: str
    ) -> None:
        with self._changed:
            self._current = RouteWeights(
                generation=self._current.generation + 1,
                weights=weights,
                observed_at=time.monotonic(),
                resource_version=resource_version,
                mirrors=mirrors,
            )
            self._history.append(self._current)
            self._changed.notify_all()

    @property
    def weights(self) -> RouteWeights:
        return self._current

    @property
    def weight_history(self) -> list[RouteWeights]:
        with self._lock:
            return list(self._history)

    def wait_for_weights(
        self, expected: Mapping[str, int] | None = None, timeout_s: float = 10.0
    ) -> RouteWeights:
        """Until the driver routes by `expected` (or by any weights with a non-zero total when None)."""

        def matches() -> bool:
            w = self._current
            return w.total > 0 if expected is None else dict(w.weights) == dict(expected)

        with self._changed:
            if not self._changed.wait_for(matches, timeout_s):
                raise TimeoutError(
                    f"httproute {self.namespace}/{self.httproute}: weights {dict(self._current.weights)} "
                    f"after {timeout_s}s, expected {expected}"
                )
            return self._current

    def wait_for_mirrors(self, services: Iterable[str], timeout_s: float = 10.0) -> RouteWeights:
        """Until the route's mirrors go to exactly these Services (none: until no mirror is left)."""
        expected = sorted(services)

        def matches() -> bool:
            return sorted(m.service for m in self._current.mirrors) == expected

        with self._changed:
            if not self._changed.wait_for(matches, timeout_s):
                raise TimeoutError(
                    f"httproute {self.namespace}/{self.httproute}: mirrors {self._current.mirrors} "
                    f"after {timeout_s}s, expected mirrors to {expected}"
                )
            return self._current

    # --- requests ----------------------------------------------------------------------------

    def start(
        self, *, max_requests: int = 10_000, duration_s: float = 60.0, rps: float | None = None
    ) -> None:
        """Send requests in the background until max_requests were sent, duration_s passed, or stop().

        rps caps the total request rate (None: as fast as the agents answer).
        """
        if self.running:
            raise RuntimeError("traffic driver is already running")
        self._stop.clear()
        budget = _Budget(max_requests)
        deadline = time.monotonic() + duration_s
        self._workers = [
            threading.Thread(
                target=self._work, args=(i, budget, deadline, rps), name=f"traffic-{i}", daemon=True
            )
            for i in range(self.concurrency)
        ]
        for t in self._workers:
            t.start()

    def run(
        self, *, max_requests: int = 10_000, duration_s: float = 60.0, rps: float | None = None
    ) -> list[RequestRecord]:
        """Blocking start(): returns the records of this run only."""
        with self._lock:
            before = len(self._records)
        self.start(max_requests=max_requests, duration_s=duration_s, rps=rps)
        self.join()
        with self._lock:
            return self._records[before:]

    @property
    def running(self) -> bool:
        return any(t.is_alive() for t in self._workers)

    def join(self, timeout_s: float | None = None) -> bool:
        end = None if timeout_s is None else time.monotonic() + timeout_s
        for t in self._workers:
            t.join(None if end is None else max(0.0, end - time.monotonic()))
        return not self.running

    def stop(self) -> None:
        self._stop.set()
        self.join(self._request_timeout_s)

    def close(self) -> None:
        self.stop()
        self._mirror_pool.shutdown(wait=True, cancel_futures=True)
        if self._watcher is not None:
            self._watcher.stop()

    def records(self, since_generation: int = 0) -> list[RequestRecord]:
        with self._lock:
            return [r for r in self._records if r.generation >= since_generation]

    def mirror_records(self, since_generation: int = 0) -> list[MirrorRecord]:
        """The mirrored copies whose answers came back (or failed) so far."""
        with self._lock:
            return [r for r in self._mirror_records if r.generation >= since_generation]

    @property
    def mirrors_shed(self) -> int:
        """Copies not sent: every slot stayed taken for MIRROR_WAIT_S (a mirror stuck or far too slow)."""
        with self._lock:
            return self._mirrors_shed

    def wait_for_mirrors_sent(self, timeout_s: float = 10.0) -> list[MirrorRecord]:
        """Until no mirrored copy is under way (copies finish after their requests); all mirror records."""
        with self._changed:
            if not self._changed.wait_for(lambda: self._mirrors_pending == 0, timeout_s):
                raise TimeoutError(
                    f"{self._mirrors_pending} mirrored copies still under way after {timeout_s}s"
                )
            return list(self._mirror_records)

    def first_request_with(self, generation: int) -> RequestRecord | None:
        """The first request routed by weights of at least this generation (how fast a change took)."""
        with self._lock:
            return min(
                (r for r in self._records if r.generation >= generation),
                key=lambda r: r.sent_at,
                default=None,
            )

    def _work(self, index: int, budget: _Budget, deadline: float, rps: float | None) -> None:
        rng = random.Random(None if self._seed is None else self._seed * 1000 + index)
        conns: dict[str, http.client.HTTPConnection] = {}
        interval = self.concurrency / rps if rps else 0.0
        next_at = time.monotonic()
        try:
            while not self._stop.is_set() and time.monotonic() < deadline:
                w = self._current
                if w.total <= 0:
                    self._stop.wait(0.02)  # no route yet, or all weights 0: nothing to send
                    continue
                if not budget.take():
                    return
                sent_at = time.monotonic()
                service = w.services[bisect.bisect_right(w.cumulative, rng.randrange(w.total))]
                body = json.dumps({"input": f"request at {sent_at:.6f}", "service": service})
                for mirror in w.mirrors:
                    # One draw per filter, as each filter samples on its own.
                    if mirror.applies_to(service) and rng.randrange(mirror.denominator) < mirror.numerator:
                        self._mirror(mirror.service, body, sent_at, w.generation, service)
                status = self._send(conns, service, body)
                with self._lock:
                    self._records.append(RequestRecord(sent_at, service, status, w.generation))
                if interval:
                    next_at += interval
                    self._stop.wait(max(0.0, next_at - time.monotonic()))
        finally:
            for conn in conns.values():
                conn.close()

    def _mirror(self, service: str, body: str, sent_at: float, generation: int, routed_to: str) -> None:
        if not self._mirror_slots.acquire(timeout=MIRROR_WAIT_S):
            with self._lock:
                self._mirrors_shed += 1
            return

        with self._lock:
            self._mirrors_pending += 1

        def send() -> None:
            status = CONNECTION_FAILED
            try:
                conns: dict[str, http.client.HTTPConnection] | None
                conns = getattr(self._mirror_conns, "conns", None)
                if conns is None:  # one keep-alive connection per mirror thread and agent
                    conns = self._mirror_conns.conns = {}
                status = self._send(conns, service, body)
            finally:
                with self._changed:
                    self._mirror_records.append(MirrorRecord(sent_at, service, status, generation, routed_to))
                    self._mirrors_pending -= 1
                    self._changed.notify_all()
                self._mirror_slots.release()

        try:
            self._mirror_pool.submit(send)
        except RuntimeError:  # the driver is closing
            with self._changed:
                self._mirrors_pending -= 1
                self._changed.notify_all()
            self._mirror_slots.release()

    def _send(self, conns: dict[str, http.client.HTTPConnection], service: str, body: str) -> int:
        url = self.backends.get(service)
        if url is None:
            return NO_URL
        netloc = urllib.parse.urlsplit(url).netloc
        conn = conns.get(netloc)
        if conn is None:
            conn = conns[netloc] = http.client.HTTPConnection(netloc, timeout=self._request_timeout_s)
        try:
            conn.request("POST", self._path, body=body, headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            resp.read()
            return resp.status
        except (OSError, http.client.HTTPException):
            conn.close()
            del conns[netloc]
            return CONNECTION_FAILED


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--kubeconfig", required=True)
    parser.add_argument("--namespace", required=True)
    parser.add_argument("--httproute", required=True)
    parser.add_argument("--backend", action="append", required=True, metavar="SERVICE=URL")
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--duration", type=float, default=60.0, help="seconds")
    parser.add_argument("--rps", type=float, default=None)
    parser.add_argument("--concurrency", type=int, default=4)
    args = parser.parse_args()
    backends = dict(b.split("=", 1) for b in args.backend)
    api = new_api_client(Path(args.kubeconfig))
    driver = TrafficDriver(api, args.namespace, args.httproute, backends, concurrency=args.concurrency)
    try:
        driver.wait_for_weights(timeout_s=10)
        records = driver.run(max_requests=args.requests, duration_s=args.duration, rps=args.rps)
        mirrored = driver.mirror_records()
    finally:
        driver.close()
    print(
        json.dumps(
            {
                "requests": len(records),
                "shares": shares(records),
                "statuses": Counter(str(r.status) for r in records),
                "mirrored": Counter(r.service for r in mirrored),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
