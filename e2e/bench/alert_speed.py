"""Alert firing -> candidate weight 0: `python -m e2e.bench --only alert [--alert-runs N]`.

The real chain, on the real control plane: an incident rule in the cluster's real Prometheus (the
candidate's error ratio above 10%, labelled with the rollout) fires; a real Alertmanager (Debian's
prometheus-alertmanager, group_wait 0s) calls the real operator process's webhook receiver with its
bearer token; the operator rolls the rollout back and writes the HTTPRoute. Every run gets a fresh
namespace: simulated agents (the candidate answers 30% errors), Deployments, Services, an HTTPRoute and
an AgentRollout at setWeight 20 whose only gate tolerates 90% errors, so the alert alone rolls it back.

Measured: from the alert's activeAt in Prometheus (the rule evaluation that found it true; the rule has
no `for`, so it fires from then on) to the moment the HTTPRoute gives the candidate weight 0 (polled every
0.1 s), both on this machine's clock; the operator's log says when its receiver got the webhook, which
splits the figure into the alerting pipeline's share and the operator's. Prints figures; asserts nothing.
"""

from __future__ import annotations

import json
import re
import secrets
import statistics
import time
import urllib.request
from contextlib import suppress
from datetime import datetime
from pathlib import Path
from typing import Any

from kubernetes.client.exceptions import ApiException

from agent_rollout import api
from e2e.bench.operator_scale import pct
from e2e.bench.rollback_speed import bench_scene, cluster, install_crd, terminate_as_exit
from e2e.cluster import ClusterState, alertmanager
from e2e.cluster.kubeapi import KubeApi, new_api_client
from e2e.cluster.ports import free_ports
from e2e.cluster.prometheus import reload as reload_prometheus
from e2e.rollout.incident import incident_rules, load_rules
from e2e.rollout.scene import CANDIDATE, OperatorProcess, wait_until

RUNS = 10
RPS = 20.0
ROLLOUT = "incident"
LENIENT_GATE = {"name": "error-rate", "template": "errorRate", "max": 0.9, "window": "30s"}


def firing_since(prometheus_url: str, alertname: str, namespace: str) -> float | None:
    """When Prometheus made the alert active (its activeAt: the rule evaluation that found it true; with
    no `for` it fires from then on), once it is firing; None before."""
    with urllib.request.urlopen(f"{prometheus_url}/api/v1/alerts", timeout=5) as resp:
        alerts = json.load(resp)["data"]["alerts"]
    for alert in alerts:
        labels = alert.get("labels", {})
        ours = labels.get("alertname") == alertname and labels.get("namespace") == namespace
        if ours and alert.get("state") == "firing":
            stamp = re.sub(r"(\.\d{6})\d*", r"\1", alert["activeAt"]).replace("Z", "+00:00")
            return datetime.fromisoformat(stamp).timestamp()
    return None


def received_at(log: Path, after: float) -> float | None:
    """Wall time of the operator's first "alert receiver" log line at or after `after` (its own clock)."""
    for line in log.read_text(errors="replace").splitlines():
        if "alert receiver:" not in line or " for rollouts" not in line:
            continue
        stamp = datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()
        if stamp >= after - 0.2:  # our poll of ALERTS lags the rule's evaluation by up to ~0.1 s
            return stamp
    return None


def one_run(index: int, state: ClusterState, kube: KubeApi) -> tuple[float, float]:
    namespace = f"bench-alert-{index}-{secrets.token_hex(3)}"
    body: Any = {"metadata": {"name": namespace, "labels": {"agent-rollout.dev/bench": "true"}}}
    kube.core.create_namespace(body)
    agents = driver = rules = None
    traffic_client = new_api_client(state.kubeconfig)
    try:
        scene = bench_scene(state, kube, namespace, {"error_ratio": 0.3}, traffic_client)
        agents, driver = scene.agents, scene.driver
        steps: list[dict[str, Any]] = [{"setWeight": 20}, {"pause": {"duration": "10m"}}]
        scene.apply(scene.rollout_manifest(ROLLOUT, steps=steps, gates=[LENIENT_GATE]))
        driver.start(max_requests=int(RPS * 300), duration_s=300, rps=RPS)
        wait_until("candidate at 20%", lambda: scene.route_weights()[CANDIDATE] == 20, 60)
        group = f"incident-{namespace}"
        rules = load_rules(state, group, incident_rules(namespace, ROLLOUT), group)
        fired_at: float = wait_until(
            "the alert firing in Prometheus",
            lambda: firing_since(state.prometheus_url, "AgentErrorSpike", namespace),
            60,
            0.1,
        )
        rolled_back_at: float = wait_until(
            "candidate weight 0",
            lambda: time.time() if scene.route_weights()[CANDIDATE] == 0 else None,
            60,
            0.1,
        )
        return fired_at, rolled_back_at
    finally:
        if rules is not None:
            rules.unlink(missing_ok=True)
            reload_prometheus(state.prometheus_url)
        if driver is not None:
            driver.close()
        traffic_client.close()  # type: ignore[no-untyped-call]
        if agents is not None:
            agents.stop()
        with suppress(ApiException):
            kube.custom.delete_namespaced_custom_object(
                api.GROUP, api.VERSION, namespace, api.PLURAL, ROLLOUT
            )
        kube.core.delete_namespace(namespace, propagation_policy="Background")


def main(runs: int = RUNS) -> None:
    print(f"== alert firing -> candidate weight 0: {runs} runs, real Prometheus + Alertmanager + operator")
    results: list[float] = []
    received: list[float] = []
    with terminate_as_exit(), cluster() as state:
        kube = KubeApi(state.kubeconfig)
        install_crd(state)
        metrics_port, alerts_port = free_ports(2)
        token_file = state.run_dir / "bench-alert-receiver.token"
        token_file.write_text(secrets.token_urlsafe(24) + "\n")
        args = [
            "--listen=127.0.0.1",
            f"--metrics-port={metrics_port}",
            f"--alerts-port={alerts_port}",
            f"--alerts-token-file={token_file}",
        ]
        operator = OperatorProcess(state.kubeconfig, state.run_dir / "bench-alert-operator.log", args=args)
        operator.start()
        webhook = f"http://127.0.0.1:{alerts_port}/alerts"
        try:
            with alertmanager.running(state.run_dir, "bench", webhook, token_file):
                for i in range(1, runs + 1):
                    try:
                        fired, routed = one_run(i, state, kube)
                    except Exception as e:  # one broken run must not hide the others' figures
                        print(f"run {i}/{runs}: FAILED: {e}", flush=True)
                        continue
                    results.append(routed - fired)
                    got = received_at(operator.log_path, fired)
                    split = ""
                    if got is not None and fired - 0.2 <= got <= routed:
                        received.append(routed - got)
                        split = (
                            f" = to the operator's receiver {got - fired:.2f}s"
                            f" + receiver to route {routed - got:.2f}s"
                        )
                    print(
                        f"run {i}/{runs}: alert firing -> candidate weight 0 {routed - fired:.2f}s{split}",
                        flush=True,
                    )
        finally:
            operator.stop()
            kube.close()
    if not results:
        print("alert -> weight 0: no successful run")
        return
    print(
        f"alert firing -> candidate weight 0 over {len(results)} runs: min {min(results):.2f}s "
        f"median {statistics.median(results):.2f}s p99 {pct(results, 0.99):.2f}s max {max(results):.2f}s "
        "(Prometheus -> Alertmanager (group_wait 0s) -> the operator's receiver -> plan -> route write)"
    )
    if received:
        print(
            "of which the operator (webhook received -> candidate weight 0 on the route), "
            f"{len(received)} runs: "
            f"median {statistics.median(received):.2f}s max {max(received):.2f}s"
        )
