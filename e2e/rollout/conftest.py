"""Fixtures for operator e2e tests: the CRD installed, the real operator process, and a scene builder.

The operator runs as its own process (`agent-rollout-operator`), exactly as in production, against the
real apiserver and Prometheus of the session; tests can kill -9 and restart it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent_rollout import api
from e2e.cluster import ClusterState
from e2e.cluster.kubeapi import KubeApi
from e2e.sim.launcher import AgentGroup
from e2e.sim.traffic import TrafficDriver

REPO = Path(__file__).resolve().parents[2]
CRD_FILE = REPO / "crds" / f"{api.PLURAL}.{api.GROUP}.yaml"
LEGACY, CANDIDATE, ROUTE = "triage-rules", "triage-agent", "triage"


def wait_until(what: str, check: Callable[[], Any], timeout_s: float = 60.0, every_s: float = 0.2) -> Any:
    """Poll until check() returns something truthy; fail naming what we waited for."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(every_s)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what} (last: {last!r})")


class OperatorProcess:
    """The operator as a child process with its own log; kill() is a hard kill -9."""

    def __init__(self, kubeconfig: Path, log_path: Path) -> None:
        self.kubeconfig = kubeconfig
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = {**os.environ, "KUBECONFIG": str(self.kubeconfig), "PYTHONUNBUFFERED": "1"}
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "agent_rollout.main"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        self.proc = None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()
        self.proc = None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, lines: int = 60) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


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


@dataclass
class Scene:
    """Given legacy and candidate agents behind an HTTPRoute with traffic flowing; then a rollout."""

    namespace: str
    kube: KubeApi
    kubectl: Callable[..., Any]
    prometheus_url: str
    agents: AgentGroup
    driver: TrafficDriver
    events: list[str] = field(default_factory=list)

    def rollout_manifest(self, name: str, steps: list[dict[str, Any]], **analysis: Any) -> dict[str, Any]:
        analysis_spec = {
            "prometheus": {"url": self.prometheus_url, "timeout": "3s"},
            "interval": "5s",
            **analysis,
        }
        return {
            "apiVersion": f"{api.GROUP}/{api.VERSION}",
            "kind": api.KIND,
            "metadata": {"name": name, "namespace": self.namespace},
            "spec": {
                "legacy": {"deployment": LEGACY},
                "candidate": {"deployment": CANDIDATE},
                "traffic": {
                    "gatewayAPI": {"httpRoute": ROUTE, "legacyBackend": LEGACY, "candidateBackend": CANDIDATE}
                },
                "analysis": analysis_spec,
                "steps": steps,
            },
        }

    def apply(self, manifest: dict[str, Any], check: bool = True) -> Any:
        return self.kubectl("apply", "-f", "-", stdin=yaml.safe_dump(manifest), check=check)

    def rollout(self, name: str) -> dict[str, Any]:
        obj: dict[str, Any] = self.kube.custom.get_namespaced_custom_object(
            api.GROUP, api.VERSION, self.namespace, api.PLURAL, name
        )
        return obj

    def status(self, name: str) -> dict[str, Any]:
        return dict(self.rollout(name).get("status") or {})

    def route_weights(self) -> dict[str, int]:
        route = self.kube.get_httproute(self.namespace, ROUTE)
        refs = route["spec"]["rules"][0]["backendRefs"]
        return {ref["name"]: ref.get("weight", 1) for ref in refs}

    def wait_for_phase(self, name: str, phase: str, timeout_s: float = 90.0) -> dict[str, Any]:
        def reached() -> dict[str, Any] | None:
            status = self.status(name)
            if status.get("phase") in {"Failed", "RolledBack", "Promoted"} - {phase} and phase != status.get(
                "phase"
            ):
                raise AssertionError(f"rollout ended {status.get('phase')} instead of {phase}: {status}")
            return status if status.get("phase") == phase else None

        result: dict[str, Any] = wait_until(f"{name} phase {phase}", reached, timeout_s)
        return result

    def event_reasons(self, name: str) -> list[str]:
        events = self.kube.core.list_namespaced_event(
            self.namespace, field_selector=f"involvedObject.name={name},involvedObject.kind={api.KIND}"
        )
        ordered = sorted(
            events.items, key=lambda e: (e.first_timestamp or e.event_time or 0, e.metadata.name)
        )
        return [e.reason for e in ordered]


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
