"""The pieces of an operator scenario, shared by the e2e tests, `make demo` and `make bench`: the real
operator as a child process, and a Scene (legacy and candidate agents behind an HTTPRoute, traffic
flowing) with readers for the rollout's status, the route's weights and the rollout's Events.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from agent_rollout import api
from e2e.cluster.kubeapi import KubeApi
from e2e.cluster.procs import set_parent_death_signal
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
    """The operator as a child process with its own log; kill() is a hard kill -9.

    The child dies with its parent, so an interrupted test, demo or bench never leaves an operator
    behind to act on the next cluster.
    """

    def __init__(
        self,
        kubeconfig: Path,
        log_path: Path,
        args: Sequence[str] = (),
        env: dict[str, str] | None = None,
        ready: Callable[[], bool] | None = None,
    ) -> None:
        self.kubeconfig = kubeconfig
        self.log_path = log_path
        self.args = list(args)
        self.env = dict(env or {})
        # What start() waits for, if anything: every start, also a test's restart of a shared operator,
        # so the next reader of its servers never meets a refused connection.
        self.ready = ready
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = {**os.environ, "KUBECONFIG": str(self.kubeconfig), "PYTHONUNBUFFERED": "1", **self.env}
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "agent_rollout.main", *self.args],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=set_parent_death_signal,
            )
        if self.ready is not None:
            ready = self.ready
            wait_until("the operator ready (its servers listening)", lambda: ready() or not self.alive(), 60)
            if not self.alive():
                raise AssertionError(f"the operator exited while starting:\n{self.log_tail()}")

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
