"""Breach-to-rollback time over repeated runs: `python -m e2e.bench.rollback_speed [--runs N]`.

One real operator process against the real apiserver and Prometheus (a healthy `cluster up` one is
reused, else the benchmark starts its own and stops it at the end). Every run gets a fresh namespace:
simulated legacy and candidate agents (the candidate answers 20% errors), their Deployments, Services
and an HTTPRoute (legacy 100, candidate 0), an AgentRollout with interval 5s whose error-rate gate
(max 0.05 over 30s, minSamples 10) fails, and ~40 rps of traffic following the route.

Where the breach falls within the operator's interval decides most of the figure. Traffic started
with the rollout would put it at the same point of the interval in every run (the first evaluation
comes one interval after the route's first change, the breach a fixed couple of seconds after it), so
the traffic starts that long after the candidate's first weight: run i of N at (i - 0.5) / N of an
interval, which spreads the breach evenly over the interval across the runs.

Measured (e2e/rollout/breach.py): from the first moment Prometheus shows the gate's bound broken with
enough samples to the moment the HTTPRoute gives the candidate weight 0. A watch on the rollout tells
where that time goes: waiting for the operator's next evaluation (the daemon sleeps one interval after
each reconcile), then the evaluation itself up to the route write. Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import logging
import os
import secrets
import shutil
import signal
import statistics
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from types import FrameType
from typing import Any

from kubernetes import watch
from kubernetes.client import CustomObjectsApi
from kubernetes.client.exceptions import ApiException
from prometheus_api_client import PrometheusConnect

from agent_rollout import api
from e2e.cluster import ClusterState, is_healthy, load_state, start_cluster, stop_cluster
from e2e.cluster.kubeapi import KubeApi, new_api_client
from e2e.cluster.kubectl import kubectl_for, run_kubectl, wait_established
from e2e.cluster.paths import RUN_ROOT, SHARED_CLUSTER_NAME, scratch_root
from e2e.cluster.session import REUSE_ENV
from e2e.rollout.breach import watch_breach_to_rollback
from e2e.rollout.scene import CANDIDATE, CRD_FILE, LEGACY, ROUTE, OperatorProcess, Scene, wait_until
from e2e.sim.launcher import start_agents
from e2e.sim.traffic import TrafficDriver

INTERVAL_S = 5.0
TARGET_S = INTERVAL_S + 2.0  # the target for the median
RPS = 40.0
TRAFFIC_LIMIT_S = 120.0  # the driver stops by itself after this, whatever happens
RUN_TIMEOUT_S = 60.0
ERROR_GATE = {"name": "error-rate", "template": "errorRate", "max": 0.05, "window": "30s"}
FIRST_WEIGHT = 20
STEPS: list[dict[str, Any]] = [{"setWeight": FIRST_WEIGHT}, {"pause": {"duration": "5m"}}, {"setWeight": 100}]
ROLLOUT = "bench"
RUN_PREFIX = "bench-"  # the run dir of a cluster of our own: .cache/run/bench-<pid>
WATCH_TIMEOUT_S = 2  # short server-side watch timeouts let the status watcher notice stop() quickly


@dataclass(frozen=True)
class RunResult:
    seconds: float  # breach visible in Prometheus -> candidate weight 0
    to_evaluation: float | None  # breach visible -> the failing evaluation started
    evaluation: float | None  # the failing evaluation started -> candidate weight 0
    phase: str
    step: int | None  # the step the rollback happened at (0: setWeight 20, 1: the pause)
    raced: bool = False  # breach and rollback fell between two polls of the watcher: counted as 0 s
    missed: list[str] = field(default_factory=list)  # evaluations after the breach that did not fail


@dataclass(frozen=True)
class Evaluation:
    """One status write of the operator as the watch saw it: when, and what the first gate said."""

    observed_at: float  # time.monotonic() when the watch delivered it
    analysis_at: str | None  # status.lastAnalysisAt: when that reconcile started, whole seconds
    phase: str | None
    step: int | None
    verdict: str | None
    value: float | None
    samples: int | None


class StatusWatch:
    """Records every status write of one rollout that changed lastAnalysisAt, phase or step.

    Every reconcile that evaluates gates writes a new lastAnalysisAt, and the daemon starts the next
    reconcile one interval after that write returns: so the write before the rollback's write, plus one
    interval, is when the failing evaluation started (to the watch's latency, milliseconds here).
    """

    def __init__(self, kube: KubeApi, namespace: str, name: str) -> None:
        self._api_client = new_api_client(kube.kubeconfig)
        self._api = CustomObjectsApi(self._api_client)
        self._namespace, self._name = namespace, name
        self._stop = threading.Event()
        self.writes: list[Evaluation] = []
        self._thread = threading.Thread(target=self._run, name=f"status-watch-{namespace}", daemon=True)
        self._thread.start()

    def _record(self, obj: dict[str, Any]) -> None:
        status = obj.get("status") or {}
        key = (status.get("lastAnalysisAt"), status.get("phase"), status.get("currentStep"))
        if self.writes and (self.writes[-1].analysis_at, self.writes[-1].phase, self.writes[-1].step) == key:
            return
        # A step change clears lastAnalysis; the evidence it was decided on is in its history entry.
        history = status.get("history") or [{}]
        gates = status.get("lastAnalysis") or history[-1].get("evidence") or [{}]
        gate: dict[str, Any] = gates[0]
        self.writes.append(
            Evaluation(time.monotonic(), *key, gate.get("verdict"), gate.get("value"), gate.get("samples"))
        )

    def _run(self) -> None:
        rv: str | None = None
        selector = f"metadata.name={self._name}"
        while not self._stop.is_set():
            try:
                if rv is None:
                    listing: Any = self._api.list_namespaced_custom_object(
                        api.GROUP, api.VERSION, self._namespace, api.PLURAL, field_selector=selector
                    )
                    for item in listing.get("items") or []:
                        self._record(item)
                    rv = str(listing["metadata"]["resourceVersion"])
                w = watch.Watch()  # type: ignore[no-untyped-call]
                for event in w.stream(  # type: ignore[no-untyped-call]
                    self._api.list_namespaced_custom_object,
                    api.GROUP,
                    api.VERSION,
                    self._namespace,
                    api.PLURAL,
                    field_selector=selector,
                    resource_version=rv,
                    timeout_seconds=WATCH_TIMEOUT_S,
                    _request_timeout=WATCH_TIMEOUT_S + 5,
                ):
                    if event["type"] == "ERROR":
                        rv = None
                        break
                    rv = str(event["object"]["metadata"]["resourceVersion"])
                    if event["type"] in ("ADDED", "MODIFIED"):
                        self._record(event["object"])
                    if self._stop.is_set():
                        w.stop()  # type: ignore[no-untyped-call]
            except Exception:  # a dropped watch or an expired resourceVersion: list again
                rv = None
                self._stop.wait(0.2)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(WATCH_TIMEOUT_S + 6)
        self._api_client.close()  # type: ignore[no-untyped-call]

    def rolled_back(self) -> bool:
        return any(w.phase == "RolledBack" for w in self.writes)

    def failing_evaluation_started(self, interval_s: float) -> float | None:
        """time.monotonic() when the reconcile that rolled back started, or None when not seen."""
        for i, write in enumerate(self.writes):
            if write.phase != "RolledBack":
                continue
            if i == 0 or write.analysis_at is None:
                return None
            started = self.writes[i - 1].observed_at + interval_s
            # Cross-check with the evaluation's own (whole-second) timestamp; a reconcile retried
            # after an error would not follow the one-interval rhythm.
            wall = started + (time.time() - time.monotonic())
            stamped = datetime.fromisoformat(write.analysis_at.replace("Z", "+00:00")).timestamp()
            return started if stamped - 0.2 <= wall < stamped + 1.2 else None
        return None

    def passed_after(self, since: float) -> list[Evaluation]:
        """Evaluations written after `since` (monotonic) that did not roll back."""
        return [w for w in self.writes if w.observed_at > since and w.verdict and w.phase != "RolledBack"]


def remove_stale_runs() -> None:
    """Run dirs (logs kept after a failure or an interrupt) of earlier benchmarks that have exited."""
    for root in (RUN_ROOT, scratch_root()):
        for d in root.glob(f"{RUN_PREFIX}*") if root.is_dir() else ():
            pid = d.name.removeprefix(RUN_PREFIX)
            if pid.isdigit() and not Path(f"/proc/{pid}").exists():
                shutil.rmtree(d, ignore_errors=True)


@contextmanager
def cluster() -> Iterator[ClusterState]:
    """A healthy `cluster up` cluster (left running), else our own (stopped at the end)."""
    if os.environ.get(REUSE_ENV, "1") != "0":
        shared = load_state(SHARED_CLUSTER_NAME)
        if shared is not None and is_healthy(shared):
            print(f"using the running cluster ({shared.apiserver_url}, Prometheus {shared.prometheus_url})")
            yield shared
            return
    print("starting a cluster of its own (`make cluster-up` first to reuse one) ...", flush=True)
    remove_stale_runs()
    t0 = time.monotonic()
    state = start_cluster(f"{RUN_PREFIX}{os.getpid()}", die_with_parent=True)
    print(f"cluster up in {time.monotonic() - t0:.0f}s")
    with stopped_at_the_end(state):
        yield state


def install_crd(state: ClusterState, path: Path = CRD_FILE) -> None:
    """The AgentRollout CRD from crds/ (or `path`), established before anything uses it."""
    run_kubectl(
        state.kubectl_bin,
        state.kubeconfig,
        "apply",
        "--server-side",
        "--force-conflicts",
        "-f",
        str(path),
    )
    wait_established(kubectl_for(state), f"{api.PLURAL}.{api.GROUP}", timeout_s=30)


@contextmanager
def stopped_at_the_end(state: ClusterState) -> Iterator[ClusterState]:
    """Stop a cluster of the benchmark's own when it ends; keep its logs when it failed."""
    ok = False
    try:
        yield state
        ok = True
    finally:
        stop_cluster(state, keep_logs=not ok)
        if not ok:
            print(f"cluster stopped; its logs are kept in {state.run_dir / 'logs'}")


@contextmanager
def terminate_as_exit() -> Iterator[None]:
    """SIGTERM unwinds like Ctrl-C, so the cleanup below (agents, operator, cluster) still runs."""

    def handler(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def bench_scene(
    state: ClusterState,
    kube: KubeApi,
    namespace: str,
    candidate: dict[str, Any],
    traffic_client: Any,
) -> Scene:
    """In `namespace`: simulated legacy and candidate agents (the candidate with the fault profile
    `candidate`), their Deployments and Services, an HTTPRoute (legacy 100, candidate 0), and a traffic
    driver following it, not started yet."""
    fast = {"latency_sleep": False}
    agents = start_agents(
        namespace,
        {LEGACY: fast, CANDIDATE: {**fast, **candidate}},
        file_sd_dir=state.file_sd_dir,
        prometheus_url=state.prometheus_url,
        log_dir=state.run_dir / "agents",
    )
    try:
        agents.wait_scraped()
        kube.create_agent_backends(namespace, {LEGACY: LEGACY, CANDIDATE: CANDIDATE})
        kube.create_httproute(namespace, ROUTE, {LEGACY: 100, CANDIDATE: 0})
        for name in (LEGACY, CANDIDATE):
            kube.wait_deployment_available(namespace, name)
        driver = TrafficDriver(traffic_client, namespace, ROUTE, agents.urls())
    except BaseException:
        agents.stop()
        raise

    def kubectl(*args: str, stdin: str | None = None, check: bool = True) -> Any:
        return run_kubectl(state.kubectl_bin, state.kubeconfig, *args, stdin=stdin, check=check)

    return Scene(namespace, kube, kubectl, state.prometheus_url, agents, driver)


def one_run(
    index: int, offset_s: float, state: ClusterState, kube: KubeApi, prometheus: PrometheusConnect
) -> RunResult:
    """offset_s: how long after the route's first candidate weight the traffic starts."""
    namespace = f"bench-rollback-{index}-{secrets.token_hex(3)}"
    body: Any = {"metadata": {"name": namespace, "labels": {"agent-rollout.dev/bench": "true"}}}
    kube.core.create_namespace(body)
    agents = driver = status_watch = None
    traffic_client = new_api_client(state.kubeconfig)
    try:
        scene = bench_scene(state, kube, namespace, {"error_ratio": 0.2}, traffic_client)
        agents, driver = scene.agents, scene.driver
        manifest = scene.rollout_manifest(
            ROLLOUT,
            steps=STEPS,
            interval=f"{INTERVAL_S:g}s",
            failureLimit=0,
            minSamples=10,
            gates=[ERROR_GATE],
        )
        status_watch = StatusWatch(kube, namespace, ROLLOUT)
        scene.apply(manifest)
        first_step = driver.wait_for_weights({LEGACY: 100 - FIRST_WEIGHT, CANDIDATE: FIRST_WEIGHT}, 30)
        time.sleep(max(0.0, first_step.observed_at + offset_s - time.monotonic()))
        driver.start(max_requests=int(RPS * TRAFFIC_LIMIT_S), duration_s=TRAFFIC_LIMIT_S, rps=RPS)
        try:
            timing = watch_breach_to_rollback(
                manifest, prometheus, lambda: scene.route_weights()[CANDIDATE], timeout_s=RUN_TIMEOUT_S
            )
        except AssertionError as e:
            # The operator saw the breach and routed between two of our polls (~0.2 s apart): a real
            # sample of ~0 s when the gate's failure is in status; anything else is a real problem.
            if "before Prometheus showed a breach" not in str(e) or not _gate_failed(scene.status(ROLLOUT)):
                raise
            timing = None
        status = wait_until(
            "a final phase in status",
            lambda: (st := scene.status(ROLLOUT)).get("phase") in ("RolledBack", "Failed", "Promoted") and st,
            10,
        )
        failed = [d["step"] for d in status.get("history", []) if d.get("reason") == "GateFailed"]
        if timing is None:
            return RunResult(
                0.0, None, None, str(status["phase"]), failed[-1] if failed else None, raced=True
            )
        wait_until("the rollback's status write", status_watch.rolled_back, 5)
        started = status_watch.failing_evaluation_started(INTERVAL_S)
        return RunResult(
            seconds=timing.seconds,
            to_evaluation=None if started is None else started - timing.breach_at,
            evaluation=None if started is None else timing.rolled_back_at - started,
            phase=str(status["phase"]),
            step=failed[-1] if failed else None,
            missed=[
                f"+{w.observed_at - timing.breach_at:.1f}s {w.verdict} {w.value:.3g} over {w.samples} samples"
                if w.value is not None
                else f"+{w.observed_at - timing.breach_at:.1f}s {w.verdict}"
                for w in status_watch.passed_after(timing.breach_at)
            ],
        )
    finally:
        if status_watch is not None:
            status_watch.close()
        if driver is not None:
            driver.close()
        traffic_client.close()  # type: ignore[no-untyped-call]
        if agents is not None:
            agents.stop()
        # Delete the rollout, then the namespace.
        with suppress(ApiException):
            kube.custom.delete_namespaced_custom_object(
                api.GROUP, api.VERSION, namespace, api.PLURAL, ROLLOUT
            )
        with suppress(AssertionError):
            wait_until("the rollout to be deleted", lambda: not _rollout_exists(kube, namespace), 20)
        kube.core.delete_namespace(namespace, propagation_policy="Background")


def _gate_failed(status: dict[str, Any]) -> bool:
    """The last GateFailed decision in status failed our gate on its bound (not on Prometheus errors)."""
    failed = [d for d in status.get("history", []) if d.get("reason") == "GateFailed"]
    evidence = failed[-1].get("evidence", []) if failed else []
    return any(
        g.get("name") == ERROR_GATE["name"] and g.get("verdict") == "Fail" and (g.get("value") or 0) > 0.05
        for g in evidence
    )


def _rollout_exists(kube: KubeApi, namespace: str) -> bool:
    try:
        kube.custom.get_namespaced_custom_object(api.GROUP, api.VERSION, namespace, api.PLURAL, ROLLOUT)
    except ApiException as e:
        if e.status == 404:
            return False
        raise
    return True


def _seconds(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}s"


def main(runs: int = 7) -> None:
    print(f"== breach-to-rollback: {runs} runs, interval {INTERVAL_S:g}s, candidate 20% errors, ~{RPS:g} rps")
    results: list[RunResult] = []
    failures: list[str] = []
    with terminate_as_exit(), cluster() as state:
        kube = KubeApi(state.kubeconfig)
        operator: OperatorProcess | None = None
        try:
            install_crd(state)
            prometheus = PrometheusConnect(url=state.prometheus_url, disable_ssl=True)
            operator = OperatorProcess(state.kubeconfig, state.run_dir / "bench-operator.log")
            operator.start()
            for i in range(1, runs + 1):
                if not operator.alive():
                    failures.append(f"run {i}: the operator died")
                    print(f"run {i}/{runs}: the operator died:\n{operator.log_tail()}")
                    break
                t0 = time.monotonic()
                try:
                    offset = INTERVAL_S * (i - 0.5) / runs
                    r = one_run(i, offset, state, kube, prometheus)
                except Exception as e:  # one broken run must not hide the others' figures
                    failures.append(f"run {i}: {e}")
                    print(f"run {i}/{runs}: FAILED: {e}")
                    continue
                results.append(r)
                phase = f"at step {r.step}" if r.phase == "RolledBack" else f"phase {r.phase}!"
                split = (
                    "breach and rollback between two polls of the watcher (~0.2 s), counted as 0"
                    if r.raced
                    else f"next evaluation after {_seconds(r.to_evaluation)} + evaluation to weight 0 "
                    f"{_seconds(r.evaluation)}"
                )
                print(
                    f"run {i}/{runs}: breach -> weight 0 {r.seconds:.2f}s = {split}"
                    f"  (traffic from +{offset:.1f}s; {phase}; run took {time.monotonic() - t0:.0f}s)",
                    flush=True,
                )
                if r.missed:
                    print(
                        f"    evaluations after the breach that did not fail (status written at): "
                        f"{', '.join(r.missed)}"
                    )
        finally:
            if operator is not None:
                operator.stop()
            kube.close()
        summarize(results)
        if failures:  # raised inside the cluster's block, so a cluster of our own keeps its logs
            log = f" (operator log: {operator.log_path})" if operator is not None else ""
            raise SystemExit(f"{len(failures)} of {runs} runs failed{log}: " + "; ".join(failures))


def summarize(results: list[RunResult]) -> None:
    if not results:
        print("breach-to-rollback: no successful run")
        return
    times = [r.seconds for r in results]
    print(
        f"breach-to-rollback over {len(results)} runs at interval {INTERVAL_S:g}s: min {min(times):.1f}s "
        f"median {statistics.median(times):.1f}s max {max(times):.1f}s (target: median < {TARGET_S:.1f}s)"
    )
    waits = [r.to_evaluation for r in results if r.to_evaluation is not None]
    evals = [r.evaluation for r in results if r.evaluation is not None]
    if waits and evals:
        print(
            f"where the time goes (median of {len(waits)}): waiting for the operator's next evaluation "
            f"{statistics.median(waits):.2f}s (0..{INTERVAL_S:g}s by when the breach falls in the interval), "
            f"evaluation to weight 0 {statistics.median(evals):.2f}s (Prometheus queries, plan, route write)"
        )


def cli() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=7)
    logging.basicConfig(level=logging.WARNING, format="%(message)s", stream=sys.stderr)
    main(parser.parse_args().runs)


if __name__ == "__main__":
    cli()
