"""A new rollout's first write is its status (planner.first_sight), and the finalizer comes only
before the first route write: through the real Controller and Reconciler, on the fake apiserver of
test_routers whose writes come back through the watch.

Why it matters: 10,000 rollouts created at once each needed a finalizer, a route and a status write
before their first status, so the last of them was told it had been seen 23 minutes later.
"""

from __future__ import annotations

import asyncio
import copy
from typing import Any

from agent_rollout import api
from agent_rollout.controller import Controller
from agent_rollout.deletion import FINALIZER
from agent_rollout.kube import FIRST_STATUS, OTHER
from agent_rollout.reconcile import Reconciler
from agent_rollout.sentinel import Sentinel
from agent_rollout.traffic.router import Resource
from tests.fakes import EventLog, FakeClock
from tests.specs import CANDIDATE, LEGACY, spec_dict
from tests.test_reconcile import NS, route_object
from tests.test_routers import Cluster, ClusterKube, deployment, rollout, until

MOVES, WAITS = "moves-first", "approval-first"


class RecordingKube(ClusterKube):
    """Every write of the operator, in order: (what, rollout or route, priority or None)."""

    def __init__(self, cluster: Cluster) -> None:
        super().__init__(cluster)
        self.order: list[tuple[str, str, int | None]] = []

    async def add_finalizer(self, namespace: str, name: str, *args: Any) -> None:
        self.order.append(("finalizer", name, None))
        await super().add_finalizer(namespace, name, *args)

    async def patch_rollout_status(
        self, namespace: str, name: str, patch: dict[str, Any], priority: int = 2
    ) -> dict[str, Any]:
        self.order.append(("status", name, priority))
        return await super().patch_rollout_status(namespace, name, patch, priority)

    async def patch_route(
        self, resource: Resource, namespace: str, name: str, ops: list[dict[str, Any]]
    ) -> None:
        self.order.append(("route", name, None))
        await super().patch_route(resource, namespace, name, ops)


def traffic(route: str) -> dict[str, Any]:
    return {"gatewayAPI": {"httpRoute": route, "legacyBackend": LEGACY, "candidateBackend": CANDIDATE}}


def test_the_first_write_acknowledges_and_the_finalizer_waits_for_the_first_route_write() -> None:
    cluster = Cluster()
    for name in (LEGACY, CANDIDATE):
        cluster.put("deployments", deployment(name))
    for route in (MOVES, WAITS):
        obj = route_object()
        obj["metadata"]["name"] = route
        cluster.put("httproutes", obj)
    approval = {"pause": {}}
    cluster.put(
        api.PLURAL,
        rollout(
            MOVES,
            "2026-01-01T00:00:00Z",
            spec_dict(traffic=traffic(MOVES), steps=[{"setWeight": 10}, approval]),
        ),
    )
    cluster.put(
        api.PLURAL,
        rollout(
            WAITS,
            "2026-01-01T00:00:01Z",
            spec_dict(traffic=traffic(WAITS), steps=[approval, {"setWeight": 10}]),
        ),
    )
    kube = RecordingKube(cluster)
    reconciler = Reconciler(
        kube=kube, gateway_for=lambda url, timeout: None, events=EventLog(), clock=FakeClock()
    )
    controller = Controller(reconciler, Sentinel(clock=FakeClock()), kube, cluster, workers=2)  # type: ignore[arg-type]

    def stored(name: str) -> dict[str, Any]:
        return copy.deepcopy(cluster.objects[api.PLURAL][(NS, name)])

    def phase(name: str) -> str | None:
        return (stored(name).get("status") or {}).get("phase")

    async def scenario() -> None:
        await controller.run()
        try:
            await until(
                lambda: stored(MOVES).get("status", {}).get("currentStep") == 1 and phase(WAITS) == "Paused",
                "both rollouts waiting for their approval",
            )
        finally:
            await controller.stop()

    asyncio.run(scenario())

    for name in (MOVES, WAITS):
        writes = [(what, priority) for what, target, priority in kube.order if target == name]
        # The first write of each is its status, ranked before every write but a route's.
        assert writes[0] == ("status", FIRST_STATUS), writes
        assert all(p == OTHER for what, p in writes[1:] if what == "status"), writes
    moved = [what for what, target, _ in kube.order if target == MOVES]
    assert moved.index("finalizer") < moved.index("route")
    assert FINALIZER in stored(MOVES)["metadata"].get("finalizers", [])
    # Approval first: no traffic moved, nothing to undo at deletion, so no finalizer was written.
    assert "route" not in [what for what, target, _ in kube.order if target == WAITS]
    assert FINALIZER not in (stored(WAITS)["metadata"].get("finalizers") or [])
