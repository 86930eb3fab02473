"""Gateway API HTTPRoute router, pure functions over the route's JSON.

Only the `weight` of backendRefs named like the legacy and candidate backends, and during a shadow step
one RequestMirror filter of ours in each rule carrying legacy, are ever written; every other rule,
match, filter and backendRef stays exactly as the user (or Git) wrote it. The write is a
JSON patch whose `test` ops pin each backendRef's name, so a route edited concurrently fails the patch
instead of getting a weight on the wrong backend; the next reconcile retries on fresh data.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import Field

from agent_rollout.api import ObjectName, Weights, _Model
from agent_rollout.domain import SpecProblem
from agent_rollout.traffic.router import Resource, TrafficReading
from agent_rollout.traffic.value import Mirror, MirrorReading, TrafficState

GROUP = "gateway.networking.k8s.io"
VERSION = "v1"
PLURAL = "httproutes"
KIND = "HTTPRoute"


class GatewayAPIRouter(_Model):
    """Weights on two backendRefs of a Gateway API HTTPRoute; every other part of the route is left alone."""

    http_route: ObjectName = Field(description="HTTPRoute in the rollout's namespace.")
    legacy_backend: ObjectName = Field(description="Service name of the legacy backendRef.")
    candidate_backend: ObjectName = Field(description="Service name of the candidate backendRef.")


@dataclass(frozen=True)
class RouteReading:
    weights: Weights | None
    error: str | None = None


def _backend_positions(route_spec: dict[str, Any], backend: str) -> list[tuple[int, int, dict[str, Any]]]:
    positions = []
    for r, rule in enumerate(route_spec.get("rules") or []):
        for b, ref in enumerate(rule.get("backendRefs") or []):
            if ref.get("name") == backend and ref.get("kind", "Service") == "Service":
                positions.append((r, b, ref))
    return positions


def read_weights(route_spec: dict[str, Any] | None, router: GatewayAPIRouter) -> RouteReading:
    """The legacy/candidate weights the route carries now, normalised to percent.

    Rules that disagree with each other read as `weights=None` (no error): the planner then writes the
    weights it wants, which heals the drift.
    """
    if route_spec is None:
        return RouteReading(None, f"HTTPRoute {router.http_route} not found")
    per_rule: dict[int, dict[str, int]] = {}
    for side, backend in (("legacy", router.legacy_backend), ("candidate", router.candidate_backend)):
        positions = _backend_positions(route_spec, backend)
        if not positions:
            return RouteReading(None, f"HTTPRoute {router.http_route} has no backendRef {backend!r} ({side})")
        for r, _b, ref in positions:
            # Gateway API's default weight is 1.
            per_rule.setdefault(r, {})[side] = int(ref.get("weight", 1))
    readings = set()
    for sides in per_rule.values():
        legacy, candidate = sides.get("legacy", 0), sides.get("candidate", 0)
        total = legacy + candidate
        if total == 0:
            return RouteReading(None)  # nothing routed to either: certainly not what we want
        readings.add((round(100 * legacy / total), 100 - round(100 * legacy / total)))
    if len(readings) != 1:
        return RouteReading(None)
    legacy_pct, candidate_pct = readings.pop()
    return RouteReading(Weights(legacy=legacy_pct, candidate=candidate_pct))


def weight_patch(
    route_spec: dict[str, Any], router: GatewayAPIRouter, weights: Weights
) -> list[dict[str, Any]]:
    """JSON patch ops that set the two backends' weights in every rule, guarded by name tests."""
    ops: list[dict[str, Any]] = []
    for backend, weight in (
        (router.legacy_backend, weights.legacy),
        (router.candidate_backend, weights.candidate),
    ):
        for r, b, _ref in _backend_positions(route_spec, backend):
            base = f"/spec/rules/{r}/backendRefs/{b}"
            ops.append({"op": "test", "path": f"{base}/name", "value": backend})
            ops.append({"op": "add", "path": f"{base}/weight", "value": weight})
    return ops


# ---------------------------------------------------------------- mirror (shadow steps)

MIRROR = "RequestMirror"


def mirror_filter(mirror: Mirror) -> dict[str, Any]:
    """Our filter exactly as written (group and kind spelled out, so the stored value equals it and a
    `test` of it holds: the apiserver would default them to these values anyway)."""
    ref = {"group": "", "kind": "Service", "name": mirror.service, "port": mirror.port}
    return {"type": MIRROR, "requestMirror": {"backendRef": ref, "percent": mirror.percent}}


def _ours(item: Any, targets: tuple[Mirror, ...], namespace: str | None) -> Mirror | None:
    """The mirror a filter is, when it mirrors to one of our comparators. Filters carry no name or
    annotation, so ours is recognised by content: RequestMirror to a comparator Service and port."""
    if not isinstance(item, dict) or item.get("type") != MIRROR:
        return None
    spec = item.get("requestMirror")
    ref = spec.get("backendRef") if isinstance(spec, dict) else None
    if not isinstance(ref, dict) or ref.get("group", "") != "" or ref.get("kind", "Service") != "Service":
        return None
    if ref.get("namespace") not in (None, namespace):
        return None
    assert isinstance(spec, dict)
    for target in targets:
        if ref.get("name") == target.service and ref.get("port") == target.port:
            percent = spec.get("percent")
            return Mirror(target.service, target.port, percent if isinstance(percent, int) else -1)
    return None


def _legacy_rules(route_spec: dict[str, Any], router: GatewayAPIRouter) -> list[int]:
    return sorted({r for r, _b, _ref in _backend_positions(route_spec, router.legacy_backend)})


def read_mirror(
    route_spec: dict[str, Any] | None,
    router: GatewayAPIRouter,
    targets: tuple[Mirror, ...],
    namespace: str | None = None,
) -> MirrorReading:
    """Our mirror filters in the rules that carry the legacy backendRef (`targets`: the comparators
    this rollout may mirror to; their percent is ignored)."""
    if route_spec is None or not targets:
        return MirrorReading()
    rules = route_spec.get("rules") or []
    per_rule: list[list[Mirror]] = []
    for r in _legacy_rules(route_spec, router):
        filters = rules[r].get("filters") or []
        per_rule.append([m for f in filters if (m := _ours(f, targets, namespace)) is not None])
    found = sum(len(ms) for ms in per_rule)
    if found == 0:
        return MirrorReading(None, True, 0)
    first = per_rule[0][0] if per_rule and per_rule[0] else None
    exact = first is not None and all(ms == [first] for ms in per_rule)
    return MirrorReading(first if exact else None, exact, found)


def mirror_patch(
    route_spec: dict[str, Any],
    router: GatewayAPIRouter,
    want: Mirror | None,
    targets: tuple[Mirror, ...],
    namespace: str | None = None,
) -> list[dict[str, Any]]:
    """JSON patch ops that leave exactly `want` (or none) of our filters in each rule carrying legacy.

    Exactly once: an add is preceded by a `test` of the whole rule as read (JSON patch cannot test for
    absence, and adding a `filters` member that exists would replace it), so a retried or concurrent
    write that already added one fails the patch (a conflict, retried on fresh data) instead of adding
    a second. A removal tests the exact filter at its index first. Other filters are never addressed;
    when ours is the only filter, the whole `filters` member goes, so a rule that had none is as before.
    These ops come before the weight ops of the same patch (the rule test must see the rule as read).
    """
    ops: list[dict[str, Any]] = []
    rules = route_spec.get("rules") or []
    every = (*targets, *((want,) if want is not None else ()))
    for r in _legacy_rules(route_spec, router):
        rule = rules[r]
        base = f"/spec/rules/{r}"
        filters = rule.get("filters")
        listed = filters if isinstance(filters, list) else []
        ours = [(i, f) for i, f in enumerate(listed) if _ours(f, every, namespace) is not None]
        if want is not None and [f for _i, f in ours] == [mirror_filter(want)]:
            continue  # exactly ours, exactly as wanted
        if want is not None:
            ops.append({"op": "test", "path": base, "value": rule})
        if ours and len(ours) == len(listed) and want is None:
            ops.append({"op": "test", "path": f"{base}/filters", "value": listed})
            ops.append({"op": "remove", "path": f"{base}/filters"})
            continue
        for i, f in reversed(ours):  # from the end, so earlier indexes stay valid
            ops.append({"op": "test", "path": f"{base}/filters/{i}", "value": f})
            ops.append({"op": "remove", "path": f"{base}/filters/{i}"})
        if want is None:
            continue
        if isinstance(filters, list):
            ops.append({"op": "add", "path": f"{base}/filters/-", "value": mirror_filter(want)})
        else:
            ops.append({"op": "add", "path": f"{base}/filters", "value": [mirror_filter(want)]})
    return ops


def traffic_patch(
    route_spec: dict[str, Any],
    router: GatewayAPIRouter,
    want: TrafficState,
    targets: tuple[Mirror, ...],
    namespace: str | None = None,
) -> list[dict[str, Any]]:
    """One atomic JSON patch from the route as read to `want`: the mirror first, then the weights, so
    there is no moment with both a mirror and candidate weight, nor a mirror left after a rollback."""
    mirror_ops = mirror_patch(route_spec, router, want.mirror, targets, namespace)
    return [*mirror_ops, *weight_patch(route_spec, router, want.weights)]


def mirror_conflict(
    route_spec: dict[str, Any] | None,
    router: GatewayAPIRouter,
    others: tuple[Mirror, ...],
    namespace: str | None = None,
) -> str | None:
    """A RequestMirror filter to a comparator a shadow step would mirror to, that the operator did not
    write. Filters carry no owner, so an identical one cannot be told from ours by content: it is never
    adopted (removing it would undo the user's mirror), and a second one is never added beside it (the
    comparator would count every request twice)."""
    found = read_mirror(route_spec, router, others, namespace)
    if found.found == 0:
        return None
    targets = ", ".join(f"{m.service}:{m.port}" for m in others)
    return (
        f"{KIND} {router.http_route} already has a RequestMirror filter to the comparator ({targets}) "
        "that the operator did not write: remove it, or mirror to another comparator, for the shadow "
        "step to start"
    )


class GatewayAPI:
    """The Gateway API router: spec.traffic.gatewayAPI."""

    key = "gatewayAPI"
    config_model = GatewayAPIRouter
    resource = Resource(GROUP, VERSION, PLURAL, KIND)
    object_field = "httpRoute"
    supports_mirror = True

    def object_name(self, config: GatewayAPIRouter) -> str:
        return config.http_route

    def backends(self, config: GatewayAPIRouter) -> tuple[str, str]:
        return config.legacy_backend, config.candidate_backend

    def read(
        self,
        obj_spec: dict[str, Any] | None,
        config: GatewayAPIRouter,
        mirrors: tuple[Mirror, ...] = (),
        others: tuple[Mirror, ...] = (),
        namespace: str | None = None,
    ) -> TrafficReading:
        weights = read_weights(obj_spec, config)
        return TrafficReading(
            weights.weights,
            weights.error,
            read_mirror(obj_spec, config, mirrors, namespace),
            mirror_conflict(obj_spec, config, others, namespace),
        )

    def patch(
        self,
        obj_spec: dict[str, Any],
        config: GatewayAPIRouter,
        want: TrafficState,
        mirrors: tuple[Mirror, ...] = (),
        namespace: str | None = None,
    ) -> list[dict[str, Any]]:
        return traffic_patch(obj_spec, config, want, mirrors, namespace)

    def problems(self, config: GatewayAPIRouter, path: str) -> list[SpecProblem]:
        if config.legacy_backend != config.candidate_backend:
            return []
        return [
            SpecProblem(
                f"{path}.candidateBackend",
                f"candidateBackend and legacyBackend are the same Service {config.candidate_backend!r}",
            )
        ]


ROUTER = GatewayAPI()
