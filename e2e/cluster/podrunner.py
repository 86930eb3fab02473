"""A kubelet for one node whose pods run as local processes: how evaluation Jobs really run here.

No real kubelet runs in this harness, and kwok (which plays the kubelet for the fake node) would mark a
Job's pod Succeeded at once without running anything (its pod-complete stage): an evaluation step
"passing" that way would prove nothing. So evaluation pods go to a node of their own, `eval-runner-0`
(selected with the Job's nodeSelector, RUNNER_LABEL), which kwok does not manage, and this runner does
for that node what a kubelet does, no more:

- keeps the Node Ready (its status and its Lease in kube-node-lease, as a kubelet's heartbeat);
- for each pod the scheduler binds to the node, runs the container's command and args as a process
  (the image is not pulled: the command must exist here, e.g. `python -m e2e.sim.evaluation`), with the
  container's env, in the repository's directory;
- maps the container's terminationMessagePath to a file of its own (a kubelet bind-mounts a host file
  there; an env value naming that path is pointed at the file, since a process cannot share
  /dev/termination-log) and resolves Service URLs (http://SVC.NS.svc[:port]) through `services`, as the
  cluster's DNS would;
- writes the pod's status through the apiserver: Running, then Succeeded or Failed with the exit code
  and the termination message (at most 4 KiB, as a kubelet keeps), so the real Job controller in the
  controller-manager completes or fails the Job;
- kills the process of a pod being deleted (activeDeadlineSeconds, a Job deleted) and confirms the
  deletion, as a kubelet does.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import subprocess
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from e2e.cluster.kubeapi import new_api_client
from e2e.cluster.paths import REPO_ROOT

NODE_NAME = "eval-runner-0"
RUNNER_LABEL = ("agentrollout.dev/runner", "local")
PERIOD_S = 0.5
LEASE_DURATION_S = 40
MESSAGE_LIMIT = 4096
_SERVICE_URL = re.compile(r"http://([a-z0-9-]+)\.([a-z0-9-]+)\.svc(?:\.cluster\.local)?(?::\d+)?")

log = logging.getLogger(__name__)

# (namespace, service) -> base URL of the local process serving it, or None.
ServiceResolver = Callable[[str, str], str | None]


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _micro_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def node_manifest() -> dict[str, Any]:
    key, value = RUNNER_LABEL
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": NODE_NAME,
            "labels": {key: value, "kubernetes.io/hostname": NODE_NAME, "kubernetes.io/os": "linux"},
        },
        "spec": {},
    }


def node_status() -> dict[str, Any]:
    now = _now()
    ready = {
        "type": "Ready",
        "status": "True",
        "reason": "KubeletReady",
        "message": "the e2e pod runner is running",
        "lastHeartbeatTime": now,
        "lastTransitionTime": now,
    }
    capacity = {"cpu": "2", "memory": "4Gi", "pods": "20"}
    return {"status": {"conditions": [ready], "capacity": capacity, "allocatable": capacity}}


@dataclass
class Run:
    process: subprocess.Popen[bytes]
    message_file: Path
    started_at: str


class PodRunner:
    def __init__(self, kubeconfig: Path, services: ServiceResolver, log_dir: Path) -> None:
        self._api = new_api_client(kubeconfig)
        self._core = client.CoreV1Api(self._api)
        self._coordination = client.CoordinationV1Api(self._api)
        self._services = services
        self._log_dir = log_dir
        self._runs: dict[str, Run] = {}  # pod uid -> its process
        self._done: set[str] = set()  # pod uids whose final status is written
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="pod-runner", daemon=True)
        self._tmp = tempfile.TemporaryDirectory(prefix="pod-runner-")

    def start(self) -> None:
        with contextlib.suppress(ApiException):
            self._core.create_node(node_manifest())
        self._heartbeat()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        for run in self._runs.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(run.process.pid, signal.SIGKILL)
        with contextlib.suppress(ApiException):
            self._core.delete_node(NODE_NAME)
        self._tmp.cleanup()
        self._api.close()

    # -- the loop

    def _loop(self) -> None:
        beat = 0.0
        while not self._stop.wait(PERIOD_S):
            try:
                beat += PERIOD_S
                if beat >= 5:
                    beat = 0.0
                    self._heartbeat()
                self._sync()
            except Exception:  # a blip of the apiserver must not end the node's life
                log.exception("pod runner")

    def _heartbeat(self) -> None:
        self._core.patch_node_status(NODE_NAME, node_status())
        lease = client.V1Lease(
            metadata=client.V1ObjectMeta(name=NODE_NAME, namespace="kube-node-lease"),
            spec=client.V1LeaseSpec(
                holder_identity=NODE_NAME,
                lease_duration_seconds=LEASE_DURATION_S,
                renew_time=datetime.now(UTC),
            ),
        )
        try:
            renew = {"spec": {"holderIdentity": NODE_NAME, "renewTime": _micro_now()}}
            self._coordination.patch_namespaced_lease(NODE_NAME, "kube-node-lease", renew)
        except ApiException as e:
            if e.status != 404:
                raise
            self._coordination.create_namespaced_lease("kube-node-lease", lease)

    def _sync(self) -> None:
        pods = self._core.list_pod_for_all_namespaces(field_selector=f"spec.nodeName={NODE_NAME}").items
        for pod in pods:
            uid = pod.metadata.uid
            if pod.metadata.deletion_timestamp is not None:
                self._kill(uid)
                with contextlib.suppress(ApiException):  # a kubelet confirms the deletion
                    self._core.delete_namespaced_pod(
                        pod.metadata.name, pod.metadata.namespace, grace_period_seconds=0
                    )
                continue
            if uid in self._done:
                continue
            if uid not in self._runs:
                self._launch(pod)
                continue
            run = self._runs[uid]
            code = run.process.poll()
            if code is not None:
                self._finish(pod, run, code)

    def _kill(self, uid: str) -> None:
        run = self._runs.pop(uid, None)
        if run is not None and run.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(run.process.pid, signal.SIGKILL)
            run.process.wait(timeout=10)

    def _launch(self, pod: client.V1Pod) -> None:
        container = pod.spec.containers[0]
        message_file = Path(self._tmp.name) / f"{pod.metadata.uid}.termination-log"
        message_file.write_text("")
        message_path = container.termination_message_path or "/dev/termination-log"
        env = {"PATH": f"{REPO_ROOT / '.venv' / 'bin'}:{os.environ.get('PATH', '')}", "PYTHONUNBUFFERED": "1"}
        env["PYTHONPATH"] = str(REPO_ROOT)
        for var in container.env or []:
            value = var.value or ""
            env[var.name] = str(message_file) if value == message_path else self._resolve(value)
        argv = [*(container.command or []), *(container.args or [])]
        log_path = self._log_dir / f"pod-{pod.metadata.namespace}-{pod.metadata.name}.log"
        with log_path.open("ab") as out:
            process = subprocess.Popen(
                argv, cwd=REPO_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        started = _now()
        self._runs[pod.metadata.uid] = Run(process, message_file, started)
        running = {"running": {"startedAt": started}}
        self._write_status(pod, "Running", container, running, ready=True)

    def _resolve(self, value: str) -> str:
        def local(match: re.Match[str]) -> str:
            url = self._services(match.group(2), match.group(1))
            return url if url is not None else match.group(0)

        return _SERVICE_URL.sub(local, value)

    def _finish(self, pod: client.V1Pod, run: Run, code: int) -> None:
        message = run.message_file.read_text(errors="replace")[:MESSAGE_LIMIT]
        terminated = {
            "terminated": {
                "exitCode": code,
                "reason": "Completed" if code == 0 else "Error",
                "message": message,
                "startedAt": run.started_at,
                "finishedAt": _now(),
            }
        }
        phase = "Succeeded" if code == 0 else "Failed"
        self._write_status(pod, phase, pod.spec.containers[0], terminated, ready=False)
        self._done.add(pod.metadata.uid)
        del self._runs[pod.metadata.uid]

    def _write_status(
        self, pod: client.V1Pod, phase: str, container: Any, state: dict[str, Any], ready: bool
    ) -> None:
        now = _now()
        flag = "True" if ready else "False"
        status = {
            "phase": phase,
            "hostIP": "127.0.0.1",
            "podIP": "127.0.0.1",
            "startTime": self._runs[pod.metadata.uid].started_at if pod.metadata.uid in self._runs else now,
            "conditions": [
                {"type": "Initialized", "status": "True", "lastTransitionTime": now},
                {"type": "Ready", "status": flag, "lastTransitionTime": now},
                {"type": "ContainersReady", "status": flag, "lastTransitionTime": now},
                {"type": "PodScheduled", "status": "True", "lastTransitionTime": now},
            ],
            "containerStatuses": [
                {
                    "name": container.name,
                    "image": container.image,
                    "imageID": "",
                    "ready": ready,
                    "restartCount": 0,
                    "started": ready,
                    "state": state,
                }
            ],
        }
        self._core.patch_namespaced_pod_status(pod.metadata.name, pod.metadata.namespace, {"status": status})


@contextlib.contextmanager
def pod_runner(kubeconfig: Path, services: ServiceResolver, log_dir: Path) -> Iterator[PodRunner]:
    runner = PodRunner(kubeconfig, services, log_dir)
    runner.start()
    try:
        yield runner
    finally:
        runner.stop()
