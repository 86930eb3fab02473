"""Fixtures for operator e2e tests: the CRD installed, the real operator process, and a scene builder.

The operator runs as its own process (`agent-rollout-operator`), exactly as in production, against the
real apiserver and Prometheus of the session; tests can kill -9 and restart it. It authenticates as the
chart's ServiceAccount (a TokenRequest token), bound by the RBAC the chart renders, with the chart's
status admission policy installed: a permission the chart lacks fails the suite.
"""

from __future__ import annotations

import contextlib
import json
import re
import secrets
import socket
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from agent_rollout import api
from e2e.cluster import ClusterState, chart, identity, prometheus
from e2e.cluster.kubeapi import KubeApi
from e2e.cluster.kubectl import run_kubectl, wait_established
from e2e.cluster.lifecycle import in_outage
from e2e.cluster.podrunner import PodRunner, pod_runner
from e2e.cluster.ports import free_ports
from e2e.rollout.scene import CANDIDATE, CRD_FILE, LEGACY, ROUTE, OperatorProcess, Scene, wait_until
from e2e.sim.launcher import AgentGroup
from e2e.sim.traffic import TrafficDriver


@pytest.fixture(scope="session")
def crd_installed(cluster: ClusterState, kubectl: Callable[..., Any]) -> None:
    kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD_FILE))
    wait_established(kubectl, f"{api.PLURAL}.{api.GROUP}", timeout_s=30)


# What kopf logs when RBAC refuses it something (it then degrades instead of failing), and what the
# Kubernetes client's ApiException says for a 403.
PERMISSION_TROUBLE = re.compile(r"\bforbidden\b|not enough permissions", re.IGNORECASE)


# 403s that are not RBAC: an Event posted into a namespace a test is deleting, and a write an admission
# policy of a test denies on purpose (test_safety's change freeze).
NOT_RBAC = re.compile(r"NamespaceTerminating|being terminated|denied request|ValidatingAdmissionPolicy")


LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),\d+ ")


def permission_trouble(log_text: str) -> list[str]:
    """403s in the operator's log, but those while a test restarts the apiserver on purpose (its RBAC
    authorizer denies everything for a moment after a start, before its caches are filled)."""
    trouble, at = [], 0.0
    for line in log_text.splitlines():
        stamp = LOG_TIME.match(line)
        if stamp:  # lines of a traceback belong to the last stamped line
            at = time.mktime(time.strptime(stamp.group(1), "%Y-%m-%d %H:%M:%S"))
        if PERMISSION_TROUBLE.search(line) and not NOT_RBAC.search(line) and not in_outage(at):
            trouble.append(line)
    return trouble


def wait_for_rbac(cluster: ClusterState, kubeconfig: Path, *checks: tuple[str, ...]) -> None:
    """Until the kubeconfig's identity is allowed each `kubectl auth can-i`: RBAC caches take a moment."""

    def allowed() -> bool:
        for check in checks:
            done = run_kubectl(cluster.kubectl_bin, kubeconfig, "auth", "can-i", *check, check=False)
            if done.stdout.strip() != "yes":
                return False
        return True

    wait_until(f"RBAC of {kubeconfig.name} to take effect", allowed, timeout_s=30)


@pytest.fixture(scope="session")
def operator_kubeconfig(cluster: ClusterState, crd_installed: None, kubectl: Any, kube_api: KubeApi) -> Path:
    """A kubeconfig with a token of the chart's ServiceAccount, bound by the chart's own rendered RBAC."""
    chart.install_access(kubectl, chart.SESSION_VALUES)
    path = identity.service_account_kubeconfig(
        kube_api, chart.RELEASE_NAMESPACE, chart.RELEASE, chart.operator_kubeconfig_path(cluster.run_dir)
    )
    wait_for_rbac(
        cluster,
        path,
        ("watch", f"{api.PLURAL}.{api.GROUP}", "--all-namespaces"),
        ("patch", f"{api.PLURAL}.{api.GROUP}", "--subresource=status", "--all-namespaces"),
        ("create", "events", "--all-namespaces"),
    )
    return path


@dataclass(frozen=True)
class OperatorEndpoints:
    """The session operator's own servers: /metrics (scraped by the cluster's Prometheus as job
    agent-rollout-operator) and the Alertmanager webhook receiver, behind the token in token_file."""

    metrics_port: int
    alerts_port: int
    token_file: Path

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def listening(self) -> bool:
        """Both servers accept connections (the operator opens them while it starts)."""
        for port in (self.metrics_port, self.alerts_port):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
            except OSError:
                return False
        return True

    def sample(self, name: str, **labels: str) -> float | None:
        """A sample of the operator's /metrics by name and labels, scraped now (None: not there)."""
        with urllib.request.urlopen(self.metrics_url, timeout=5) as resp:
            return prometheus.text_sample(resp.read().decode(), name, **labels)

    @property
    def alerts_url(self) -> str:
        return f"http://127.0.0.1:{self.alerts_port}/alerts"


@pytest.fixture(scope="session")
def operator_endpoints(cluster: ClusterState) -> OperatorEndpoints:
    metrics_port, alerts_port = free_ports(2)
    token_file = cluster.run_dir / "alert-receiver.token"
    token_file.write_text(secrets.token_urlsafe(24) + "\n")
    return OperatorEndpoints(metrics_port, alerts_port, token_file)


@pytest.fixture(scope="session")
def operator(
    cluster: ClusterState, operator_kubeconfig: Path, kube_api: KubeApi, operator_endpoints: OperatorEndpoints
) -> Iterator[OperatorProcess]:
    # Every evaluation is written to status, so tests can watch them; the write budget (lastAnalysis
    # refreshed every 5 minutes unless a verdict changes) is the unit tests' and `make bench`'s to prove.
    ends = operator_endpoints
    args = [
        "--listen=127.0.0.1",
        f"--metrics-port={ends.metrics_port}",
        f"--alerts-port={ends.alerts_port}",
        f"--alerts-token-file={ends.token_file}",
    ]
    proc = OperatorProcess(
        operator_kubeconfig,
        cluster.run_dir / "operator.log",
        args=args,
        # A hung notification sink holds an attempt 20 s (4 analysis intervals): were a delivery ever on the
        # reconcile path, test_notifications.py would see the steps slow down by that much.
        env={"AGENT_ROLLOUT_ANALYSIS_REFRESH": "0", "AGENT_ROLLOUT_NOTIFY_TIMEOUT": "20"},
        # Tests restart this operator (test_ha, test_safety); a test that runs next must not find its
        # servers still closed (a refused connection is no answer): each start waits for them.
        ready=ends.listening,
    )
    # The cluster's Prometheus scrapes the operator's metrics (the alert rules of the chart read them).
    target = [{"targets": [f"127.0.0.1:{ends.metrics_port}"], "labels": {"cluster": cluster.name}}]
    (prometheus.operator_sd_dir(cluster.run_dir) / "session.json").write_text(json.dumps(target))
    log_start = proc.log_path.stat().st_size if proc.log_path.exists() else 0  # a reused cluster appends
    proc.start()
    yield proc
    # Delete the rollouts before their namespaces, while the operator still runs (as a user would).
    for item in kube_api.custom.list_cluster_custom_object(api.GROUP, api.VERSION, api.PLURAL)["items"]:
        meta = item["metadata"]
        kube_api.custom.delete_namespaced_custom_object(
            api.GROUP, api.VERSION, meta["namespace"], api.PLURAL, meta["name"]
        )
    # Each waits for the operator's finalizer: traffic to legacy first (deletion.py).
    wait_until(
        "every rollout deleted",
        lambda: not kube_api.custom.list_cluster_custom_object(api.GROUP, api.VERSION, api.PLURAL)["items"],
        timeout_s=60,
    )
    proc.stop()
    # kopf only warns when RBAC refuses it a list or watch, and carries on degraded: make it loud here.
    with proc.log_path.open("rb") as log:
        log.seek(log_start)
        trouble = permission_trouble(log.read().decode(errors="replace"))
    assert not trouble, "the operator was refused something by the chart's RBAC:\n" + "\n".join(trouble[:20])


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


@pytest.fixture
def runner(cluster: ClusterState) -> Iterator[Callable[[Scene], PodRunner]]:
    """runner(scene) -> the pod runner (e2e/cluster/podrunner.py) for the scene's evaluation Jobs, with
    the scene's Services resolved to its agents as cluster DNS would."""
    with contextlib.ExitStack() as stack:

        def start(s: Scene) -> PodRunner:
            urls = s.agents.urls()

            def resolve(namespace: str, service: str) -> str | None:
                return urls.get(service) if namespace == s.namespace else None

            return stack.enter_context(pod_runner(cluster.kubeconfig, resolve, cluster.run_dir))

        yield start
