"""kopf wiring only: settings, watch-fed indices, and one daemon per AgentRollout.

Deployments and HTTPRoutes are read from kopf indices (one cluster-wide watch each), never polled
per rollout. Each AgentRollout gets a daemon that reconciles at its analysis interval and is woken
early by any change to the object (spec edit, `kubectl agentrollout abort`), so a human verb or a
new candidate takes effect in well under a second instead of waiting for the interval.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import kopf

from agent_rollout import api
from agent_rollout.analysis.batch import DEFAULT_TTL, BatchReader
from agent_rollout.analysis.prometheus import PrometheusGateway
from agent_rollout.domain import DeploymentState
from agent_rollout.intent import ANNOTATION
from agent_rollout.kube import KubeClient, deployment_state
from agent_rollout.reconcile import Reconciler, WrittenStatus
from agent_rollout.sentinel import PERIOD, Sentinel
from agent_rollout.traffic import gatewayapi

log = logging.getLogger(__name__)

# How long one Prometheus answer of a template's building block serves every rollout that reads it:
# less load per rollout against, at most, this much more breach-to-rollback time.
BATCH_TTL = float(os.environ.get("AGENT_ROLLOUT_BATCH_TTL", str(DEFAULT_TTL)))
if not BATCH_TTL >= 0:  # NaN too: refuse at start, not at every reconcile
    raise ValueError(f"AGENT_ROLLOUT_BATCH_TTL must be >= 0 seconds, got {BATCH_TTL!r}")
# How often every live rollout's hard bounds are checked between its evaluations (sentinel.py).
FAST_CHECK_PERIOD = float(os.environ.get("AGENT_ROLLOUT_FAST_CHECK_PERIOD", str(PERIOD)))
if not FAST_CHECK_PERIOD > 0:
    raise ValueError(f"AGENT_ROLLOUT_FAST_CHECK_PERIOD must be > 0 seconds, got {FAST_CHECK_PERIOD!r}")


class _Runtime:
    """Process-wide collaborators, created once at startup."""

    reconciler: Reconciler | None = None
    kube: KubeClient | None = None
    sentinel: Sentinel | None = None
    sentinel_task: asyncio.Task[None] | None = None
    gateways: dict[tuple[str, float], PrometheusGateway] = {}
    readers: dict[str, BatchReader] = {}


def _gateway_for(url: str, timeout: float) -> PrometheusGateway:
    """One gateway per (URL, timeout); all gateways of one Prometheus share one BatchReader, so every
    rollout reading it shares its building-block queries."""
    key = (url, timeout)
    if key not in _Runtime.gateways:
        reader = _Runtime.readers.setdefault(url.rstrip("/"), BatchReader(ttl=BATCH_TTL))
        _Runtime.gateways[key] = PrometheusGateway(url, timeout=timeout, reader=reader)
    return _Runtime.gateways[key]


def _post_event(body: Mapping[str, Any], type: str, reason: str, message: str) -> None:
    # The planner already bounds messages (evidence.event_text); the shell posts them as they are.
    kopf.event(body, type=type, reason=reason, message=message)  # type: ignore[arg-type]


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    # Our own prefixes, so we never collide with another kopf operator on the same objects.
    settings.persistence.finalizer = f"{api.GROUP}/finalizer"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=api.GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=api.GROUP, key="last-handled-configuration"
    )
    # Explicit watch timeouts: a silently dead watch connection must not freeze rollouts.
    settings.watching.server_timeout = int(os.environ.get("AGENT_ROLLOUT_WATCH_TIMEOUT", "300"))
    settings.watching.client_timeout = settings.watching.server_timeout + 30
    settings.watching.connect_timeout = 10
    settings.posting.level = logging.INFO

    _Runtime.kube = KubeClient.from_environment()
    _Runtime.sentinel = Sentinel(clock=lambda: datetime.now(UTC), period=FAST_CHECK_PERIOD)
    _Runtime.sentinel_task = asyncio.get_running_loop().create_task(_Runtime.sentinel.run())
    _Runtime.reconciler = Reconciler(
        kube=_Runtime.kube,
        gateway_for=_gateway_for,
        events=_post_event,
        clock=lambda: datetime.now(UTC),
    )


@kopf.on.cleanup()
def shutdown(**_: Any) -> None:
    if _Runtime.sentinel_task is not None:
        _Runtime.sentinel_task.cancel()
    if _Runtime.kube is not None:
        _Runtime.kube.close()


@kopf.index("apps", "v1", "deployments")
async def deployment_index(
    namespace: str | None, name: str, spec: kopf.Spec, status: kopf.Status, **kwargs: Any
) -> dict[tuple[str | None, str], DeploymentState]:
    # A candidate that loses its last available replica, a new revision: the rollouts naming it act at
    # once. Waking from the indexer, not from an on.event handler, matters at scale: kopf makes every
    # object with a non-index handler wait for all indices at start-up, and each index entry wakes
    # every waiter (20,000 Deployments waiting made start-up quadratic).
    _wake_soon(kwargs["rollouts_by_target"], ("deployment", namespace, name))
    return {(namespace, name): deployment_state(name, dict(spec), dict(status))}


@kopf.index(gatewayapi.GROUP, gatewayapi.VERSION, gatewayapi.PLURAL)
async def route_index(
    namespace: str | None, name: str, spec: kopf.Spec, meta: kopf.Meta, **kwargs: Any
) -> dict[tuple[str | None, str], dict[str, Any]]:
    # A route edited by someone else (Argo CD self-heal, kubectl apply of the Git copy) is re-asserted
    # at once, not an interval later; our own writes wake us too, and that reconcile does nothing.
    _wake_soon(kwargs["rollouts_by_target"], ("route", namespace, name))
    # Only what the router reads: the spec, our write-ahead record, and what a patch must pin.
    annotations = meta.get("annotations")
    ours = {ANNOTATION: annotations[ANNOTATION]} if annotations and ANNOTATION in annotations else {}
    metadata: dict[str, Any] = {"resourceVersion": meta.get("resourceVersion")}
    if annotations is not None:
        metadata["annotations"] = ours
    return {(namespace, name): {"spec": dict(spec), "metadata": metadata}}


@kopf.index(api.GROUP, api.VERSION, api.PLURAL)
def route_claims(
    namespace: str | None, name: str, spec: kopf.Spec, meta: kopf.Meta, **_: Any
) -> dict[tuple[str | None, str], tuple[str, str]]:
    """Which AgentRollouts name which HTTPRoute: the oldest one owns it, the others hold."""
    router = (spec.get("traffic") or {}).get("gatewayAPI") or {}
    route = router.get("httpRoute")
    if not isinstance(route, str):
        return {}
    return {(namespace, route): (str(meta.get("creationTimestamp") or ""), name)}


@kopf.index(api.GROUP, api.VERSION, api.PLURAL)
def rollouts_by_target(
    namespace: str | None, name: str, spec: kopf.Spec, **_: Any
) -> dict[tuple[str, str | None, str], str]:
    """The rollouts to wake when a route or a Deployment they name changes."""
    router = (spec.get("traffic") or {}).get("gatewayAPI") or {}
    keys = {
        ("route", namespace, router.get("httpRoute")),
        ("deployment", namespace, (spec.get("legacy") or {}).get("deployment")),
        ("deployment", namespace, (spec.get("candidate") or {}).get("deployment")),
    }
    return {(kind, ns, target): name for kind, ns, target in keys if isinstance(target, str)}


def route_owner(claims: kopf.Index[Any, Any], namespace: str, route: str) -> str | None:
    store = claims.get((namespace, route))
    if not store:
        return None
    owner: str = min(store)[1]
    return owner  # oldest creationTimestamp, then name: the same answer in every reconcile


# The wake-up event of each running rollout daemon, by (namespace, name).
_WAKE: dict[tuple[str | None, str], asyncio.Event] = {}


# Long enough for kopf to store the indexer's new entry before the woken rollout reads the index.
WAKE_DELAY = 0.05


def _wake_soon(targets: kopf.Index[Any, Any], key: tuple[str, str | None, str]) -> None:
    loop = asyncio.get_running_loop()
    for name in targets.get(key) or ():
        event = _WAKE.get((key[1], name))
        if event is not None:
            loop.call_later(WAKE_DELAY, event.set)


def _first(index: kopf.Index[Any, Any], key: tuple[str | None, str]) -> Any:
    store = index.get(key)
    return next(iter(store), None) if store is not None else None


def _wants_attention(body: Mapping[str, Any]) -> tuple[Any, ...]:
    """What a human or Git changes; our own status writes do not change it."""
    status = body.get("status") or {}
    verbs = (status.get("abort"), status.get("promote"), status.get("retry"))
    return (body.get("metadata", {}).get("generation"), *verbs)


@kopf.on.event(api.GROUP, api.VERSION, api.PLURAL)
def wake_rollout(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """A spec edit or a verb (abort, promote) triggers a reconcile right away, not at the next interval."""
    wake = memo.get("wake")
    seen = _wants_attention(body)
    if isinstance(wake, asyncio.Event) and memo.get("seen") != seen:
        memo["seen"] = seen
        wake.set()


@kopf.daemon(api.GROUP, api.VERSION, api.PLURAL, cancellation_timeout=5)
async def run_rollout(
    stopped: kopf.DaemonStopped,
    body: kopf.Body,
    memo: kopf.Memo,
    logger: logging.Logger | logging.LoggerAdapter[Any],
    **kwargs: Any,
) -> None:
    assert _Runtime.reconciler is not None, "startup handler did not run"
    # kopf passes each index by its function's name.
    deployments: kopf.Index[tuple[str | None, str], DeploymentState] = kwargs["deployment_index"]
    routes: kopf.Index[tuple[str | None, str], dict[str, Any]] = kwargs["route_index"]
    claims: kopf.Index[tuple[str | None, str], tuple[str, str]] = kwargs["route_claims"]
    wake = asyncio.Event()
    memo["wake"] = wake
    memo["seen"] = _wants_attention(body)
    key = (body["metadata"].get("namespace"), body["metadata"]["name"])
    _WAKE[key] = wake
    written = WrittenStatus()
    sentinel = _Runtime.sentinel
    assert sentinel is not None, "startup handler did not run"
    try:
        while not stopped:
            wake.clear()
            try:
                delay = await _Runtime.reconciler.reconcile(
                    body,
                    deployments=lambda ns, n: _first(deployments, (ns, n)),
                    routes=lambda ns, n: _first(routes, (ns, n)),
                    written=written,
                    route_owner=lambda ns, route: route_owner(claims, ns, route),
                    planned=lambda spec, status, source: sentinel.update(key, spec, status, source, wake),
                )
            except Exception:
                # Level-based: the next reconcile starts from status again, so a transient API error is
                # only logged; no rollout state lives only in memory.
                logger.exception("reconcile of AgentRollout %s/%s failed; retrying in 5 s", *key)
                delay = 5.0
            # Sleep until the interval ends, a human/Git change wakes us, or the daemon is stopped.
            waiters = [asyncio.ensure_future(wake.wait()), asyncio.ensure_future(stopped.wait())]
            try:
                await asyncio.wait(waiters, timeout=delay, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for waiter in waiters:
                    waiter.cancel()
    finally:
        sentinel.forget(key)
        if _WAKE.get(key) is wake:
            del _WAKE[key]
