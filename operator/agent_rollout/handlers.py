"""kopf wiring only: settings, start-up and clean-up of the controller (controller.py).

kopf runs the process (start-up and clean-up, the liveness endpoint); the watches, the scheduling
and the Events (kube.py, on a budget of their own) are the operator's own. kopf's per-object
machinery (an index readiness toggle per indexed object, a daemon task and a finalizer per rollout)
grew quadratically at 10,000 rollouts: measured, no rollout had a status 27 minutes after start.
See informer.py and scheduler.py.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import kopf
from aiohttp import web

from agent_rollout import alerts, allocator, heap, looplag, metrics
from agent_rollout.analysis.batch import DEFAULT_TTL, QUIET_WAIT, BatchReader
from agent_rollout.analysis.prometheus import PrometheusGateway
from agent_rollout.controller import EARLY_READS, INFORMER_KINDS, WORKERS, Controller
from agent_rollout.kube import KubeClient, LeaseClient, ListWatchClient
from agent_rollout.leader import DURATION, RENEW_DEADLINE, RETRY_PERIOD, LeaseElector, default_identity
from agent_rollout.notifier import Notifier, load_config
from agent_rollout.pacer import BUDGET
from agent_rollout.reconcile import Reconciler
from agent_rollout.sentinel import PERIOD, Sentinel

log = logging.getLogger(__name__)

# How long one Prometheus answer of a template's building block serves every rollout that reads it:
# less load per rollout against, at most, this much more breach-to-rollback time.
BATCH_TTL = float(os.environ.get("AGENT_ROLLOUT_BATCH_TTL", str(DEFAULT_TTL)))
if not BATCH_TTL >= 0:  # NaN too: refuse at start, not at every reconcile
    raise ValueError(f"AGENT_ROLLOUT_BATCH_TTL must be >= 0 seconds, got {BATCH_TTL!r}")
# The oldest building-block answer an evaluation may use without waiting (the fast check always asks
# for fresh ones), and half the oldest a steady gate's evaluation takes while a fresh one is fetched
# (BatchReader.read): at 10,000 rollouts each answer is a vector of 20,000 series, and sharing it
# saves the most.
EVALUATION_MAX_AGE = float(os.environ.get("AGENT_ROLLOUT_EVALUATION_MAX_AGE", "5"))
if not EVALUATION_MAX_AGE >= 0:
    raise ValueError(f"AGENT_ROLLOUT_EVALUATION_MAX_AGE must be >= 0 seconds, got {EVALUATION_MAX_AGE!r}")
# The longest a whole-fleet query that is not the fast check's waits for the fast check's in flight
# (analysis.batch: the lanes); 0, the default, sends every query as it is asked.
LANE_WAIT = float(os.environ.get("AGENT_ROLLOUT_LANE_WAIT", str(QUIET_WAIT)))
if not LANE_WAIT >= 0:
    raise ValueError(f"AGENT_ROLLOUT_LANE_WAIT must be >= 0 seconds, got {LANE_WAIT!r}")
# How often every live rollout's hard bounds are checked between its evaluations (sentinel.py).
FAST_CHECK_PERIOD = float(os.environ.get("AGENT_ROLLOUT_FAST_CHECK_PERIOD", str(PERIOD)))
if not FAST_CHECK_PERIOD > 0:
    raise ValueError(f"AGENT_ROLLOUT_FAST_CHECK_PERIOD must be > 0 seconds, got {FAST_CHECK_PERIOD!r}")
# Freeze what the operator keeps out of the garbage collector's walks (heap.py); 0 turns it off.
GC_FREEZE = os.environ.get("AGENT_ROLLOUT_GC_FREEZE", "1") != "0"
# Rollouts reconciled at once.
RECONCILE_WORKERS = int(os.environ.get("AGENT_ROLLOUT_WORKERS", str(WORKERS)))
if RECONCILE_WORKERS < 1:
    raise ValueError(f"AGENT_ROLLOUT_WORKERS must be >= 1, got {RECONCILE_WORKERS!r}")
# Seconds of routine reconciles one turn of the event loop starts (pacer.py); 0: as many as fall due.
RECONCILE_PACE = float(os.environ.get("AGENT_ROLLOUT_PACE", str(BUDGET)))
if not RECONCILE_PACE >= 0:
    raise ValueError(f"AGENT_ROLLOUT_PACE must be >= 0 seconds, got {RECONCILE_PACE!r}")
# Leader election (leader.py): seconds a lease holds, a leader keeps writing unrenewed, between attempts.
LEASE_DURATION = float(os.environ.get("AGENT_ROLLOUT_LEASE_DURATION", str(DURATION)))
LEASE_RENEW_DEADLINE = float(os.environ.get("AGENT_ROLLOUT_LEASE_RENEW_DEADLINE", str(RENEW_DEADLINE)))
LEASE_RETRY_PERIOD = float(os.environ.get("AGENT_ROLLOUT_LEASE_RETRY_PERIOD", str(RETRY_PERIOD)))


class _Runtime:
    """Process-wide collaborators, created once at startup."""

    kube: KubeClient | None = None
    controller: Controller | None = None
    tasks: list[asyncio.Task[None]] = []
    gateways: dict[tuple[str, float], PrometheusGateway] = {}
    readers: dict[str, BatchReader] = {}
    servers: list[web.AppRunner] = []
    unregister: list[Callable[[], None]] = []
    notifier: Notifier | None = None
    elector: LeaseElector | None = None


def _gateway_for(url: str, timeout: float) -> PrometheusGateway:
    """One gateway per (URL, timeout); all gateways of one Prometheus share one BatchReader, so every
    rollout reading it shares its building-block queries."""
    key = (url, timeout)
    if key not in _Runtime.gateways:
        reader = _Runtime.readers.setdefault(
            url.rstrip("/"), BatchReader(ttl=BATCH_TTL, longest=EVALUATION_MAX_AGE, quiet_wait=LANE_WAIT)
        )
        _Runtime.gateways[key] = PrometheusGateway(url, timeout=timeout, reader=reader)
    return _Runtime.gateways[key]


def elected_in(loop: asyncio.AbstractEventLoop, leading: asyncio.Event) -> None:
    """Set `leading` from the elector's thread."""
    loop.call_soon_threadsafe(leading.set)


def _post_event(body: Mapping[str, Any], type: str, reason: str, message: str) -> None:
    if _Runtime.kube is not None:
        _Runtime.kube.post_event_soon(body, type, reason, message)


@kopf.on.startup()
async def configure(memo: kopf.Memo, **_: Any) -> None:
    identity = memo.get("identity") or default_identity()
    kube = _Runtime.kube = KubeClient.from_environment(identity=identity)
    # The watches' own connections (one per kind and namespace, held for minutes each) and the GETs
    # of aborts acted on before the first lists are in.
    namespaces = memo.get("namespaces") or None
    client = ListWatchClient.from_environment(
        connections=INFORMER_KINDS * len(namespaces or [None]) + EARLY_READS, identity=identity
    )
    loop = asyncio.get_running_loop()
    leading: asyncio.Event | None = None
    if memo.get("lease_namespace"):
        elected = leading = asyncio.Event()
        store = LeaseClient.from_environment(
            memo["lease_namespace"], memo["lease_name"], identity, timeout=LEASE_RETRY_PERIOD
        )
        _Runtime.elector = LeaseElector(
            store,
            identity,
            on_started=lambda: elected_in(loop, elected),
            duration=LEASE_DURATION,
            renew_deadline=LEASE_RENEW_DEADLINE,
            retry_period=LEASE_RETRY_PERIOD,
        )
    clock = lambda: datetime.now(UTC)  # noqa: E731
    sentinel = Sentinel(
        clock=clock,
        period=FAST_CHECK_PERIOD,
        kept_age=2 * EVALUATION_MAX_AGE,
        count_every=EVALUATION_MAX_AGE / 2,
    )
    book = alerts.AlertBook()
    config_file = memo.get("notifications_config")
    notifier = _Runtime.notifier = Notifier(
        kube.read_secret_key, _post_event, load_config(Path(config_file)) if config_file else None
    )
    reconciler = Reconciler(
        kube=kube,
        gateway_for=_gateway_for,
        events=_post_event,
        clock=clock,
        alerts=book.firing,
        decided=notifier.decided,
        fresh=sentinel.fresh_reads,
    )
    controller = _Runtime.controller = Controller(
        reconciler,
        sentinel,
        kube,
        client,
        namespaces=namespaces,
        workers=RECONCILE_WORKERS,
        leading=leading,
        pace=RECONCILE_PACE,
    )
    sentinel.wake = controller.wake
    host = memo.get("listen") or "0.0.0.0"
    if memo.get("metrics_port"):
        _Runtime.unregister.append(metrics.register_store(controller))
        _Runtime.servers.append(await alerts.serve(metrics.metrics_app(), host, memo["metrics_port"]))
        log.info("metrics on http://%s:%d/metrics", host, memo["metrics_port"])
    if memo.get("alerts_port"):
        token_file = Path(memo["alerts_token_file"])
        alerts.read_token(token_file)  # refuse to start with a receiver nobody can authenticate to
        known = lambda key: controller.rollouts.get(*key) is not None  # noqa: E731
        # A standby answers 503: Alertmanager retries, and through the Service reaches the leader.
        app = alerts.receiver_app(book, token_file, known, controller.wake, ready=lambda: controller.active)
        _Runtime.servers.append(await alerts.serve(app, host, memo["alerts_port"]))
        log.info("Alertmanager webhook receiver on http://%s:%d%s", host, memo["alerts_port"], alerts.PATH)
    _Runtime.tasks = [
        loop.create_task(controller.run(), name="controller"),
        loop.create_task(sentinel.run(), name="fast-check"),
    ]
    _Runtime.tasks.append(loop.create_task(allocator.keep_trimmed(), name="allocator"))
    _Runtime.tasks.append(loop.create_task(looplag.measure(), name="loop-lag"))
    heap.measure_pauses()
    if GC_FREEZE:
        _Runtime.tasks.append(loop.create_task(heap.keep_frozen(controller.listed), name="heap"))
    if _Runtime.elector is not None:
        _Runtime.elector.start()


@kopf.on.cleanup()
async def shutdown(**_: Any) -> None:
    for task in _Runtime.tasks:
        task.cancel()
    if _Runtime.controller is not None:
        await _Runtime.controller.stop()
    if _Runtime.notifier is not None:
        await _Runtime.notifier.close()  # what is still queued is not sent (notifier.py: at most once)
    for runner in _Runtime.servers:
        await runner.cleanup()
    for unregister in _Runtime.unregister:
        unregister()
    _Runtime.servers, _Runtime.unregister = [], []
    if _Runtime.kube is not None:
        _Runtime.kube.close()
    if _Runtime.elector is not None:
        # Nothing of ours writes any more: hand the lease over, so a standby need not wait for it to expire.
        await asyncio.get_running_loop().run_in_executor(None, _Runtime.elector.stop)
        _Runtime.elector = None
