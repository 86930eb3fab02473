"""pytest fixtures of the e2e suite: a real control plane, Prometheus, simulated agents, traffic.

Every test under e2e/ is marked `e2e`. The suite never skips: when the cluster cannot start, each test
fails with the tail of the component logs (the logs stay under .cache/run/<session>/logs).
"""

from __future__ import annotations

import re
import secrets
import subprocess
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from kubernetes.client import ApiClient
from prometheus_api_client import PrometheusConnect

from e2e.cluster import ClusterStartError, ClusterState, stop_cluster, tools
from e2e.cluster.kubeapi import KubeApi, new_api_client
from e2e.cluster.kubectl import kubectl_for
from e2e.cluster.session import acquire_cluster
from e2e.sim.launcher import AgentGroup, start_agents
from e2e.sim.profile import FaultProfile
from e2e.sim.traffic import TrafficDriver

E2E_DIR = Path(__file__).parent
DEFAULT_VERSIONS: Mapping[str, Mapping[str, Any]] = {"legacy": {}, "candidate": {}}

_prepare_error: str | None = None

StartAgents = Callable[..., AgentGroup]
StartTraffic = Callable[..., TrafficDriver]
Kubectl = Callable[..., "subprocess.CompletedProcess[str]"]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if E2E_DIR in Path(str(item.path)).parents:
            item.add_marker(pytest.mark.e2e)


def pytest_collection_finish(session: pytest.Session) -> None:
    """Build binaries and install system packages before any test runs.

    A cold build takes minutes; done here it does not count against the first test's timeout.
    """
    global _prepare_error
    if not any(item.get_closest_marker("e2e") for item in session.items):
        return
    try:
        tools.ensure_system_deps()
        tools.kube_bin_dir()
        tools.gateway_api_crd_dir()
        tools.helm_bin()
    except tools.ToolError as e:
        _prepare_error = str(e)


@pytest.fixture(scope="session")
def cluster(request: pytest.FixtureRequest) -> Iterator[ClusterState]:
    """The control plane and Prometheus, once per session (or a healthy one from `cluster up`)."""
    if _prepare_error:
        pytest.fail(f"e2e prerequisites failed:\n{_prepare_error}", pytrace=False)
    try:
        state, owned = acquire_cluster()
    except (ClusterStartError, tools.ToolError) as e:
        pytest.fail(str(e), pytrace=False)
    yield state
    if owned:
        # Logs of a session with failures stay for a look; a clean session leaves nothing behind.
        stop_cluster(state, keep_logs=request.session.testsfailed > 0)


@pytest.fixture(scope="session")
def kube_api(cluster: ClusterState) -> Iterator[KubeApi]:
    api = KubeApi(cluster.kubeconfig)
    yield api
    api.close()


@pytest.fixture(scope="session")
def kubectl(cluster: ClusterState) -> Kubectl:
    return kubectl_for(cluster)


@pytest.fixture(scope="session")
def prometheus(cluster: ClusterState) -> PrometheusConnect:
    return PrometheusConnect(url=cluster.prometheus_url, disable_ssl=True)


def _namespace_name(test_name: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", test_name.lower()).strip("-")[:40].strip("-")
    return f"e2e-{slug}-{secrets.token_hex(3)}"


@pytest.fixture
def namespace(kube_api: KubeApi, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace per test, deleted afterwards (without waiting for finalization)."""
    name = _namespace_name(request.node.name)
    body: Any = {"metadata": {"name": name, "labels": {"e2e.agent-rollout.dev/test": "true"}}}
    kube_api.core.create_namespace(body)
    yield name
    kube_api.core.delete_namespace(name, propagation_policy="Background")


@pytest.fixture
def sim_agents(cluster: ClusterState) -> Iterator[StartAgents]:
    """Factory: sim_agents(namespace, versions=None, *, wait_scraped=True, seed=None) -> AgentGroup.

    versions maps a version name (the `version` label) to a FaultProfile or a dict of its fields;
    default {"legacy": {}, "candidate": {}}. Agents are registered with Prometheus under that
    namespace and stopped (and unregistered) at the end of the test.

    The pods labelled agent-rollout.dev/version=<version> in that namespace (kube_api.create_deployment
    labels them so) are Ready only while that version's agent serves: group.kill("candidate") or
    group.stop("candidate") takes the candidate Deployment's availableReplicas to 0 within about a
    second, group.start("candidate") brings it back on the same URL (see e2e/sim/launcher.py).
    """
    groups: list[AgentGroup] = []

    def start(
        namespace: str,
        versions: Mapping[str, FaultProfile | Mapping[str, Any]] | None = None,
        *,
        wait_scraped: bool = True,
        seed: int | None = None,
    ) -> AgentGroup:
        group = start_agents(
            namespace,
            versions or DEFAULT_VERSIONS,
            file_sd_dir=cluster.file_sd_dir,
            prometheus_url=cluster.prometheus_url,
            log_dir=cluster.run_dir / "agents",
            seed=seed,
            kubeconfig=cluster.kubeconfig,
        )
        groups.append(group)
        if wait_scraped:
            group.wait_scraped()
        return group

    yield start
    for group in groups:
        group.close()


@pytest.fixture
def traffic(cluster: ClusterState) -> Iterator[StartTraffic]:
    """Factory: traffic(namespace, httproute, backends, **options) -> TrafficDriver (not yet sending).

    backends maps a backend Service name to an agent URL, e.g. agents.urls() when the Services are
    named after the versions. Options: concurrency=4, seed=None. Drive it with
    driver.run(max_requests=..., duration_s=..., rps=None) or start(...)/stop(); closed at test end.
    """
    started: list[tuple[TrafficDriver, ApiClient]] = []

    def start(namespace: str, httproute: str, backends: Mapping[str, str], **options: Any) -> TrafficDriver:
        # Its own client: the watch thread must not share connections with the test's calls.
        api_client = new_api_client(cluster.kubeconfig)
        driver = TrafficDriver(api_client, namespace, httproute, backends, **options)
        started.append((driver, api_client))
        return driver

    yield start
    for driver, api_client in started:
        driver.close()
        api_client.close()  # type: ignore[no-untyped-call]
