"""A readiness probe for simulated agents: the pods of a version are Ready only while its agent serves.

kwok plays the kubelet for pod phases, but knows nothing of the agent processes that really answer the
traffic; alone, it keeps every pod Ready whatever happens to them. The bridge does the part of the
kubelet that matters for availability: it probes each agent (process alive, GET /healthz answers 200)
and writes the result into the Ready and ContainersReady conditions of the pods labelled with that
agent's version, through the pod status subresource. The ReplicaSet and Deployment controllers then
count availableReplicas from those conditions as usual, so killing an agent makes its Deployment
unavailable for real, and restarting it makes it available again.

Like a kubelet, a dead process is noticed at once; a live process that does not answer has to fail
FAILURE_THRESHOLD probes in a row (a loaded 2-core machine may stall one probe), a single success
makes it Ready again.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from e2e.cluster.kubeapi import new_api_client
from e2e.cluster.objects import VERSION_LABEL

PERIOD_S = 0.5
PROBE_TIMEOUT_S = 2.0
FAILURE_THRESHOLD = 3

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PodReadiness:
    name: str
    version: str
    ready: bool  # the pod's Ready condition as the apiserver has it
    containers: tuple[str, ...]


@dataclass
class ProbeState:
    """Consecutive failed HTTP probes of one agent; process death skips the count."""

    failures: int = 0

    def observe(self, process_alive: bool, answered: bool) -> bool:
        """Record one probe, return whether the agent counts as ready."""
        if not process_alive:
            self.failures = FAILURE_THRESHOLD
            return False
        self.failures = 0 if answered else self.failures + 1
        return self.failures < FAILURE_THRESHOLD


def pods_to_change(
    pods: Iterable[PodReadiness], ready: Mapping[str, bool]
) -> list[tuple[PodReadiness, bool]]:
    """Pods whose Ready condition differs from their agent's probe result; versions without an agent
    in `ready` are not ours to judge and keep whatever kwok gave them."""
    return [(p, ready[p.version]) for p in pods if p.version in ready and p.ready != ready[p.version]]


def readiness_patch(containers: Iterable[str], ready: bool, now: datetime) -> dict[str, Any]:
    """The status a kubelet writes when a readiness probe flips (strategic merge: by type, by name)."""
    names = list(containers)
    status = "True" if ready else "False"
    reason, message = (
        (None, None) if ready else ("ContainersNotReady", f"containers with unready status: {names}")
    )
    stamp = now.strftime("%Y-%m-%dT%H:%M:%SZ")
    conditions = [
        {"type": kind, "status": status, "reason": reason, "message": message, "lastTransitionTime": stamp}
        for kind in ("Ready", "ContainersReady")
    ]
    return {
        "status": {
            "conditions": conditions,
            "containerStatuses": [{"name": name, "ready": ready} for name in names],
        }
    }


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=PROBE_TIMEOUT_S) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


@dataclass(frozen=True)
class ProbeTarget:
    """What the bridge probes for one version: the agent's liveness check and its /healthz URL."""

    alive: Callable[[], bool]
    healthz_url: str


class ReadinessBridge:
    """One thread per agent group: probe every PERIOD_S (or at once after `poke()`), patch what differs."""

    def __init__(self, kubeconfig: Path, namespace: str, targets: Callable[[], Mapping[str, ProbeTarget]]):
        self.namespace = namespace
        self._targets = targets
        self._api_client = new_api_client(kubeconfig)
        self._core = client.CoreV1Api(self._api_client)
        self._probes: dict[str, ProbeState] = {}
        self._wake = threading.Event()
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"readiness-{namespace}", daemon=True)
        self._thread.start()

    def poke(self) -> None:
        """Probe now rather than at the next period (after the harness killed or started an agent)."""
        self._wake.set()

    def close(self) -> None:
        self._stopped.set()
        self._wake.set()
        self._thread.join(timeout=10)
        self._api_client.close()  # type: ignore[no-untyped-call]

    def _run(self) -> None:
        while not self._stopped.is_set():
            try:
                self.sync()
            except Exception:  # a failed round is retried next period; the thread must not die
                log.exception("readiness bridge of %s: sync failed", self.namespace)
            self._wake.wait(PERIOD_S)
            self._wake.clear()

    def sync(self) -> None:
        targets = self._targets()
        ready = {}
        for version, target in targets.items():
            state = self._probes.setdefault(version, ProbeState())
            alive = target.alive()
            ready[version] = state.observe(alive, alive and _http_ok(target.healthz_url))
        if not ready:
            return
        selector = f"{VERSION_LABEL} in ({','.join(sorted(ready))})"
        pods = [
            _readiness(p)
            for p in self._core.list_namespaced_pod(self.namespace, label_selector=selector).items
        ]
        now = datetime.now(UTC)
        for pod, want in pods_to_change([p for p in pods if p is not None], ready):
            # The pod may be deleted meanwhile (404) or the namespace be going away (403/409).
            with contextlib.suppress(ApiException):
                self._core.patch_namespaced_pod_status(
                    pod.name,
                    self.namespace,
                    readiness_patch(pod.containers, want, now),
                    _content_type="application/strategic-merge-patch+json",
                )


def _readiness(pod: Any) -> PodReadiness | None:
    """None for pods kwok has not started yet (no pod IP): its pod-ready stage would overwrite us."""
    if pod.metadata.deletion_timestamp is not None or not (pod.status and pod.status.pod_ip):
        return None
    conditions = {c.type: c.status for c in pod.status.conditions or []}
    return PodReadiness(
        name=pod.metadata.name,
        version=(pod.metadata.labels or {}).get(VERSION_LABEL, ""),
        ready=conditions.get("Ready") == "True",
        containers=tuple(c.name for c in pod.spec.containers),
    )
