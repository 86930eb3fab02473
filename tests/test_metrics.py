"""The operator's metrics: what a scrape shows, computed from the store at scrape time."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from agent_rollout import api, metrics
from agent_rollout.controller import StoredRollout
from agent_rollout.reasons import ROLLBACK_REASONS


class FakeStore:
    def __init__(self, rollouts: dict[tuple[str, str], StoredRollout]) -> None:
        self.rollouts = rollouts

    def gauges(self) -> Iterable[tuple[tuple[str, str], metrics.RolloutGauge]]:
        return ((k, r.gauge) for k, r in self.rollouts.items())

    def queued(self) -> int:
        return 3


def stored(name: str, phase: str, candidate: int) -> StoredRollout:
    status = {"phase": phase, "weights": {"legacy": 100 - candidate, "candidate": candidate}}
    status["stepStartedAt"] = "2026-03-01T12:00:00Z"
    spec = {"candidate": {"deployment": f"{name}-agent"}, "readiness": {"requireDrill": {"before": 50}}}
    return StoredRollout.of(
        {"metadata": {"name": name, "namespace": "ns", "generation": 1}, "spec": spec, "status": status}
    )


def scrape() -> dict[str, list[tuple[dict[str, str], float]]]:
    found: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(generate_latest(metrics.REGISTRY).decode()):
        for sample in family.samples:
            found.setdefault(sample.name, []).append((sample.labels, sample.value))
    return found


def test_scrape_counts_phases_and_shows_live_rollouts_weights_gates_and_rollbacks() -> None:
    store = FakeStore(
        {
            ("ns", "a"): stored("a", "Progressing", 25),
            ("ns", "b"): stored("b", "Promoted", 100),
            ("ns", "c"): stored("c", "RolledBack", 0),
        }
    )
    gate = api.GateResult(name="error-rate", verdict=api.Verdict.FAIL, value=0.2)
    metrics.observe_gates(("ns", "a"), api.Phase.PROGRESSING, [gate])
    metrics.observe_gates(("ns", "c"), api.Phase.ROLLED_BACK, [gate])
    metrics.record_decisions(("ns", "c"), ["GateFailed"], ROLLBACK_REASONS)
    metrics.record_decisions(("ns", "gone"), ["AlertFired"], ROLLBACK_REASONS)
    unregister = metrics.register_store(store)
    try:
        found = scrape()
    finally:
        unregister()
    phases = {labels["phase"]: value for labels, value in found["agent_rollout_rollouts"]}
    assert (phases["Progressing"], phases["Promoted"], phases["RolledBack"], phases["Paused"]) == (1, 1, 1, 0)
    # Per-rollout series only for live rollouts.
    assert found["agent_rollout_candidate_weight"] == [({"namespace": "ns", "rollout": "a"}, 25)]
    assert [labels["rollout"] for labels, _ in found["agent_rollout_step_started_timestamp_seconds"]] == ["a"]
    # A rollout requiring drills that never passed one: due since 0 (the DrillOverdue alert).
    assert found["agent_rollout_drill_due_timestamp_seconds"] == [({"namespace": "ns", "rollout": "a"}, 0.0)]
    # The candidate's version label value (its Deployment's name here), for the chart's spike alerts' join.
    assert found["agent_rollout_candidate_info"] == [
        ({"namespace": "ns", "rollout": "a", "version": "a-agent"}, 1)
    ]
    assert found["agent_rollout_gate_value"] == [
        ({"namespace": "ns", "rollout": "a", "gate": "error-rate"}, 0.2)
    ]
    (verdict,) = found["agent_rollout_gate_verdict"]
    assert verdict[0]["verdict"] == "Fail"
    # A deleted rollout's rollbacks are pruned at the next scrape.
    rollbacks = {(labels["rollout"], labels["cause"]) for labels, _ in found["agent_rollout_rollbacks_total"]}
    assert rollbacks == {("c", "GateFailed")}
    assert ({}, 3) in found["agent_rollout_reconciles_queued"]
    decisions = {labels["reason"] for labels, _ in found["agent_rollout_decisions_total"]}
    assert {"GateFailed", "AlertFired"} <= decisions


def test_a_rollback_waiting_for_legacy_shows_its_shortfall_and_a_finished_drill_its_duration() -> None:
    store = FakeStore({("ns", "a"): stored("a", "RolledBack", 50)})
    running = api.DrillRecord(
        result=api.DrillResult.RUNNING,
        started_at="2026-03-01T12:00:00Z",
        bound="15m",
        step=1,
        weights=api.Weights(legacy=70, candidate=30),
    )
    passed = running.model_copy(
        update={
            "result": api.DrillResult.PASSED,
            "finished_at": "2026-03-01T12:01:00Z",
            "confirm_seconds": 42,
        }
    )
    wait = api.CapacityRollback(
        started_at="2026-03-01T12:00:00Z",
        reason="GateFailed",
        required=4,
        ready=1,
        deadline="2026-03-01T12:05:00Z",
    )
    before = scrape().get("agent_rollout_drill_seconds_count", [])
    already = sum(v for labels, v in before if labels.get("result") == "Passed")
    metrics.observe_rollback_safety(
        ("ns", "a"),
        api.AgentRolloutStatus(last_drill=running),
        api.AgentRolloutStatus(last_drill=passed, capacity_rollback=wait),
    )
    # The same finished drill seen again (the next reconcile) is not counted twice.
    metrics.observe_rollback_safety(
        ("ns", "a"),
        api.AgentRolloutStatus(last_drill=passed),
        api.AgentRolloutStatus(last_drill=passed, capacity_rollback=wait),
    )
    unregister = metrics.register_store(store)
    try:
        found = scrape()
    finally:
        unregister()
    assert found["agent_rollout_legacy_capacity_shortfall_replicas"] == [
        ({"namespace": "ns", "rollout": "a"}, 3)
    ]
    counts = {labels["result"]: v for labels, v in found["agent_rollout_drill_seconds_count"]}
    assert counts["Passed"] == already + 1
    metrics.observe_rollback_safety(("ns", "a"), api.AgentRolloutStatus(), api.AgentRolloutStatus())
    unregister = metrics.register_store(store)
    try:
        assert "agent_rollout_legacy_capacity_shortfall_replicas" not in scrape()  # the wait is over
    finally:
        unregister()


CHART = Path(__file__).resolve().parents[1] / "charts" / "agent-rollout"
METRIC_NAME = re.compile(r"\bagent_rollout_[a-z_]+")


def exported_names() -> set[str]:
    """Every sample name a scrape can show, histogram and counter suffixes included."""
    unregister = metrics.register_store(FakeStore({("ns", "a"): stored("a", "Progressing", 5)}))
    metrics.QUERY_SECONDS.labels(prometheus="p").observe(0.1)
    metrics.QUEUE_WAIT_SECONDS.labels(urgency="due").observe(0.1)
    metrics.QUERY_ERRORS.labels(prometheus="p", kind="unavailable")
    metrics.ALERTS_RECEIVED.labels(status="firing")
    metrics.observe_gates(
        ("ns", "a"), api.Phase.PROGRESSING, [api.GateResult(name="g", verdict=api.Verdict.PASS, value=1)]
    )
    metrics.record_decisions(("ns", "a"), ["GateFailed"], ROLLBACK_REASONS)
    try:
        return set(scrape())
    finally:
        unregister()


def test_the_chart_rules_and_dashboard_only_read_metrics_the_operator_exports() -> None:
    exported = exported_names()
    rules = yaml.safe_load((CHART / "files" / "agent-rollout.rules.yml").read_text())
    exprs = [r["expr"] for g in rules["groups"] for r in g["rules"]]
    dashboard = json.loads((CHART / "files" / "dashboard.json").read_text())
    exprs += [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    used = {name for e in exprs for name in METRIC_NAME.findall(e)}
    assert used and used <= exported, sorted(used - exported)


def test_the_chart_rules_pass_promtool() -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool comes with the prometheus package: bash scripts/install-system-deps.sh"
    done = subprocess.run(
        [promtool, "check", "rules", str(CHART / "files" / "agent-rollout.rules.yml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_chart_spike_alerts_fire_for_a_live_rollouts_candidate_only() -> None:
    """`promtool test rules` (Prometheus' own rule engine) on synthetic series: tests/promtool/."""
    promtool = shutil.which("promtool")
    assert promtool, "promtool comes with the prometheus package: bash scripts/install-system-deps.sh"
    tests = Path(__file__).resolve().parent / "promtool"
    done = subprocess.run(
        [promtool, "test", "rules", *sorted(p.name for p in tests.glob("*.test.yml"))],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tests,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_a_scrape_of_10000_rollouts_renders_off_the_event_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    """The scrape collects on the event loop (which owns the store) and renders the text in a thread:
    rendered on the loop, 10,000 rollouts' text held it for a second at 10,000 rollouts. The render
    runs on another thread while the loop goes on (it answers a coroutine the render waits for: on
    the loop that would never come), and the text is the same."""
    one = stored("a", "Progressing", 10)
    store = FakeStore({("ns", f"r{i}"): one for i in range(10_000)})
    for i in range(10_000):
        metrics.observe_gates(
            ("ns", f"r{i}"),
            api.Phase.PROGRESSING,
            [api.GateResult(name="e", verdict=api.Verdict.PASS, value=0.01)],
        )
    unregister = metrics.register_store(store)
    rendered_in: list[int] = []

    async def scenario() -> bytes:
        loop = asyncio.get_running_loop()

        async def the_loop_turns() -> int:
            return threading.get_ident()

        def render(registry: Any) -> bytes:
            rendered_in.append(threading.get_ident())
            # Answered only if the loop runs meanwhile: a render on the loop would wait here for ever.
            rendered_in.append(asyncio.run_coroutine_threadsafe(the_loop_turns(), loop).result(timeout=30))
            return generate_latest(registry)

        monkeypatch.setattr(metrics, "generate_latest", render)
        return await metrics.render()

    try:
        body = asyncio.run(scenario())
        direct = generate_latest(metrics.REGISTRY)
        # The same text (the store's families; histograms other tests' threads still feed may move).

        def stored_lines(text: bytes) -> list[bytes]:
            return [
                line
                for line in text.splitlines()
                if line.startswith((b"agent_rollout_candidate", b"agent_rollout_gate"))
            ]

        assert stored_lines(body) == stored_lines(direct)
    finally:
        unregister()
        for i in range(10_000):
            metrics.observe_gates(("ns", f"r{i}"), api.Phase.ROLLED_BACK, [])
    assert body.count(b"agent_rollout_candidate_weight{") == 10_000
    render_thread, loop_thread = rendered_in
    assert render_thread != loop_thread
