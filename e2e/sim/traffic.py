"""A bounded load driver that splits requests between agents by an HTTPRoute's backend weights.

It stands in for the Gateway data plane: the route on the real apiserver is the only input, followed
through a WATCH, so a weight change by the operator shows up in the traffic within milliseconds.
Each request picks a backend at random in proportion to the weights (as Envoy-based gateways do) and
is sent to the agent URL the harness mapped to that Service. Loops stop by themselves at a request
count or a time limit, whichever comes first, and talk to loopback only.
"""

from __future__ import annotations

import argparse
import bisect
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

from kubernetes import client

from e2e.cluster.kubeapi import new_api_client
from e2e.sim.route import RouteWatcher, RouteWeights

NO_URL = -1  # the route names a Service the harness has no agent for
CONNECTION_FAILED = 0


@dataclass(frozen=True)
class RequestRecord:
    sent_at: float  # time.monotonic() when the backend was chosen
    service: str
    status: int  # HTTP status, CONNECTION_FAILED or NO_URL
    generation: int  # RouteWeights.generation the choice was made with


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
        api_client: client.ApiClient,
        namespace: str,
        httproute: str,
        backends: Mapping[str, str],
        *,
        concurrency: int = 4,
        seed: int | None = None,
        path: str = "/invoke",
        request_timeout_s: float = 130.0,
    ) -> None:
        """backends maps a backend Service name to its agent URL (http://127.0.0.1:port)."""
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
        self._stop = threading.Event()
        self._workers: list[threading.Thread] = []
        self._watcher = RouteWatcher(api_client, namespace, httproute, self._on_route_change)
        self._watcher.start()

    # --- weights -----------------------------------------------------------------------------

    def _on_route_change(self, weights: dict[str, int], resource_version: str) -> None:
        with self._changed:
            self._current = RouteWeights(
                generation=self._current.generation + 1,
                weights=weights,
                observed_at=time.monotonic(),
                resource_version=resource_version,
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
        self._watcher.stop()

    def records(self, since_generation: int = 0) -> list[RequestRecord]:
        with self._lock:
            return [r for r in self._records if r.generation >= since_generation]

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
                status = self._send(conns, service, sent_at)
                with self._lock:
                    self._records.append(RequestRecord(sent_at, service, status, w.generation))
                if interval:
                    next_at += interval
                    self._stop.wait(max(0.0, next_at - time.monotonic()))
        finally:
            for conn in conns.values():
                conn.close()

    def _send(self, conns: dict[str, http.client.HTTPConnection], service: str, sent_at: float) -> int:
        url = self.backends.get(service)
        if url is None:
            return NO_URL
        netloc = urllib.parse.urlsplit(url).netloc
        conn = conns.get(netloc)
        if conn is None:
            conn = conns[netloc] = http.client.HTTPConnection(netloc, timeout=self._request_timeout_s)
        try:
            body = json.dumps({"input": f"request at {sent_at:.6f}", "service": service})
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
    finally:
        driver.close()
    print(
        json.dumps(
            {
                "requests": len(records),
                "shares": shares(records),
                "statuses": Counter(str(r.status) for r in records),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
