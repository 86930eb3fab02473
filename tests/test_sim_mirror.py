"""The harness's traffic driver honours Gateway API RequestMirror filters as a gateway does (e2e/sim)."""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from e2e.sim.route import Mirror, mirrors_from_route, weights_from_route
from e2e.sim.traffic import TrafficDriver

HEADER_FILTER = {
    "type": "RequestHeaderModifier",
    "requestHeaderModifier": {"set": [{"name": "X-Tenant", "value": "acme"}]},
}


def mirror_filter(service: str, **share: Any) -> dict[str, Any]:
    return {"type": "RequestMirror", "requestMirror": {"backendRef": {"name": service, "port": 80}, **share}}


def route(rule_filters: list[dict[str, Any]], backend_refs: list[dict[str, Any]]) -> dict[str, Any]:
    return {"spec": {"rules": [{"filters": rule_filters, "backendRefs": backend_refs}]}}


def test_mirror_filters_are_read_with_percent_fraction_and_default_share_next_to_other_filters() -> None:
    r = route(
        [
            HEADER_FILTER,
            mirror_filter("comparator", percent=25),
            mirror_filter("audit", fraction={"numerator": 1}),
            mirror_filter("replay", fraction={"numerator": 3, "denominator": 7}),
            mirror_filter("everything"),
            {"type": "RequestMirror", "requestMirror": {"backendRef": {"name": "bucket", "kind": "Bucket"}}},
        ],
        [
            {"name": "legacy", "port": 80, "weight": 90},
            {
                "name": "candidate",
                "port": 80,
                "weight": 10,
                "filters": [mirror_filter("cand-log", percent=50)],
            },
        ],
    )
    assert mirrors_from_route(r) == (
        Mirror("comparator", 25, 100),
        Mirror("audit", 1, 100),
        Mirror("replay", 3, 7),
        Mirror("everything", 1, 1),
        Mirror("cand-log", 50, 100, backend="candidate"),
    )
    assert weights_from_route(r) == {"legacy": 90, "candidate": 10}  # filters change no weight
    assert mirrors_from_route(route([HEADER_FILTER], [{"name": "legacy", "port": 80}])) == ()
    assert mirrors_from_route(None) == () and mirrors_from_route({"spec": {"rules": []}}) == ()


class Agent:
    """A loopback HTTP server that records the bodies it got and answers `status`."""

    def __init__(self, status: int = 200) -> None:
        self.bodies: list[bytes] = []
        lock = threading.Lock()
        agent = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # or each answer waits for the client's delayed ACK

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with lock:
                    agent.bodies.append(body)
                self.send_response(status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def agents() -> Iterator[dict[str, Agent]]:
    # The comparator stand-in answers 503: a mirror's answer must never reach the live traffic.
    started = {"legacy": Agent(), "candidate": Agent(), "comparator": Agent(status=503)}
    yield started
    for agent in started.values():
        agent.close()


def within_5_sigma(count: int, n: int, p: float) -> bool:
    return abs(count - n * p) <= 5 * math.sqrt(n * p * (1 - p))


def test_the_driver_mirrors_the_filters_share_to_the_mirror_service_and_ignores_its_answers(
    agents: dict[str, Agent],
) -> None:
    driver = TrafficDriver(None, "ns", "support", {name: a.url for name, a in agents.items()}, seed=7)
    try:
        driver.observe(
            route(
                [HEADER_FILTER, mirror_filter("comparator", percent=30)],
                [
                    {"name": "legacy", "port": 80, "weight": 100},
                    # A backendRef's own mirror applies only to requests routed to it: here none.
                    {"name": "candidate", "port": 80, "weight": 0, "filters": [mirror_filter("comparator")]},
                ],
            )
        )
        records = driver.run(max_requests=1000, duration_s=60)
        mirrored = driver.wait_for_mirrors_sent(timeout_s=10)
        assert driver.mirrors_shed == 0
        n = len(agents["comparator"].bodies)
        assert within_5_sigma(n, 1000, 0.3), n
        assert len(mirrored) == n and {r.status for r in mirrored} == {503}
        assert {r.routed_to for r in mirrored} == {"legacy"}
        assert {(r.service, r.status) for r in records} == {("legacy", 200)}
        assert len(agents["legacy"].bodies) == 1000 and agents["candidate"].bodies == []
        # Every copy is the very request legacy got.
        assert set(agents["comparator"].bodies) <= set(agents["legacy"].bodies)
        assert json.loads(agents["comparator"].bodies[0])["service"] == "legacy"

        # The operator removes the mirror (and only it): no copy is sent any more.
        driver.observe(route([HEADER_FILTER], [{"name": "legacy", "port": 80, "weight": 100}]))
        driver.wait_for_mirrors([], timeout_s=1)
        driver.run(max_requests=300, duration_s=60)
        assert len(agents["comparator"].bodies) == n and len(agents["legacy"].bodies) == 1300
    finally:
        driver.close()


def test_a_backend_refs_mirror_copies_only_the_requests_routed_to_that_backend(
    agents: dict[str, Agent],
) -> None:
    driver = TrafficDriver(None, "ns", "support", {name: a.url for name, a in agents.items()}, seed=3)
    try:
        driver.observe(
            route(
                [HEADER_FILTER],
                [
                    {"name": "legacy", "port": 80, "weight": 50},
                    {
                        "name": "candidate",
                        "port": 80,
                        "weight": 50,
                        "filters": [mirror_filter("comparator", fraction={"numerator": 1, "denominator": 1})],
                    },
                ],
            )
        )
        driver.run(max_requests=400, duration_s=60)
        to_candidate = len(agents["candidate"].bodies)
        mirrored = driver.wait_for_mirrors_sent(timeout_s=10)
        assert 0 < to_candidate < 400
        assert len(mirrored) == to_candidate and {r.routed_to for r in mirrored} == {"candidate"}
        assert sorted(agents["comparator"].bodies) == sorted(agents["candidate"].bodies)
    finally:
        driver.close()
