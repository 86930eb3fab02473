"""Delivers notifications (notify.py) to webhook sinks, off the reconcile path.

`Notifier.decided` is what the reconcile calls once a status write landed: it never awaits, never does
I/O, and costs nothing when no sink is configured. Each sink has a bounded queue and one worker, so a
rollout's notifications reach a sink in the order they were decided; a full queue drops the newest
(counted), as client-go's event broadcaster does, rather than growing without bound. A failed attempt is
retried with doubling backoff up to a cap, then given up; a sink that is down or hangs only ever holds
its own queue. Failures are visible, never fatal: agent_rollout_notification_failures_total{sink,reason},
and one Warning Event NotificationFailed on the rollout per failure streak of a sink (reset by the
sink's next success).

At most once across an operator restart: what was queued but not delivered when the process stopped is
not sent again (the decision stays in status.history and in its Event); exactly once in a process's
life, unless a sink took a request but the answer was lost, in which case the retry carries the same
id (body `id`, header Idempotency-Key) for the sink to drop.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import aiohttp
import yaml
from pydantic import Field

from agent_rollout import api, metrics, notify
from agent_rollout.kube import SecretUnavailable
from agent_rollout.notify import Notification, RolloutRef

log = logging.getLogger(__name__)

EVENT_REASON = "NotificationFailed"
QUEUE_SIZE = int(os.environ.get("AGENT_ROLLOUT_NOTIFY_QUEUE", "100"))  # per sink
ATTEMPTS = int(os.environ.get("AGENT_ROLLOUT_NOTIFY_ATTEMPTS", "5"))  # per notification, the first included
BACKOFF = float(os.environ.get("AGENT_ROLLOUT_NOTIFY_BACKOFF", "1"))  # seconds before the first retry
BACKOFF_CAP = float(os.environ.get("AGENT_ROLLOUT_NOTIFY_BACKOFF_CAP", "30"))
TIMEOUT = float(os.environ.get("AGENT_ROLLOUT_NOTIFY_TIMEOUT", "5"))  # one attempt, connection included
URL_TTL = 60.0  # seconds a webhook URL read from its Secret is used before it is read again (rotation)


class DeliveryFailed(Exception):
    def __init__(self, reason: str, detail: str, retry: bool = True) -> None:
        super().__init__(detail)
        self.reason, self.retry = reason, retry


# (namespace, name, key) -> the Secret's value at key (KubeClient.read_secret_key).
SecretReader = Callable[[str, str, str], Awaitable[str]]
# (url, JSON body, notification id): raises DeliveryFailed.
Poster = Callable[[str, bytes, str], Awaitable[None]]


class EventSink(Protocol):
    def __call__(self, body: Mapping[str, Any], type: str, reason: str, message: str) -> None: ...


class OperatorSink(api.NotificationSink):
    """A sink of the operator's own config: every rollout's decisions (or those of `namespaces`)."""

    namespaces: list[str] = Field(default_factory=list, description="Only rollouts here; empty: all.")


class OperatorConfig(api._Model):
    """The file of --notifications-config (the chart renders it from notifications.sinks)."""

    secret_namespace: str = Field(description="Where the operator's sinks' Secrets are: its own namespace.")
    sinks: list[OperatorSink] = Field(default_factory=list)


def load_config(path: Path) -> OperatorConfig:
    return OperatorConfig.model_validate(yaml.safe_load(path.read_text()) or {})


@dataclass(frozen=True)
class SinkRef:
    """One destination: a queue and a worker. Rollouts of a namespace naming the same sink and Secret
    share it, so their notifications keep their order there too."""

    label: str  # the metric's sink label: <namespace>/<name> of a spec sink, the name of an operator sink
    type: api.SinkType
    secret_namespace: str
    secret_name: str
    secret_key: str


@dataclass
class _Outgoing:
    notification: Notification
    involved: Mapping[str, Any]  # the rollout, for the Event


@dataclass
class _Sink:
    ref: SinkRef
    queue: asyncio.Queue[_Outgoing]
    worker: asyncio.Task[None] | None = None
    reported: set[str] = field(default_factory=set)  # rollouts told of this failure streak (by uid)


async def post_json(session: aiohttp.ClientSession, url: str, body: bytes, key: str, timeout: float) -> None:
    headers = {"Content-Type": "application/json", "Idempotency-Key": key, "User-Agent": "agent-rollout"}
    try:
        async with session.post(
            url, data=body, headers=headers, timeout=aiohttp.ClientTimeout(total=timeout)
        ) as r:
            if r.status < 300:
                return
            text = (await r.text())[:200]
            # A 4xx (but a timeout or a throttle) says the request itself is wrong: the same one fails again.
            retry = r.status >= 500 or r.status in (408, 429)
            raise DeliveryFailed("http", f"HTTP {r.status}: {text}", retry=retry)
    except TimeoutError as e:
        raise DeliveryFailed("timeout", f"no answer within {timeout:g}s") from e
    except aiohttp.ClientConnectionError as e:
        raise DeliveryFailed("connection", f"{type(e).__name__}: {e}") from e
    except (aiohttp.ClientError, ValueError) as e:  # an unusable URL (ValueError/InvalidURL) included
        # Only the type: the text of InvalidURL is the URL, a credential for Slack and Teams.
        raise DeliveryFailed("error", type(e).__name__, retry=False) from e


class Notifier:
    def __init__(
        self,
        read_secret: SecretReader,
        events: EventSink,
        config: OperatorConfig | None = None,
        poster: Poster | None = None,
        queue_size: int = QUEUE_SIZE,
        attempts: int = ATTEMPTS,
        backoff: float = BACKOFF,
        backoff_cap: float = BACKOFF_CAP,
        timeout: float = TIMEOUT,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._read_secret = read_secret
        self._events = events
        self._config = config or OperatorConfig(secret_namespace="")
        self._poster = poster
        self._session: aiohttp.ClientSession | None = None
        self._queue_size, self._attempts = queue_size, max(1, attempts)
        self._backoff, self._backoff_cap, self._timeout = backoff, backoff_cap, timeout
        self._clock = clock
        self._sinks: dict[SinkRef, _Sink] = {}
        self._urls: dict[tuple[str, str, str], tuple[str, float]] = {}

    # -- the reconcile's hook: synchronous, no I/O

    def decided(
        self,
        body: Mapping[str, Any],
        spec: api.AgentRolloutSpec | None,
        before: api.AgentRolloutStatus,
        after: api.AgentRolloutStatus,
    ) -> None:
        """Queue the decisions a landed status write added (before: the status planned on)."""
        meta = body.get("metadata") or {}
        namespace = str(meta.get("namespace"))
        sinks = self._sinks_of(namespace, spec)
        if not sinks:
            return
        rollout = RolloutRef(namespace, str(meta.get("name")), str(meta.get("uid", "")))
        found = notify.notifications(rollout, len(spec.steps) if spec else 0, before, after)
        if not found:
            return
        involved = {
            "apiVersion": body.get("apiVersion"),
            "kind": body.get("kind"),
            "metadata": {k: meta.get(k) for k in ("name", "namespace", "uid", "resourceVersion")},
        }
        for ref, events in sinks:
            for n in found:
                if notify.wants(events, n.event):
                    self._offer(ref, _Outgoing(n, involved))

    def _sinks_of(
        self, namespace: str, spec: api.AgentRolloutSpec | None
    ) -> list[tuple[SinkRef, Sequence[api.NotificationEvent]]]:
        found: list[tuple[SinkRef, Sequence[api.NotificationEvent]]] = []
        for sink in spec.notifications if spec is not None else ():
            secret = sink.url_from.secret_key_ref
            ref = SinkRef(f"{namespace}/{sink.name}", sink.type, namespace, secret.name, secret.key)
            found.append((ref, sink.events))
        config = self._config
        for own in config.sinks:
            if own.namespaces and namespace not in own.namespaces:
                continue
            secret = own.url_from.secret_key_ref
            ref = SinkRef(own.name, own.type, config.secret_namespace, secret.name, secret.key)
            found.append((ref, own.events))
        return found

    def _offer(self, ref: SinkRef, item: _Outgoing) -> None:
        sink = self._sinks.get(ref)
        if sink is None:
            sink = self._sinks[ref] = _Sink(ref, asyncio.Queue(maxsize=self._queue_size))
        if sink.worker is None or sink.worker.done():
            sink.worker = asyncio.get_running_loop().create_task(self._work(sink), name=f"notify {ref.label}")
        try:
            sink.queue.put_nowait(item)
        except asyncio.QueueFull:
            metrics.NOTIFICATION_FAILURES.labels(sink=ref.label, reason="queue_full").inc()
            self._failed(sink, item, "queue_full", f"{self._queue_size} notifications waiting; dropped one")

    # -- delivery

    async def _work(self, sink: _Sink) -> None:
        while True:
            item = await sink.queue.get()
            try:
                await self._deliver(sink, item)
            except asyncio.CancelledError:
                raise
            except Exception:  # never let one notification stop the sink's worker
                log.exception("notification %s to %s", item.notification.id, sink.ref.label)
            finally:
                sink.queue.task_done()

    async def _deliver(self, sink: _Sink, item: _Outgoing) -> None:
        ref, n = sink.ref, item.notification
        payload = json.dumps(notify.BODY_OF[ref.type](n), separators=(",", ":")).encode()
        for attempt in range(1, self._attempts + 1):
            try:
                url = await self._url(ref)
                await self._post(url, payload, n.id)
            except DeliveryFailed as e:
                metrics.NOTIFICATION_FAILURES.labels(sink=ref.label, reason=e.reason).inc()
                if e.reason == "secret":
                    self._urls.pop((ref.secret_namespace, ref.secret_name, ref.secret_key), None)
                last = attempt == self._attempts or not e.retry
                self._failed(sink, item, e.reason, f"attempt {attempt}/{self._attempts}: {e}", gave_up=last)
                if last:
                    metrics.NOTIFICATION_FAILURES.labels(sink=ref.label, reason="abandoned").inc()
                    return
                await asyncio.sleep(notify.backoff(attempt, self._backoff, self._backoff_cap))
                continue
            metrics.NOTIFICATION_DELIVERIES.labels(sink=ref.label).inc()
            sink.reported.clear()  # the streak is over: the next failure is news again
            return

    async def _url(self, ref: SinkRef) -> str:
        key = (ref.secret_namespace, ref.secret_name, ref.secret_key)
        cached = self._urls.get(key)
        if cached is not None and self._clock() - cached[1] < URL_TTL:
            return cached[0]
        try:
            url = (await self._read_secret(*key)).strip()
        except SecretUnavailable as e:
            raise DeliveryFailed("secret", str(e)) from e
        self._urls[key] = (url, self._clock())
        return url

    async def _post(self, url: str, payload: bytes, key: str) -> None:
        if self._poster is not None:
            await self._poster(url, payload, key)
            return
        if self._session is None:
            self._session = aiohttp.ClientSession()
        await post_json(self._session, url, payload, key, self._timeout)

    def _failed(self, sink: _Sink, item: _Outgoing, reason: str, detail: str, gave_up: bool = False) -> None:
        n = item.notification
        outcome = "given up" if gave_up else "will retry" if reason != "queue_full" else "dropped"
        # The URL is a credential (Slack's and Teams' carry their token): never in a log line or Event.
        message = (
            f"notification {n.event.value} ({n.id}) to sink {sink.ref.label} failed ({reason}), "
            f"{outcome}: {detail}"
        )
        log.warning("%s/%s: %s", n.rollout.namespace, n.rollout.name, message)
        if n.rollout.uid in sink.reported:
            return
        sink.reported.add(n.rollout.uid)
        self._events(item.involved, "Warning", EVENT_REASON, message)

    async def close(self) -> None:
        for sink in self._sinks.values():
            if sink.worker is not None:
                sink.worker.cancel()
        if self._session is not None:
            await self._session.close()

    def waiting(self) -> int:
        """Notifications queued across sinks (tests, and a gauge if ever needed)."""
        return sum(s.queue.qsize() for s in self._sinks.values())
