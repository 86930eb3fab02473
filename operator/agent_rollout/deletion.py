"""What deleting an AgentRollout does to traffic (spec.onDelete), decided without I/O.

The operator puts its finalizer on every rollout before its first route write, so a deletion waits for
it, also while the operator is down: the deletion completes when it is back. Then:

- routeToLegacy (the default): all traffic to legacy first, then the finalizer is released. A rollout
  deleted mid-rollout never leaves users on a candidate nobody watches any more.
- keepWeights: released at once, the route as it is (e.g. a rollout being replaced by another).

Nothing else is ever done to the user's objects: Deployments are never scaled, emptied or deleted.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from pydantic import BaseModel

from agent_rollout import api, shadow
from agent_rollout.api import OnDelete, Weights
from agent_rollout.domain import DeploymentState, RouteIntent
from agent_rollout.intent import ANNOTATION, our_intent
from agent_rollout.kube import Conflict, KubeClient, RouteWriteError
from agent_rollout.traffic.router import Resource
from agent_rollout.traffic.value import TrafficState

log = logging.getLogger(__name__)
M = TypeVar("M", bound=BaseModel)

FINALIZER = f"{api.GROUP}/route-to-legacy"
ALL_TO_LEGACY = Weights(legacy=100, candidate=0)


@dataclass(frozen=True)
class OnDeletion:
    """`weights`: route these before releasing the finalizer; None: release now. `message` says why."""

    weights: Weights | None
    message: str


def on_deletion(
    on_delete: OnDelete | None,
    route_weights: Weights | None,
    route_found: bool,
    legacy_exists: bool,
    claimed_by: str | None,
    mirrored: bool = False,
    kind: str = "route",
) -> OnDeletion:
    """`mirrored`: the route carries a shadow step's mirror filter of this rollout. It goes with the
    rollout whatever onDelete says (the comparator would get copies for ever, and no step of ours is
    left to judge them); keepWeights keeps the weights. `kind`: the routed object's, for the messages."""
    if not route_found:
        return OnDeletion(None, f"deleted: no {kind} of this rollout to send to legacy")
    if claimed_by is not None:
        return OnDeletion(None, f"deleted: the {kind} is rollout {claimed_by}'s, left as it is")
    unmirror = " (its shadow mirror removed)" if mirrored else ""
    if on_delete is OnDelete.KEEP_WEIGHTS:
        message = (
            f"deleted with spec.onDelete keepWeights: the route's weights are left as they are{unmirror}"
        )
        return OnDeletion(route_weights if mirrored else None, message)
    if route_weights == ALL_TO_LEGACY:
        return OnDeletion(
            ALL_TO_LEGACY if mirrored else None, f"deleted: all traffic already on legacy{unmirror}"
        )
    if not legacy_exists:
        # Sending traffic to a Deployment that is not there would fail every request.
        message = f"deleted: the legacy Deployment does not exist; weights left as they are{unmirror}"
        return OnDeletion(route_weights if mirrored else None, message)
    message = f"deleted mid-rollout: all traffic sent to legacy before the deletion{unmirror}"
    return OnDeletion(ALL_TO_LEGACY, message)


# ---------------------------------------------------------------- the shell


def parse_on_delete(raw_spec: Mapping[str, Any]) -> OnDelete | None:
    try:
        return OnDelete(raw_spec.get("onDelete", OnDelete.ROUTE_TO_LEGACY))
    except ValueError:
        return None  # a spec that does not parse: the safe default, all traffic to legacy


class Finalizer:
    """Adds our finalizer before a rollout's first route write, and releases it on deletion once the
    route is where spec.onDelete says. Each call is one step; a failed write is retried on fresh data."""

    def __init__(self, kube: KubeClient, events: Callable[[Mapping[str, Any], str, str, str], None]) -> None:
        self._kube = kube
        self._events = events

    async def add(self, body: Mapping[str, Any]) -> None:
        meta = body["metadata"]
        finalizers = list(meta.get("finalizers") or [])
        if FINALIZER not in finalizers:
            await self._kube.add_finalizer(
                meta["namespace"], meta["name"], finalizers, meta["resourceVersion"], FINALIZER
            )

    async def release(
        self,
        body: Mapping[str, Any],
        deployments: Callable[[str, str], DeploymentState | None],
        routes: Callable[[Resource, str, str], dict[str, Any] | None],
        route_owner: Callable[[Resource, str, str], str | None],
    ) -> float | None:
        """None once released (or never ours); else seconds until the next try."""
        meta = body["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        finalizers = list(meta.get("finalizers") or [])
        if FINALIZER not in finalizers:
            return None
        raw_spec = body.get("spec") or {}
        traffic = api.parse_alone(api.Traffic, raw_spec.get("traffic"))
        legacy = api.parse_alone(api.DeploymentRef, raw_spec.get("legacy"))
        route, owner = None, None
        if traffic is not None:
            named = (traffic.router.resource, namespace, traffic.router.object_name(traffic.config))
            route, owner = routes(*named), route_owner(*named)
        route_spec = (route or {}).get("spec")
        # Only the mirror this rollout's write-ahead record says it wrote is removed; an identical filter
        # someone else wrote stays (shadow.ours_and_others).
        record = our_intent(route, name)
        mirrors, _others = shadow.ours_and_others(None, record)
        reading = traffic.router.read(route_spec, traffic.config, mirrors, (), namespace) if traffic else None
        decision = on_deletion(
            parse_on_delete(raw_spec),
            reading.weights if reading is not None else None,
            route is not None,
            legacy is not None and deployments(namespace, legacy.deployment) is not None,
            owner if owner not in (None, name) else None,
            reading is not None and reading.mirror.found > 0,
            traffic.router.resource.kind if traffic is not None else "route",
        )
        if decision.weights is not None and traffic is not None and route is not None:
            router = traffic.router
            want = TrafficState(weights=decision.weights, mirror=None)
            ops = router.patch(route_spec or {}, traffic.config, want, mirrors, namespace)
            if ops:
                try:
                    await self._kube.patch_route(
                        router.resource,
                        namespace,
                        router.object_name(traffic.config),
                        [*ops, *_drop_record(route.get("metadata"), record)],
                    )
                except Conflict as e:
                    log.warning("%s/%s: %s; will retry on fresh data", namespace, name, e)
                    return RETRY
                except RouteWriteError as e:
                    # The deletion waits: better a rollout left Terminating than users left on the candidate.
                    log.warning("%s/%s: deleting, but the route write failed: %s", namespace, name, e)
                    self._events(body, "Warning", "RouteWriteFailed", f"deleting: {e}"[:1024])
                    return RETRY_FAILED
        try:
            released = await self._kube.remove_finalizer(namespace, name, finalizers, FINALIZER)
        except Conflict as e:
            log.warning("%s/%s: %s; will retry on fresh data", namespace, name, e)
            return RETRY
        if not released:
            return None  # released by an earlier pass: its Event is out already
        log.info("%s/%s: %s", namespace, name, decision.message)
        self._events(body, "Normal", "Deleted", decision.message)
        return None


RETRY = 1.0  # seconds: a conflict is retried once the watch has brought the fresh object
RETRY_FAILED = 5.0


def _drop_record(
    route_metadata: Mapping[str, Any] | None, record: RouteIntent | None
) -> list[dict[str, Any]]:
    """Ops removing this rollout's write-ahead record (`record`, from our_intent) from the route. No status
    write follows this route write for the record to guard, and a rollout created again under the same
    name must not resume from the record of the one deleted."""
    if record is None:
        return []
    annotations = (route_metadata or {}).get("annotations") or {}
    path = "/metadata/annotations/" + ANNOTATION.replace("~", "~0").replace("/", "~1")
    return [{"op": "test", "path": path, "value": annotations[ANNOTATION]}, {"op": "remove", "path": path}]
