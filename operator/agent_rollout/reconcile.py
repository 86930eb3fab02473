"""One reconcile of one AgentRollout: observe, plan, act, write status once (or not at all).

This is the imperative shell around the pure planner. It reads Deployments and HTTPRoutes from
watch-fed indices (no API reads per rollout), asks Prometheus through the analysis adapter, routes
traffic first (a rollback must not wait on a status write), then sends one status diff patch.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from pydantic import ValidationError

from agent_rollout import api
from agent_rollout.analysis.prometheus import (
    PrometheusGateway,
    PrometheusUnavailable,
    candidate_requests,
    measure_gates,
)
from agent_rollout.domain import DeploymentState, EmitEvent, Observations, SetWeights, SpecProblem
from agent_rollout.kube import Conflict, KubeClient
from agent_rollout.planner import plan
from agent_rollout.statuspatch import merge_patch
from agent_rollout.traffic import gatewayapi
from agent_rollout.validation import validate

log = logging.getLogger(__name__)

# (namespace, name) -> summary, fed by kopf indices in production and by dicts in tests.
DeploymentLookup = Callable[[str, str], DeploymentState | None]
RouteLookup = Callable[[str, str], dict[str, Any] | None]

LIVE_PHASES = {api.Phase.PENDING, api.Phase.PROGRESSING, api.Phase.PAUSED}
STATUS_KEYS = frozenset(f.alias or n for n, f in api.AgentRolloutStatus.model_fields.items())
IDLE_INTERVAL = 30.0  # seconds between reconciles of a rollout that has no analysis section


class EventSink(Protocol):
    def __call__(self, body: Mapping[str, Any], type: str, reason: str, message: str) -> None: ...


@dataclass
class WrittenStatus:
    """Our last status write, kept until the watch delivers it: never plan the next tick on stale status."""

    resource_version_before: str | None = None
    status: dict[str, Any] = field(default_factory=dict)


def spec_problems_from(error: ValidationError) -> tuple[SpecProblem, ...]:
    problems = []
    for err in error.errors():
        path = "spec"
        for part in err["loc"]:
            path += f"[{part}]" if isinstance(part, int) else f".{part}"
        problems.append(SpecProblem(field=path, message=err["msg"]))
    return tuple(problems)


class Reconciler:
    def __init__(
        self,
        kube: KubeClient,
        gateway_for: Callable[[str, float], PrometheusGateway],
        events: EventSink,
        clock: Callable[[], datetime],
    ) -> None:
        self._kube = kube
        self._gateway_for = gateway_for
        self._events = events
        self._clock = clock

    async def reconcile(
        self,
        body: Mapping[str, Any],
        deployments: DeploymentLookup,
        routes: RouteLookup,
        written: WrittenStatus,
    ) -> float:
        """Reconcile once; returns seconds until the next reconcile is due."""
        meta = body["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        raw_status = dict(body.get("status") or {})
        if (
            written.resource_version_before is not None
            and meta.get("resourceVersion") == written.resource_version_before
        ):
            raw_status.update(written.status)  # the watch has not caught up with our own write yet
        status = api.parse_status(raw_status)
        now = self._clock()

        try:
            spec = api.parse_spec(dict(body.get("spec") or {}))
            problems = tuple(validate(spec))
        except ValidationError as e:
            spec, problems = None, spec_problems_from(e)

        if spec is None:
            obs = Observations(problems=problems, generation=meta.get("generation"))
            result = plan(None, status, obs, now)
            await self._act(body, None, None, result.actions, None)
            await self._write_status(namespace, name, meta, raw_status, result.status, written)
            return IDLE_INTERVAL

        route_spec = None
        if spec.traffic.gateway_api is not None:
            route_spec = routes(namespace, spec.traffic.gateway_api.http_route)
        obs = await self._observe(namespace, spec, status, problems, meta, deployments, route_spec, now)
        result = plan(spec, status, obs, now)
        await self._act(body, spec, route_spec, result.actions, obs)
        await self._write_status(namespace, name, meta, raw_status, result.status, written)

        interval = api.duration_seconds(spec.analysis.interval) if spec.analysis else IDLE_INTERVAL
        if result.requeue_after is not None:
            interval = max(0.5, min(interval, result.requeue_after))
        return interval

    async def _observe(
        self,
        namespace: str,
        spec: api.AgentRolloutSpec,
        status: api.AgentRolloutStatus,
        problems: tuple[SpecProblem, ...],
        meta: Mapping[str, Any],
        deployments: DeploymentLookup,
        route_spec: dict[str, Any] | None,
        now: datetime,
    ) -> Observations:
        legacy = deployments(namespace, spec.legacy.deployment) or DeploymentState(
            spec.legacy.deployment, exists=False
        )
        candidate = deployments(namespace, spec.candidate.deployment) or DeploymentState(
            spec.candidate.deployment, exists=False
        )
        reading = gatewayapi.RouteReading(None, "no router configured")
        if spec.traffic.gateway_api is not None:
            reading = gatewayapi.read_weights(route_spec, spec.traffic.gateway_api)

        gates: tuple[api.GateResult, ...] | None = None
        prometheus_error: str | None = None
        requests: int | None = None
        # Analysis only while the rollout is live and valid: a finished rollout costs Prometheus nothing.
        if spec.analysis is not None and status.phase in LIVE_PHASES and not problems:
            gateway = self._gateway_for(
                spec.analysis.prometheus.url, api.duration_seconds(spec.analysis.prometheus.timeout)
            )
            try:
                gates = await measure_gates(spec, namespace, gateway)
                step = spec.steps[status.current_step] if status.current_step < len(spec.steps) else None
                if (
                    step is not None
                    and step.pause is not None
                    and step.pause.min_requests
                    and status.step_started_at
                ):
                    since = (
                        now - datetime.fromisoformat(status.step_started_at.replace("Z", "+00:00"))
                    ).total_seconds()
                    requests = await candidate_requests(spec, namespace, max(since, 1.0), gateway)
            except PrometheusUnavailable as e:
                gates, prometheus_error = None, str(e)
        return Observations(
            problems=problems,
            legacy=legacy,
            candidate=candidate,
            route_weights=reading.weights,
            route_error=reading.error,
            gates=gates,
            prometheus_error=prometheus_error,
            candidate_requests=requests,
            generation=meta.get("generation"),
        )

    async def _act(
        self,
        body: Mapping[str, Any],
        spec: api.AgentRolloutSpec | None,
        route_spec: dict[str, Any] | None,
        actions: tuple[Any, ...],
        obs: Observations | None,
    ) -> None:
        namespace = body["metadata"]["namespace"]
        for action in actions:
            if isinstance(action, SetWeights):
                router = spec.traffic.gateway_api if spec else None
                if router is None or route_spec is None:
                    continue
                if obs is not None and obs.route_weights == action.weights:
                    continue  # no API write when nothing would change
                ops = gatewayapi.weight_patch(route_spec, router, action.weights)
                if not ops:
                    continue
                try:
                    await self._kube.patch_route(namespace, router.http_route, ops)
                except Conflict as e:
                    log.warning("%s; will retry on the next reconcile", e)
            elif isinstance(action, EmitEvent):
                self._events(body, action.type, action.reason, action.message)

    async def _write_status(
        self,
        namespace: str,
        name: str,
        meta: Mapping[str, Any],
        raw_status: dict[str, Any],
        new_status: api.AgentRolloutStatus,
        written: WrittenStatus,
    ) -> None:
        patch = merge_patch(raw_status, api.dump(new_status), owned=STATUS_KEYS)
        if not patch:
            return
        await self._kube.patch_rollout_status(namespace, name, patch)
        written.resource_version_before = meta.get("resourceVersion")
        written.status = api.dump(new_status)
