"""Notifications end to end: the real operator posts each decision to webhook sinks named in
spec.notifications, with URLs read from a Secret in the rollout's namespace (the chart's RBAC,
notifications.secretsInWatchedNamespaces).

- A local HTTP sink (a real server in this process) hears each notified decision exactly once, in the
  order of status.history, for a rollout that is promoted and for one that rolls back; a Slack and a
  Teams sink with an event filter get only the events they asked for, in their own body shapes.
- A sink that refuses connections and one that accepts and never answers delay nothing: the rollout
  walks its steps on the analysis interval and is promoted while the hung sink is still retrying its
  first notification; both failures show as a NotificationFailed Event and in
  agent_rollout_notification_failures_total.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from itertools import pairwise
from typing import Any

import pytest

from agent_rollout import api, notify
from e2e.cluster import ClusterState
from e2e.cluster.ports import free_ports
from e2e.rollout.conftest import OperatorEndpoints, wait_for_rbac
from e2e.rollout.scene import Scene, wait_until

ERROR_GATE = {"name": "error-rate", "template": "errorRate", "max": 0.05, "window": "30s"}
SECRET = "webhooks"
FAILURES = "agent_rollout_notification_failures_total"


class Sink:
    """A webhook receiver: records every POST (path, JSON body, Idempotency-Key) and answers 200."""

    def __init__(self) -> None:
        self.received: list[tuple[str, dict[str, Any], str]] = []
        self._lock = threading.Lock()
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with sink._lock:
                    sink.received.append((self.path, body, self.headers.get("Idempotency-Key", "")))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}{path}"

    def bodies(self, path: str) -> list[dict[str, Any]]:
        with self._lock:
            return [body for p, body, _ in self.received if p == path]

    def keys(self, path: str) -> list[str]:
        with self._lock:
            return [key for p, _, key in self.received if p == path]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def sink() -> Iterator[Sink]:
    server = Sink()
    yield server
    server.close()


@pytest.fixture(scope="module")
def secrets_readable(cluster: ClusterState, operator_kubeconfig: Any) -> None:
    wait_for_rbac(cluster, operator_kubeconfig, ("get", "secrets", "--all-namespaces"))


def create_secret(s: Scene, urls: dict[str, str]) -> None:
    body: Any = {"metadata": {"name": SECRET}, "stringData": urls}
    s.kube.core.create_namespaced_secret(s.namespace, body)


def sink_spec(name: str, key: str, type_: str = "webhook", events: list[str] | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "name": name,
        "type": type_,
        "urlFrom": {"secretKeyRef": {"name": SECRET, "key": key}},
    }
    if events is not None:
        spec["events"] = events
    return spec


def expected(history: list[dict[str, Any]], final_phase: str) -> list[tuple[str, str, int]]:
    """(event, reason, step) of every decision of the history the notifier's table sends, in order."""
    found = []
    for i, raw in enumerate(history):
        decision = api.Decision.model_validate(raw)
        ended = api.Phase(final_phase) if i == len(history) - 1 else None
        event = notify.event_of(decision, ended)
        if event is not None:
            found.append((event.value, decision.reason, decision.step))
    return found


def received(sink: Sink, path: str) -> list[tuple[str, str, int]]:
    return [(b["event"], b["decision"]["reason"], b["decision"]["step"]) for b in sink.bodies(path)]


def warnings(s: Scene, name: str, reason: str) -> list[str]:
    events = s.kube.core.list_namespaced_event(
        s.namespace, field_selector=f"involvedObject.name={name},involvedObject.kind={api.KIND}"
    )
    return [e.message for e in events.items if e.reason == reason and e.type == "Warning"]


def counter(endpoints: OperatorEndpoints, name: str, **labels: str) -> float:
    return endpoints.sample(name, **labels) or 0.0


def test_a_local_sink_hears_every_decision_of_a_promotion_once_in_order(
    scene: Callable[..., Scene], sink: Sink, secrets_readable: None
) -> None:
    s = scene()
    create_secret(s, {"all": sink.url("/all"), "slack": sink.url("/slack")})
    manifest = s.rollout_manifest(
        "notified",
        steps=[{"setWeight": 10}, {"setWeight": 50}, {"setWeight": 100}],
        minSamples=10,
        gates=[ERROR_GATE],
    )
    manifest["spec"]["notifications"] = [
        sink_spec("all", "all"),
        sink_spec("chat", "slack", "slack", ["Promoted"]),
    ]
    s.apply(manifest)

    status = s.wait_for_phase("notified", "Promoted", timeout_s=120)

    want = expected(status["history"], "Promoted")
    # The last step's completion is the promotion itself.
    assert [e for e, _, _ in want] == ["StepCompleted", "StepCompleted", "Promoted"], want
    wait_until("every notification at the sink", lambda: len(sink.bodies("/all")) >= len(want), timeout_s=30)
    time.sleep(3)  # a few more reconciles of the promoted rollout: nothing is sent twice
    assert received(sink, "/all") == want
    keys = sink.keys("/all")
    assert len(set(keys)) == len(keys) and keys == [b["id"] for b in sink.bodies("/all")]
    uid = s.rollout("notified")["metadata"]["uid"]
    assert all(
        b["rollout"] == {"namespace": s.namespace, "name": "notified", "uid": uid}
        for b in sink.bodies("/all")
    )
    (slack,) = sink.bodies("/slack")  # the filter: Promoted only, as a Slack message
    assert slack["text"].startswith(f"AgentRollout {s.namespace}/notified: promoted")
    assert slack["blocks"][0]["type"] == "header"
    assert warnings(s, "notified", "NotificationFailed") == []


def test_a_local_sink_hears_a_rollback_with_its_evidence_once(
    scene: Callable[..., Scene], sink: Sink, secrets_readable: None
) -> None:
    s = scene(candidate={"error_ratio": 0.2})
    create_secret(s, {"all": sink.url("/all"), "teams": sink.url("/teams")})
    manifest = s.rollout_manifest(
        "rejected",
        steps=[{"setWeight": 20}, {"pause": {"duration": "5m"}}, {"setWeight": 100}],
        minSamples=10,
        gates=[ERROR_GATE],
    )
    manifest["spec"]["notifications"] = [
        sink_spec("all", "all"),
        sink_spec("teams", "teams", "teams", ["RolledBack"]),
    ]
    s.apply(manifest)

    status = s.wait_for_phase("rejected", "RolledBack", timeout_s=120)

    want = expected(status["history"], "RolledBack")
    assert want[-1][:2] == ("RolledBack", "GateFailed"), want
    wait_until("every notification at the sink", lambda: len(sink.bodies("/all")) >= len(want), timeout_s=30)
    time.sleep(3)
    assert received(sink, "/all") == want
    evidence = sink.bodies("/all")[-1]["decision"]["evidence"][0]
    assert evidence["name"] == "error-rate" and evidence["verdict"] == "Fail" and evidence["value"] > 0.05
    (teams,) = sink.bodies("/teams")
    card = teams["attachments"][0]["content"]
    assert card["type"] == "AdaptiveCard" and "rolled back to legacy" in card["body"][0]["text"]


def test_a_sink_that_is_down_or_hangs_delays_nothing_and_shows_as_an_event_and_a_metric(
    scene: Callable[..., Scene], sink: Sink, secrets_readable: None, operator_endpoints: OperatorEndpoints
) -> None:
    (refused_port,) = free_ports(1)  # nothing listens there: connection refused
    hung = socket.socket()  # accepts connections (the kernel's backlog) and never answers
    hung.bind(("127.0.0.1", 0))
    hung.listen(64)
    try:
        s = scene()
        create_secret(
            s,
            {
                "good": sink.url("/good"),
                "down": f"http://127.0.0.1:{refused_port}/hook",
                "hung": f"http://127.0.0.1:{hung.getsockname()[1]}/hook",
            },
        )
        manifest = s.rollout_manifest(
            "unheard",
            steps=[{"setWeight": 10}, {"setWeight": 50}, {"setWeight": 100}],
            minSamples=10,
            gates=[ERROR_GATE],
        )
        manifest["spec"]["notifications"] = [
            sink_spec("down", "down"),
            sink_spec("hung", "hung"),
            sink_spec("good", "good"),
        ]
        s.apply(manifest)
        hung_sink = f"{s.namespace}/hung"

        status = s.wait_for_phase("unheard", "Promoted", timeout_s=120)
        # Promoted while the hung sink still retries its first notification (5 attempts of 20 s, the
        # session operator's timeout, with backoff: 115 s before it gives one up): its queue never held
        # the rollout back.
        assert counter(operator_endpoints, FAILURES, sink=hung_sink, reason="abandoned") == 0

        times = [datetime.fromisoformat(d["time"].replace("Z", "+00:00")) for d in status["history"]]
        gaps = [(b - a).total_seconds() for a, b in pairwise(times)]
        print(f"\nseconds between decisions with a refusing and a hung sink: {gaps} (interval 5s)")
        assert max(gaps) < 20, gaps  # 2 intervals; one attempt on the reconcile path would add 20 s

        want = expected(status["history"], "Promoted")
        wait_until("the good sink to hear everything", lambda: len(sink.bodies("/good")) >= len(want), 30)
        assert received(sink, "/good") == want  # a broken sink next to it changes nothing for it

        down = wait_until(
            "the refused sink's failures",
            lambda: counter(operator_endpoints, FAILURES, sink=f"{s.namespace}/down", reason="connection"),
            timeout_s=30,
        )
        assert down >= 1
        wait_until(
            "the hung sink's timeouts",
            lambda: counter(operator_endpoints, FAILURES, sink=hung_sink, reason="timeout"),
            timeout_s=30,
        )
        messages = wait_until(
            "a NotificationFailed Event for each broken sink",
            lambda: (
                (m := warnings(s, "unheard", "NotificationFailed"))
                and any("/down" in x for x in m)
                and any("/hung" in x for x in m)
                and m
            ),
            timeout_s=30,
        )
        # One per failure streak of a sink, not one per attempt; the URL (a credential) is never shown.
        assert len(messages) == 2, messages
        assert any("(connection)" in m for m in messages) and any("(timeout)" in m for m in messages)
        assert not any("/hook" in m for m in messages), messages
    finally:
        hung.close()
