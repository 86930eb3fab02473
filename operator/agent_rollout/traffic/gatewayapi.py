"""Gateway API HTTPRoute router, pure functions over the route's JSON.

Only the `weight` of backendRefs named like the legacy and candidate backends is ever written; every
other rule, match, filter and backendRef stays exactly as the user (or Git) wrote it. The write is a
JSON patch whose `test` ops pin each backendRef's name, so a route edited concurrently fails the patch
instead of getting a weight on the wrong backend; the next reconcile retries on fresh data.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from agent_rollout.api import GatewayAPIRouter, Weights

GROUP = "gateway.networking.k8s.io"
VERSION = "v1"
PLURAL = "httproutes"


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
