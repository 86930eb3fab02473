"""The operator's own metrics, exposed with prometheus_client on a port of their own (/metrics).

Cost per rollout is what matters at 10,000 rollouts per operator: nothing here polls an object or
writes to the API server. Counters and histograms are bumped where things happen (a reconcile, a
Prometheus query, a decision, an alert). Everything about rollouts' state is computed at scrape time
from the controller's store (StoreCollector): rollouts by phase are counts, not a series per rollout;
per-rollout series (candidate weight, the step's start, gate values) exist only for live rollouts,
and rollbacks only for rollouts that rolled back, pruned once the rollout is deleted.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from agent_rollout import api

PREFIX = "agent_rollout"
REGISTRY = CollectorRegistry(auto_describe=True)
Key = tuple[str, str]

RECONCILE_SECONDS = Histogram(
    f"{PREFIX}_reconcile_duration_seconds",
    "Time one reconcile of one rollout took (observe, plan, route, status write).",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
    registry=REGISTRY,
)
QUEUE_WAIT_SECONDS = Histogram(
    f"{PREFIX}_queue_wait_seconds",
    "Time a reconcile waited in the queue for a worker (a routine one also for its turn: pacer.py), by its "
    "urgency (now: a verb, edit, breach or a "
    "change of what it names; due: a decision falling due, such as a pause's end; live; new; at_rest).",
    ["urgency"],
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
    registry=REGISTRY,
)
RECONCILE_ERRORS = Counter(
    f"{PREFIX}_reconcile_errors_total", "Reconciles that raised (retried later).", registry=REGISTRY
)
DECISIONS = Counter(
    f"{PREFIX}_decisions_total",
    "Decisions recorded in rollouts' history, by reason (Started, StepCompleted, GateFailed, ...).",
    ["reason"],
    registry=REGISTRY,
)
QUERY_SECONDS = Histogram(
    f"{PREFIX}_prometheus_query_duration_seconds",
    "Latency of the operator's queries to a Prometheus, failed ones included.",
    ["prometheus"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
    registry=REGISTRY,
)
EVENT_LOOP_LAG_SECONDS = Histogram(
    f"{PREFIX}_event_loop_lag_seconds",
    "How late a timer on the operator's event loop ran (looplag): what every wait on the loop, such as "
    "an answer on its way to the fast check, waits more per turn.",
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
    registry=REGISTRY,
)
RECONCILES_PUT_OFF = Counter(
    f"{PREFIX}_reconciles_put_off",
    "Routine reconciles (interval analyses, new and finished rollouts) put off to a later turn of the "
    "event loop, that turn's slice of them spent (pacer.py); once per turn put off.",
    registry=REGISTRY,
)
PROMETHEUS_QUEUE_SECONDS = Histogram(
    f"{PREFIX}_prometheus_queue_seconds",
    "Time a Prometheus query waited for a worker thread before it was sent, by lane: urgent (a breach "
    "is seen through it: the fast check's value blocks and confirms, a woken evaluation's fresh reads) "
    "or shared (every other).",
    ["lane"],
    buckets=(0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10),
    registry=REGISTRY,
)
FAST_CHECK_BLIND_SECONDS = Histogram(
    f"{PREFIX}_fast_check_blind_seconds",
    "For each building-block answer the fast check gets: seconds since the query of its previous answer "
    "was sent, the longest a breach in Prometheus could have waited to be seen through that block.",
    ["block"],
    buckets=(0.5, 1, 1.5, 2, 2.5, 3, 4, 5, 7.5, 10, 30),
    registry=REGISTRY,
)
FAST_CHECK_SWEEP_SECONDS = Histogram(
    f"{PREFIX}_fast_check_sweep_seconds",
    "Wall time of the fast check's work by phase: plan (a sweep's start to its queries sent), query "
    "(one block's query sent to its answer parsed, on the operator's side), measure (one read over "
    "every rollout that reads it, yields to the event loop included), confirm (the exact read of the "
    "rollouts a latency bucket's share made suspects) and cycle (one sweep's start to the next's). "
    "What a breach waits for.",
    ["phase"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 1.5, 2, 3, 5, 10),
    registry=REGISTRY,
)
QUERY_ERRORS = Counter(
    f"{PREFIX}_prometheus_query_errors_total",
    "Queries that got no usable answer: unavailable (down, timeout, 5xx) or rejected (invalid query).",
    ["prometheus", "kind"],
    registry=REGISTRY,
)
ALERTS_RECEIVED = Counter(
    f"{PREFIX}_alerts_received_total",
    "Alerts received from Alertmanager's webhook, by status (firing, resolved).",
    ["status"],
    registry=REGISTRY,
)
ALERTS_MATCHED = Counter(
    f"{PREFIX}_alerts_matched_total", "Received alerts that named a known rollout.", registry=REGISTRY
)
ALERTS_UNMATCHED = Counter(
    f"{PREFIX}_alerts_unmatched_total",
    "Received alerts that named no rollout the operator knows (ignored).",
    registry=REGISTRY,
)
ALERTS_REFUSED = Counter(
    f"{PREFIX}_alert_requests_refused_total",
    "Requests to the alert receiver refused for a missing or wrong bearer token.",
    registry=REGISTRY,
)
NOTIFICATION_DELIVERIES = Counter(
    f"{PREFIX}_notification_deliveries_total",
    "Notifications a sink accepted (a 2xx answer), by sink.",
    ["sink"],
    registry=REGISTRY,
)
NOTIFICATION_FAILURES = Counter(
    f"{PREFIX}_notification_failures_total",
    "Notification failures by sink and reason: each failed attempt by its cause (connection, timeout, "
    "http, secret, error), each notification given up after its last attempt (abandoned), and each "
    "dropped because the sink's queue was full (queue_full).",
    ["sink", "reason"],
    registry=REGISTRY,
)


DRILL_SECONDS = Histogram(
    f"{PREFIX}_drill_seconds",
    "Rollback drills by result: seconds from the drill's start until legacy's own metrics confirmed it "
    "(a drill never confirmed counts its whole duration).",
    labelnames=["result"],
    buckets=(15, 30, 60, 120, 300, 600, 900, 1800, 3600),
    registry=REGISTRY,
)


@dataclass(frozen=True, slots=True)
class RolloutGauge:
    """What the collector reads of one stored rollout (controller.StoredRollout carries it)."""

    phase: str
    candidate_weight: int
    step_started: float | None  # epoch seconds of status.stepStartedAt
    candidate_version: str | None = None  # the candidate's version label value in the agents' metrics
    drill_due: float | None = None  # epoch seconds a requireDrill rollout needs its next drill by


class Store(Protocol):
    def gauges(self) -> Iterable[tuple[Key, RolloutGauge]]: ...
    def queued(self) -> int: ...


class _State:
    """Per-rollout values the store does not hold, bounded as explained in the module docstring."""

    gates: dict[Key, tuple[tuple[str, float | None, str], ...]] = {}
    shortfall: dict[Key, tuple[int, int]] = {}  # (required, ready) of a rollback waiting for legacy
    rollbacks: dict[tuple[str, str, str], int] = {}


def observe_gates(key: Key, phase: api.Phase, gates: Iterable[api.GateResult] | None) -> None:
    """The gate results just measured for a rollout (the live values; status may lag by its refresh)."""
    if phase not in (api.Phase.PROGRESSING, api.Phase.PAUSED):
        _State.gates.pop(key, None)
    elif gates is not None:
        _State.gates[key] = tuple((g.name, g.value, g.verdict.value) for g in gates)


def observe_rollback_safety(key: Key, before: api.AgentRolloutStatus, after: api.AgentRolloutStatus) -> None:
    """A drill that ended in this reconcile, and a rollback waiting for legacy's ready replicas."""
    drill, old = after.last_drill, before.last_drill
    if drill is not None and drill.result is not api.DrillResult.RUNNING and drill.finished_at is not None:
        seen = old is not None and (old.started_at, old.finished_at) == (drill.started_at, drill.finished_at)
        if not seen:
            started = datetime.fromisoformat(drill.started_at)
            ended = datetime.fromisoformat(drill.finished_at)
            seconds = drill.confirm_seconds
            DRILL_SECONDS.labels(result=drill.result.value).observe(
                seconds if seconds is not None else (ended - started).total_seconds()
            )
    wait = after.capacity_rollback
    if wait is None:
        _State.shortfall.pop(key, None)
    else:
        _State.shortfall[key] = (wait.required, wait.ready)


def record_decisions(key: Key, reasons: Iterable[str], rollback_reasons: frozenset[str]) -> None:
    for reason in reasons:
        DECISIONS.labels(reason=reason).inc()
        if reason in rollback_reasons:
            cause = (key[0], key[1], reason)
            _State.rollbacks[cause] = _State.rollbacks.get(cause, 0) + 1


class StoreCollector(Collector):
    """Rollout state at scrape time, from the controller's store: O(rollouts) per scrape, nothing
    between scrapes."""

    def __init__(self, store: Store) -> None:
        self._store = store

    def describe(self) -> list[Any]:
        return []  # the families depend on the store; nothing to check at registration

    def collect(self) -> Iterator[Any]:
        phases = GaugeMetricFamily(f"{PREFIX}_rollouts", "AgentRollouts by phase.", labels=["phase"])
        weight = GaugeMetricFamily(
            f"{PREFIX}_candidate_weight",
            "Candidate's weight on the route as status says, live rollouts (Progressing, Paused) only.",
            labels=["namespace", "rollout"],
        )
        started = GaugeMetricFamily(
            f"{PREFIX}_step_started_timestamp_seconds",
            "When the current step of a live rollout began (time() - this: how long it is stuck).",
            labels=["namespace", "rollout"],
        )
        # Joins the agents' own metrics (by namespace and version) to the live rollout judging that
        # version: the chart's agent spike alerts carry the rollout's name this way, so Alertmanager's
        # webhook to the operator rolls it back.
        candidate = GaugeMetricFamily(
            f"{PREFIX}_candidate_info",
            "1 for each live rollout (Progressing, Paused) and its candidate's version label value.",
            labels=["namespace", "rollout", "version"],
        )
        drill_due = GaugeMetricFamily(
            f"{PREFIX}_drill_due_timestamp_seconds",
            "When a live rollout with readiness.requireDrill needs its next passed drill (its last passed "
            "drill plus maxAge; 0: none passed yet).",
            labels=["namespace", "rollout"],
        )
        counts = {p.value: 0 for p in api.Phase}
        live: set[Key] = set()
        present: set[Key] = set()
        for key, g in self._store.gauges():
            present.add(key)
            counts[g.phase] = counts.get(g.phase, 0) + 1
            if g.phase in (api.Phase.PROGRESSING.value, api.Phase.PAUSED.value):
                live.add(key)
                weight.add_metric(list(key), g.candidate_weight)
                if g.candidate_version is not None:
                    candidate.add_metric([*key, g.candidate_version], 1)
                if g.drill_due is not None:
                    drill_due.add_metric(list(key), g.drill_due)
                if g.step_started is not None:
                    started.add_metric(list(key), g.step_started)
        for phase, n in counts.items():
            phases.add_metric([phase], n)
        yield phases
        yield weight
        yield started
        yield candidate
        yield drill_due
        gate_value = GaugeMetricFamily(
            f"{PREFIX}_gate_value",
            "A live rollout's gate value at its latest evaluation (absent: no value).",
            labels=["namespace", "rollout", "gate"],
        )
        gate_verdict = GaugeMetricFamily(
            f"{PREFIX}_gate_verdict",
            "1 for the verdict a live rollout's gate had at its latest evaluation.",
            labels=["namespace", "rollout", "gate", "verdict"],
        )
        for key in [k for k in _State.gates if k not in live]:
            del _State.gates[key]
        for key, results in _State.gates.items():
            for name, value, verdict in results:
                if value is not None:
                    gate_value.add_metric([*key, name], value)
                gate_verdict.add_metric([*key, name, verdict], 1)
        yield gate_value
        yield gate_verdict
        shortfall = GaugeMetricFamily(
            f"{PREFIX}_legacy_capacity_shortfall_replicas",
            "Ready legacy replicas missing while a rollback waits for them (capacity-safe rollback; the "
            "operator never scales legacy): required minus ready.",
            labels=["namespace", "rollout"],
        )
        for key in [k for k in _State.shortfall if k not in present]:
            del _State.shortfall[key]
        for key, (required, have) in _State.shortfall.items():
            shortfall.add_metric(list(key), max(0, required - have))
        yield shortfall
        rollbacks = CounterMetricFamily(
            f"{PREFIX}_rollbacks",
            "Rollbacks decided by this operator process, by rollout and cause (GateFailed, AlertFired, ...).",
            labels=["namespace", "rollout", "cause"],
        )
        for cause in [c for c in _State.rollbacks if (c[0], c[1]) not in present]:
            del _State.rollbacks[cause]
        for (namespace, name, reason), n in _State.rollbacks.items():
            rollbacks.add_metric([namespace, name, reason], n)
        yield rollbacks
        queued = GaugeMetricFamily(f"{PREFIX}_reconciles_queued", "Rollouts due and waiting for a worker.")
        queued.add_metric([], self._store.queued())
        yield queued


def register_store(store: Store) -> Callable[[], None]:
    """Expose the store's rollouts; returns the function that stops exposing them."""
    collector = StoreCollector(store)
    REGISTRY.register(collector)
    return lambda: REGISTRY.unregister(collector)


class _Collected:
    """Metric families collected already, for generate_latest to render."""

    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> list[Metric]:
        return self._families


async def render(registry: CollectorRegistry = REGISTRY) -> bytes:
    """The registry in Prometheus' text format: collected on the event loop, which owns the store and
    the per-rollout state (no lock), and rendered in a worker thread. Rendered on the loop, the text of
    10,000 rollouts (tens of thousands of samples) held it for a second at a time (looplag's stall log,
    run Z11), and every breach waiting on the loop with it."""
    families = list(registry.collect())
    return await asyncio.to_thread(generate_latest, _Collected(families))


def metrics_app() -> web.Application:
    async def scrape(_: web.Request) -> web.Response:
        return web.Response(body=await render(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application()
    app.router.add_get("/metrics", scrape)
    return app
