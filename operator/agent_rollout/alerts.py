"""Alertmanager's webhook receiver: an incident alert that names a rollout rolls it back at once.

An alert names a rollout with two labels, `agentrollout` (its name) and `namespace`. The receiver
never writes a route or a status: it keeps the firing alerts in memory (AlertBook, bounded) and wakes
the rollout; the reconcile that follows hands them to the planner (Observations.firing_alerts), whose
rule `_alert_fired` decides, records the alert as the decision's evidence and routes. So an alert
takes the same path, with the same audit trail, as every other rollback.

A resolved alert stops counting. Alerts that name no rollout the operator knows are counted
(agent_rollout_alerts_unmatched_total) and ignored. Nothing is persisted: after an operator restart
Alertmanager sends still-firing alerts again at its next group_interval/repeat_interval.

Served by aiohttp (already installed as kopf's own dependency) on its own port, behind a bearer
token read from a file (a mounted Secret). Anything without that token is refused with 401 and logged.
"""

from __future__ import annotations

import hmac
import logging
from collections import OrderedDict
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from aiohttp import web

from agent_rollout import metrics
from agent_rollout.domain import FiringAlert

log = logging.getLogger(__name__)

ROLLOUT_LABEL = "agentrollout"
NAMESPACE_LABEL = "namespace"
PATH = "/alerts"
# Bounds: a storm of alerts must not grow the operator without limit. The oldest entries go first.
MAX_ROLLOUTS = 20_000
MAX_ALERTS_PER_ROLLOUT = 16
MAX_BODY_BYTES = 1 << 20  # Alertmanager batches alerts of one group; 1 MiB is thousands of them

Key = tuple[str, str]


class AlertBook:
    """Firing alerts by rollout, as Alertmanager last told them; bounded, oldest dropped first."""

    def __init__(self, max_rollouts: int = MAX_ROLLOUTS, per_rollout: int = MAX_ALERTS_PER_ROLLOUT) -> None:
        self._firing: OrderedDict[Key, dict[str, FiringAlert]] = OrderedDict()
        self._max_rollouts = max_rollouts
        self._per_rollout = per_rollout

    def firing(self, namespace: str, name: str) -> tuple[FiringAlert, ...]:
        alerts = self._firing.get((namespace, name))
        return tuple(alerts.values()) if alerts else ()

    def fire(self, key: Key, alert: FiringAlert) -> bool:
        """True when the alert is new for this rollout (a repeat of a firing one changes nothing)."""
        alerts = self._firing.setdefault(key, {})
        self._firing.move_to_end(key)
        new = alert.fingerprint not in alerts
        alerts[alert.fingerprint] = alert
        while len(alerts) > self._per_rollout:
            del alerts[next(iter(alerts))]
        while len(self._firing) > self._max_rollouts:
            self._firing.popitem(last=False)
        return new

    def resolve(self, key: Key, fingerprint: str) -> None:
        alerts = self._firing.get(key)
        if alerts is not None:
            alerts.pop(fingerprint, None)
            if not alerts:
                del self._firing[key]

    def forget(self, key: Key) -> None:
        self._firing.pop(key, None)

    def __len__(self) -> int:
        return sum(len(a) for a in self._firing.values())


def rollout_of(labels: Mapping[str, Any]) -> Key | None:
    name, namespace = labels.get(ROLLOUT_LABEL), labels.get(NAMESPACE_LABEL)
    if isinstance(name, str) and isinstance(namespace, str) and name and namespace:
        return namespace, name
    return None


def firing_alert(alert: Mapping[str, Any]) -> FiringAlert:
    labels = alert.get("labels") or {}
    annotations = alert.get("annotations") or {}
    text = ", ".join(f"{k}={v}" for k, v in sorted(labels.items()))
    fingerprint = str(alert.get("fingerprint") or "") or text  # Alertmanager always sends one
    return FiringAlert(
        name=str(labels.get("alertname", "(unnamed)")),
        fingerprint=fingerprint,
        starts_at=str(alert.get("startsAt", "")),
        summary=str(annotations.get("summary") or annotations.get("description") or ""),
        labels=text,
    )


def take(
    book: AlertBook, payload: Mapping[str, Any], known: Callable[[Key], bool], wake: Callable[[Key], None]
) -> tuple[int, int]:
    """Apply one webhook payload (Alertmanager's version 4) to the book; wake each rollout a new
    firing alert names. Returns (matched, unmatched) alerts."""
    matched = unmatched = 0
    woken: set[Key] = set()
    for raw in payload.get("alerts") or []:
        if not isinstance(raw, Mapping):
            continue
        status = raw.get("status")
        metrics.ALERTS_RECEIVED.labels(status=str(status)).inc()
        key = rollout_of(raw.get("labels") or {})
        if key is None or not known(key):
            unmatched += 1
            if key is not None:
                book.forget(key)  # it was deleted, or never was: nothing of its to keep
            continue
        matched += 1
        alert = firing_alert(raw)
        if status == "firing":
            if book.fire(key, alert):
                woken.add(key)
        else:
            book.resolve(key, alert.fingerprint)
    for key in woken:
        wake(key)
    metrics.ALERTS_MATCHED.inc(matched)
    metrics.ALERTS_UNMATCHED.inc(unmatched)
    return matched, unmatched


def read_token(path: Path) -> str:
    token = path.read_text().strip()
    if not token:
        raise ValueError(f"alert receiver token file {path} is empty")
    return token


def receiver_app(
    book: AlertBook,
    token_file: Path,
    known: Callable[[Key], bool],
    wake: Callable[[Key], None],
    ready: Callable[[], bool] = lambda: True,
) -> web.Application:
    """The webhook endpoint (POST /alerts). The token is read at each request, so a rotated Secret
    (kubelet updates the mounted file) takes effect without a restart. Until the controller has its
    first lists (`ready`), every rollout would look unknown: the answer is 503, which Alertmanager
    retries, instead of dropping alerts it would not send again before its repeat_interval."""

    async def receive(request: web.Request) -> web.Response:
        given = request.headers.get("Authorization", "")
        try:
            expected = f"Bearer {read_token(token_file)}"
        except (OSError, ValueError) as e:
            log.error("alert receiver: cannot read its token (%s): refusing every request", e)
            metrics.ALERTS_REFUSED.inc()
            return web.Response(status=503, text="receiver has no token\n")
        if not hmac.compare_digest(given.encode(), expected.encode()):
            log.warning(
                "alert receiver: refused a request from %s: %s",
                request.remote,
                "no bearer token" if not given else "wrong bearer token",
            )
            metrics.ALERTS_REFUSED.inc()
            return web.Response(status=401, text="unauthorized\n", headers={"WWW-Authenticate": "Bearer"})
        if not ready():
            return web.Response(status=503, text="starting: rollouts not listed yet\n")
        try:
            payload = await request.json()
        except ValueError:
            return web.Response(status=400, text="expected Alertmanager's webhook JSON\n")
        if not isinstance(payload, dict):
            return web.Response(status=400, text="expected Alertmanager's webhook JSON\n")
        matched, unmatched = take(book, payload, known, wake)
        if matched:
            log.info("alert receiver: %d alert(s) for rollouts, %d for none", matched, unmatched)
        return web.json_response({"matched": matched, "unmatched": unmatched})

    app = web.Application(client_max_size=MAX_BODY_BYTES)
    app.router.add_post(PATH, receive)
    return app


async def serve(app: web.Application, host: str, port: int) -> web.AppRunner:
    """Start serving `app`; the caller cleans the returned runner up at shutdown."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner
