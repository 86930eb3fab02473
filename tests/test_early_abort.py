"""An abort is routed before every informer has its first list: through the real Controller and
Reconciler, on test_routers' fake apiserver, with the Deployments list held back.

Why: at 10,000 rollouts an operator restart lists 40,000 objects first, and an abort patched at the
restart reached the route 20.6 s later; nothing was reconciled before the last list was in.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import threading
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException

from agent_rollout import api
from agent_rollout.controller import EARLY_READS, Controller
from agent_rollout.deletion import FINALIZER
from agent_rollout.kube import Kind
from agent_rollout.reconcile import Reconciler
from agent_rollout.sentinel import Sentinel
from tests.fakes import EventLog, FakeClock
from tests.specs import CANDIDATE, LEGACY, ROUTE, spec_dict
from tests.test_reconcile import NAME, NS, route_object
from tests.test_routers import Cluster, ClusterKube, deployment, rollout, until


class SlowCluster(Cluster):
    """Lists the `held` kinds (whole, not by a field selector) only once `release` is set (a big list
    still on its way); answers GETs."""

    def __init__(self, held: tuple[str, ...] = ("deployments",)) -> None:
        super().__init__()
        self.held = held
        self.release = threading.Event()
        self.reads: list[tuple[str, str]] = []
        self.reading = 0  # GETs in progress now, and the most there were at once
        self.most_at_once = 0
        self._lock = threading.Lock()

    def list_page(self, kind: Kind, namespace: str | None, limit: int, token: str | None) -> dict[str, Any]:
        if kind.plural in self.held and kind.field_selector is None:
            self.release.wait(30)
        return super().list_page(kind, namespace, limit, token)

    def read(self, kind: Kind, namespace: str, name: str) -> dict[str, Any] | None:
        with self._lock:
            self.reads.append((kind.plural, name))
            self.reading += 1
            self.most_at_once = max(self.most_at_once, self.reading)
        time.sleep(0.01)  # a GET takes a while: the others pile up meanwhile if nothing bounds them
        try:
            obj = self.objects[kind.plural].get((namespace, name))
            return copy.deepcopy(obj) if obj is not None else None
        finally:
            with self._lock:
                self.reading -= 1


def aborted_mid_step(
    deleted_legacy: bool = False, held: tuple[str, ...] = ("deployments",)
) -> tuple[SlowCluster, ClusterKube, Controller]:
    cluster = SlowCluster(held)
    for name in (LEGACY, CANDIDATE):
        if not (deleted_legacy and name == LEGACY):
            cluster.put("deployments", deployment(name))
    cluster.put("httproutes", route_object(legacy=75, candidate=25))
    body = rollout(NAME, "2026-01-01T00:00:00Z", spec_dict(steps=[{"setWeight": 25}, {"pause": {}}]))
    body["metadata"]["finalizers"] = [FINALIZER]
    valid = {
        "type": "SpecValid",
        "status": "True",
        "reason": "Valid",
        "message": "spec passed validation",
        "lastTransitionTime": "2026-01-01T00:00:00Z",
    }
    body["status"] = {
        "phase": "Paused",
        "currentStep": 1,
        "sequence": 3,
        "stepStartedAt": "2026-01-01T00:01:00Z",
        "weights": {"legacy": 75, "candidate": 25},
        "candidateRevision": None,
        "conditions": [valid],
        "abort": True,  # patched by a human while no operator ran
    }
    cluster.put(api.PLURAL, body)
    kube = ClusterKube(cluster)
    reconciler = Reconciler(
        kube=kube, gateway_for=lambda url, timeout: None, events=EventLog(), clock=FakeClock()
    )
    return cluster, kube, Controller(reconciler, Sentinel(clock=FakeClock()), kube, cluster, workers=2)  # type: ignore[arg-type]


@contextlib.asynccontextmanager
async def running(controller: Controller, cluster: SlowCluster) -> AsyncIterator[None]:
    """The controller runs for the block; then the held lists come and it stops."""
    task = asyncio.get_running_loop().create_task(controller.run())
    try:
        yield
    finally:
        cluster.release.set()
        await task
        await controller.stop()


def candidate_weight(cluster: Cluster) -> int:
    weight: int = cluster.spec("httproutes", ROUTE)["rules"][0]["backendRefs"][1]["weight"]
    return weight


def test_an_abort_reaches_the_route_before_the_deployments_are_listed() -> None:
    cluster, _, controller = aborted_mid_step()

    async def scenario() -> None:
        async with running(controller, cluster):
            await until(
                lambda: (
                    candidate_weight(cluster) == 0
                    and cluster.objects[api.PLURAL][(NS, NAME)]["status"]["phase"] == "RolledBack"
                ),
                "the abort routed and recorded",
            )
            assert not controller.synced  # the Deployments are still being listed
            assert ("deployments", LEGACY) in cluster.reads

    asyncio.run(scenario())


def test_an_early_abort_with_legacy_gone_sends_no_traffic_to_nowhere() -> None:
    cluster, _, controller = aborted_mid_step(deleted_legacy=True)

    async def scenario() -> None:
        async with running(controller, cluster):
            await until(
                lambda: cluster.objects[api.PLURAL][(NS, NAME)]["status"].get("phase") == "RolledBack",
                "the abort recorded",
            )
            assert candidate_weight(cluster) == 25  # legacy is missing: the route is left as it is

    asyncio.run(scenario())


def test_early_aborts_read_their_targets_a_few_at_a_time() -> None:
    """The early GETs share the list/watch client's connection pool, sized for the watches and
    EARLY_READS more: five aborts at a 10,000-rollout restart logged "connection pool is full"."""
    cluster, _, controller = aborted_mid_step()
    for i in range(12):  # twelve more aborted rollouts, each in its namespace with its targets
        for plural in ("deployments", "httproutes", api.PLURAL):
            for obj in [o for (ns, _), o in list(cluster.objects[plural].items()) if ns == NS]:
                twin = copy.deepcopy(obj)
                twin["metadata"]["namespace"] = f"team-{i}"
                cluster.put(plural, twin)

    async def scenario() -> None:
        # As on a machine with many cores (the default executor has cores + 4 threads).
        asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(64))
        async with running(controller, cluster):
            await until(
                lambda: all(
                    r["status"].get("phase") == "RolledBack" for r in cluster.objects[api.PLURAL].values()
                ),
                "every abort recorded",
            )
            assert not controller.synced  # all of them before the Deployments are listed
            assert len(cluster.reads) == 13 * 3  # two Deployments and a route each
            assert 1 < cluster.most_at_once <= EARLY_READS

    asyncio.run(scenario())


def test_an_abort_reaches_the_route_before_every_rollout_is_listed() -> None:
    """The aborted rollouts are listed on their own (a field selector on status.abort): at 10,000
    rollouts an abort at a restart waited 5.7 s of its 8.3 s for the list of every rollout."""
    cluster, _, controller = aborted_mid_step(held=("deployments", api.PLURAL))

    async def scenario() -> None:
        async with running(controller, cluster):
            await until(lambda: candidate_weight(cluster) == 0, "the abort routed")
            assert not controller.rollouts.synced.is_set()  # every rollout is still being listed
        assert cluster.objects[api.PLURAL][(NS, NAME)]["status"]["phase"] == "RolledBack"

    asyncio.run(scenario())


def claimed_by_an_older_rollout(older_aborted: bool) -> tuple[SlowCluster, Controller]:
    """The aborted rollout shares its route with another rollout, created a minute before (owner) or
    after it; every rollout's list is held back."""
    cluster, _, controller = aborted_mid_step(held=("deployments", api.PLURAL))
    created = "2025-12-31T23:59:00Z" if not older_aborted else "2026-01-01T00:01:00Z"
    other = rollout("other", created, spec_dict(steps=[{"setWeight": 25}, {"pause": {}}]))
    cluster.put(api.PLURAL, other)
    return cluster, controller


def routed_condition(cluster: Cluster) -> str | None:
    conditions = cluster.objects[api.PLURAL][(NS, NAME)].get("status", {}).get("conditions") or ()
    return next((c["reason"] for c in conditions if c["type"] == "TrafficRouted"), None)


def test_an_early_abort_leaves_a_route_another_rollout_owns_alone() -> None:
    """Before every rollout is listed, the route's owner comes from the rollouts claiming it, listed by
    the CRD's selectable claim field: the same rule as after the lists (the oldest claim owns it)."""
    cluster, controller = claimed_by_an_older_rollout(older_aborted=False)

    async def scenario() -> None:
        async with running(controller, cluster):
            await until(lambda: routed_condition(cluster) == "RouteClaimed", "the claim recorded")
            assert not controller.rollouts.synced.is_set()
            assert candidate_weight(cluster) == 25  # the older rollout's route: not ours to write
            assert "AgentRollout other" in cluster.objects[api.PLURAL][(NS, NAME)]["status"]["message"]

    asyncio.run(scenario())


def test_an_early_abort_routes_a_shared_route_it_owns() -> None:
    cluster, controller = claimed_by_an_older_rollout(older_aborted=True)

    async def scenario() -> None:
        async with running(controller, cluster):
            await until(lambda: candidate_weight(cluster) == 0, "the abort routed")
            assert not controller.rollouts.synced.is_set()

    asyncio.run(scenario())


class OlderApiserver(SlowCluster):
    """Kubernetes before 1.31: a field selector on a custom resource's status is refused (400)."""

    def list_page(self, kind: Kind, namespace: str | None, limit: int, token: str | None) -> dict[str, Any]:
        if kind.field_selector is not None and kind.field_selector.startswith("status."):
            raise ApiException(status=400, reason="field label not supported: status.abort")
        return super().list_page(kind, namespace, limit, token)


def test_on_an_older_apiserver_an_abort_waits_for_the_rollouts_list_only(
    caplog: pytest.LogCaptureFixture,
) -> None:
    cluster, _, controller = aborted_mid_step()
    cluster.__class__ = OlderApiserver

    async def scenario() -> None:
        async with running(controller, cluster):
            await until(lambda: candidate_weight(cluster) == 0, "the abort routed")
            assert not controller.synced  # the Deployments are still being listed

    asyncio.run(scenario())
    assert "cannot list AgentRollouts by status.abort" in caplog.text
