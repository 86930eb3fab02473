"""Alert-triggered rollback: the planner's rule on a firing alert, the receiver's book and its HTTP face."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from agent_rollout import alerts, metrics
from agent_rollout.api import Phase, Verdict
from agent_rollout.domain import FiringAlert, SetWeights
from agent_rollout.planner import plan
from tests.test_planner import T0, make_spec, observe, running, w

LATENCY = FiringAlert(
    name="AgentLatencyHigh",
    fingerprint="f1",
    starts_at="2026-03-01T11:59:00Z",
    summary="p95 latency 4.2 s",
    labels="agentrollout=triage, alertname=AgentLatencyHigh, namespace=prod",
)


def test_firing_alert_rolls_a_live_rollout_back_with_the_alert_as_evidence() -> None:
    p = plan(make_spec(), running(1, w(25)), observe(route=w(25), firing_alerts=(LATENCY,)), T0)
    assert (p.status.phase, p.status.weights) == (Phase.ROLLED_BACK, w(0))
    assert p.actions[0] == SetWeights(weights=w(0), reason="AlertFired")
    decision = p.status.history[-1]
    assert decision.reason == "AlertFired" and "alert AgentLatencyHigh fired" in decision.message
    (evidence,) = decision.evidence
    assert (evidence.name, evidence.verdict) == ("alert:AgentLatencyHigh", Verdict.FAIL)
    assert "agentrollout=triage" in evidence.query and evidence.message == "p95 latency 4.2 s"
    assert p.status.message.startswith("rolled back to legacy: alert AgentLatencyHigh fired")


def test_firing_alert_leaves_finished_and_pending_rollouts_alone() -> None:
    for status in (
        running(3, w(100), phase=Phase.PROMOTED),
        running(1, w(0), phase=Phase.ROLLED_BACK),
    ):
        route = status.weights
        p = plan(make_spec(), status, observe(route=route, firing_alerts=(LATENCY,)), T0)
        assert p.status.phase is status.phase and not [
            d for d in p.status.history if d.reason == "AlertFired"
        ]


def test_without_alerts_the_same_rollout_carries_on() -> None:
    p = plan(make_spec(), running(1, w(25)), observe(route=w(25)), T0)
    assert p.status.phase is Phase.PROGRESSING


def payload(status: str, fingerprint: str = "f1", **labels: str) -> dict[str, Any]:
    return {
        "version": "4",
        "status": status,
        "alerts": [
            {
                "status": status,
                "labels": {"alertname": "AgentLatencyHigh", **labels},
                "annotations": {"summary": "p95 latency 4.2 s"},
                "startsAt": "2026-03-01T11:59:00Z",
                "fingerprint": fingerprint,
            }
        ],
    }


def test_book_wakes_the_named_rollout_once_and_forgets_a_resolved_alert() -> None:
    book, woken = alerts.AlertBook(), []
    known = lambda key: key == ("prod", "triage")  # noqa: E731
    assert alerts.take(
        book, payload("firing", agentrollout="triage", namespace="prod"), known, woken.append
    ) == (1, 0)
    assert woken == [("prod", "triage")]
    (alert,) = book.firing("prod", "triage")
    assert alert.name == "AgentLatencyHigh" and alert.summary == "p95 latency 4.2 s"
    alerts.take(book, payload("firing", agentrollout="triage", namespace="prod"), known, woken.append)
    assert woken == [("prod", "triage")]  # a repeat of a firing alert wakes nothing
    alerts.take(book, payload("resolved", agentrollout="triage", namespace="prod"), known, woken.append)
    assert book.firing("prod", "triage") == ()


def test_alerts_naming_no_known_rollout_are_counted_and_ignored() -> None:
    book, woken = alerts.AlertBook(), []
    before = metrics.ALERTS_UNMATCHED._value.get()
    known = lambda key: False  # noqa: E731
    assert alerts.take(
        book, payload("firing", agentrollout="ghost", namespace="prod"), known, woken.append
    ) == (0, 1)
    assert alerts.take(book, payload("firing", severity="page"), known, woken.append) == (0, 1)
    assert woken == [] and len(book) == 0
    assert metrics.ALERTS_UNMATCHED._value.get() == before + 2


def test_book_is_bounded() -> None:
    book = alerts.AlertBook(max_rollouts=2, per_rollout=2)
    for i in range(5):
        book.fire(("ns", f"r{i}"), LATENCY)
        book.fire(("ns", "r4"), FiringAlert("A", f"x{i}", ""))
    assert len(book) <= 4 and book.firing("ns", "r0") == ()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_receiver_refuses_requests_without_the_token_and_takes_those_with_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("s3cret\n")
    book, woken, synced = alerts.AlertBook(), [], [False]
    app = alerts.receiver_app(book, token_file, lambda key: True, woken.append, ready=lambda: synced[0])
    port = free_port()
    body = payload("firing", agentrollout="triage", namespace="prod")
    good = {"Authorization": "Bearer s3cret"}

    async def scenario() -> list[int]:
        runner = await alerts.serve(app, "127.0.0.1", port)
        codes = []
        try:
            async with aiohttp.ClientSession() as http:
                url = f"http://127.0.0.1:{port}{alerts.PATH}"
                for headers in ({}, {"Authorization": "Bearer wrong"}, good, "synced", good):
                    if headers == "synced":
                        synced[0] = True  # the controller has its first lists now
                        continue
                    async with http.post(url, json=body, headers=headers) as resp:
                        codes.append(resp.status)
        finally:
            await runner.cleanup()
        return codes

    # Before the first lists: 503, so Alertmanager retries instead of the alert being lost.
    assert asyncio.run(scenario()) == [401, 401, 503, 200]
    assert woken == [("prod", "triage")]
    refusals = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert len(refusals) == 2 and "no bearer token" in refusals[0]
