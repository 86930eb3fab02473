"""Fixtures for operator e2e tests: the CRD installed, the real operator process, and a scene builder.

The operator runs as its own process (`agent-rollout-operator`), exactly as in production, against the
real apiserver and Prometheus of the session; tests can kill -9 and restart it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from agent_rollout import api
from e2e.cluster import ClusterState
from e2e.cluster.kubeapi import KubeApi
from e2e.rollout.scene import CANDIDATE, CRD_FILE, LEGACY, ROUTE, OperatorProcess, Scene
from e2e.sim.launcher import AgentGroup
from e2e.sim.traffic import TrafficDriver


@pytest.fixture(scope="session")
def crd_installed(cluster: ClusterState, kubectl: Callable[..., Any]) -> None:
    kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD_FILE))
    kubectl("wait", "--for=condition=Established", "--timeout=30s", f"crd/{api.PLURAL}.{api.GROUP}")


@pytest.fixture(scope="session")
def operator(cluster: ClusterState, crd_installed: None, kube_api: KubeApi) -> Iterator[OperatorProcess]:
    proc = OperatorProcess(cluster.kubeconfig, cluster.run_dir / "operator.log")
    proc.start()
    yield proc
    # Delete rollouts while the operator still runs, so it releases its finalizers and namespaces go.
    for item in kube_api.custom.list_cluster_custom_object(api.GROUP, api.VERSION, api.PLURAL)["items"]:
        meta = item["metadata"]
        kube_api.custom.delete_namespaced_custom_object(
            api.GROUP, api.VERSION, meta["namespace"], api.PLURAL, meta["name"]
        )
    time.sleep(1)
    proc.stop()


@pytest.fixture(autouse=True)
def _operator_log_on_failure(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed and "operator" in request.fixturenames:
        proc: OperatorProcess = request.getfixturevalue("operator")
        print(f"\n--- operator log (tail) ---\n{proc.log_tail()}")


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    setattr(item, f"rep_{report.when}", report)


@pytest.fixture
def scene(
    namespace: str,
    kube_api: KubeApi,
    kubectl: Callable[..., Any],
    cluster: ClusterState,
    sim_agents: Callable[..., AgentGroup],
    traffic: Callable[..., TrafficDriver],
    operator: OperatorProcess,
) -> Callable[..., Scene]:
    """scene(candidate={...fault profile...}, legacy={...}, rps=40) -> Scene with traffic already flowing."""

    def build(
        candidate: dict[str, Any] | None = None,
        legacy: dict[str, Any] | None = None,
        rps: float = 40.0,
        duration_s: float = 240.0,
    ) -> Scene:
        fast = {"latency_sleep": False}
        agents = sim_agents(
            namespace, {LEGACY: {**fast, **(legacy or {})}, CANDIDATE: {**fast, **(candidate or {})}}
        )
        kube_api.create_agent_backends(namespace, {LEGACY: LEGACY, CANDIDATE: CANDIDATE})
        kube_api.create_httproute(namespace, ROUTE, {LEGACY: 100, CANDIDATE: 0})
        for name in (LEGACY, CANDIDATE):
            kube_api.wait_deployment_available(namespace, name)
        driver = traffic(namespace, ROUTE, agents.urls())
        driver.start(max_requests=int(rps * duration_s), duration_s=duration_s, rps=rps)
        assert operator.alive(), f"operator died:\n{operator.log_tail()}"
        return Scene(namespace, kube_api, kubectl, cluster.prometheus_url, agents, driver)

    return build
