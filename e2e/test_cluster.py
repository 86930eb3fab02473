"""Issue 2: the local control plane, Prometheus, simulated agents and weighted traffic really work."""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException
from prometheus_api_client import PrometheusConnect

from e2e.cluster import ClusterState
from e2e.cluster.components import FAKE_NODE_NAME
from e2e.cluster.kubeapi import KubeApi
from e2e.cluster.objects import SERVICE_PORT
from e2e.cluster.paths import GATEWAY_API_VERSION, KUBE_VERSION, REPO_ROOT, scratch_root
from e2e.sim.comparator import start_comparator
from e2e.sim.launcher import AgentGroup
from e2e.sim.route import GATEWAY_GROUP, HTTPROUTE_PLURAL, HTTPROUTE_VERSION
from e2e.sim.traffic import TrafficDriver

pytestmark = pytest.mark.e2e

# Past the controller-manager's node-monitor-grace-period (50 s) and a kwok lease (40 s) by a margin.
NODE_CHECK_AFTER_S = 70.0


def _eventually(check: Callable[[], Any], timeout_s: float, what: str, interval_s: float = 0.25) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(interval_s)


def _crd_established(kube_api: KubeApi, name: str) -> bool:
    crd: Any = kube_api.apiext.read_custom_resource_definition(name)
    return any(c.type == "Established" and c.status == "True" for c in crd.status.conditions or [])


def _status_crd(group: str, plural: str) -> dict[str, Any]:
    kind = plural[:-1].capitalize()
    schema = {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{group}"},
        "spec": {
            "group": group,
            "scope": "Namespaced",
            "names": {"plural": plural, "singular": plural[:-1], "kind": kind},
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "schema": {"openAPIV3Schema": schema},
                }
            ],
        },
    }


def test_control_plane_serves_kubectl_crds_and_deployments_on_kwok_nodes(
    cluster: ClusterState, kubectl: Callable[..., Any], kube_api: KubeApi, namespace: str
) -> None:
    version = json.loads(kubectl("version", "-o", "json").stdout)
    assert version["serverVersion"]["gitVersion"] == KUBE_VERSION
    nodes = kubectl("get", "nodes", "-o", "jsonpath={.items[*].metadata.name}").stdout.split()
    assert FAKE_NODE_NAME in nodes

    httproutes: Any = kube_api.apiext.read_custom_resource_definition("httproutes.gateway.networking.k8s.io")
    assert httproutes.metadata.annotations["gateway.networking.k8s.io/bundle-version"] == GATEWAY_API_VERSION
    assert _crd_established(kube_api, "httproutes.gateway.networking.k8s.io")

    # A CRD with a status subresource, unique per test so sessions sharing a cluster never collide.
    group, plural = "e2e.agent-rollout.dev", f"probe{secrets.token_hex(3)}s"
    kubectl("apply", "-f", "-", stdin=json.dumps(_status_crd(group, plural)))
    try:
        _eventually(lambda: _crd_established(kube_api, f"{plural}.{group}"), 30, "CRD Established")
        obj = {"apiVersion": f"{group}/v1", "kind": plural[:-1].capitalize(), "metadata": {"name": "p"}}
        _eventually(
            lambda: _try(
                lambda: kube_api.custom.create_namespaced_custom_object(group, "v1", namespace, plural, obj)
            ),
            10,
            "the new resource to be served",
        )
        kube_api.custom.patch_namespaced_custom_object_status(
            group, "v1", namespace, plural, "p", {"status": {"phase": "Ready"}}
        )
        # Status only changes through /status: a main-resource write leaves it alone.
        kube_api.custom.patch_namespaced_custom_object(
            group, "v1", namespace, plural, "p", {"status": {"phase": "Ignored"}}
        )
        got: Any = kube_api.custom.get_namespaced_custom_object(group, "v1", namespace, plural, "p")
        assert got["status"] == {"phase": "Ready"}
    finally:
        kubectl("delete", "crd", f"{plural}.{group}", "--wait=false")

    kube_api.create_deployment(namespace, "triage-agent", version="candidate", replicas=2)
    dep = kube_api.wait_deployment_available(namespace, "triage-agent", timeout_s=60)
    assert dep.status.available_replicas == 2
    replica_sets: list[Any] = kube_api.apps.list_namespaced_replica_set(namespace).items
    assert [rs.metadata.owner_references[0].name for rs in replica_sets] == ["triage-agent"]
    pods: list[Any] = kube_api.core.list_namespaced_pod(namespace).items
    assert len(pods) == 2
    for pod in pods:
        assert pod.spec.node_name == FAKE_NODE_NAME
        assert pod.status.phase == "Running"
        assert {c.type: c.status for c in pod.status.conditions}["Ready"] == "True"


def _try(call: Callable[[], Any]) -> bool:
    try:
        call()
    except ApiException as e:
        if e.status == 404:  # discovery of a just-established CRD can lag by a moment
            return False
        raise
    return True


def _by_version(prometheus: PrometheusConnect, promql: str) -> dict[str, float]:
    return {r["metric"]["version"]: float(r["value"][1]) for r in prometheus.custom_query(promql)}


def test_prometheus_returns_each_versions_agent_metrics(
    sim_agents: Callable[..., AgentGroup], namespace: str, prometheus: PrometheusConnect
) -> None:
    # Multi-second agent calls, recorded without sleeping: 40 calls take well under a second.
    slow = {
        "latency_sleep": False,
        "latency_distribution": "constant",
        "latency_median_s": 2.5,
        "latency_p95_s": 2.5,
    }
    agents = sim_agents(
        namespace,
        {
            "legacy": slow,
            "candidate": {**slow, "latency_median_s": 12.0, "latency_p95_s": 12.0, "flagged_ratio": 1.0},
        },
        seed=7,
    )
    started = time.monotonic()
    assert agents["legacy"].invoke(20) == [200] * 20
    assert agents["candidate"].invoke(20) == [200] * 20
    assert time.monotonic() - started < 10

    ns = f'namespace="{namespace}"'
    requests = _eventually(
        lambda: (
            (v := _by_version(prometheus, f"sum by (version) (agent_requests_total{{{ns}}})"))
            == {"legacy": 20.0, "candidate": 20.0}
            and v
        ),
        15,
        "20 requests per version in Prometheus",
    )
    assert requests == {"legacy": 20.0, "candidate": 20.0}

    def per_version(metric: str, selector: str = "") -> dict[str, float]:
        return _by_version(prometheus, f"sum by (version) ({metric}{{{ns}{selector}}})")

    assert per_version("gen_ai_client_operation_duration_seconds_count") == {
        "legacy": 20.0,
        "candidate": 20.0,
    }
    tokens = per_version("gen_ai_client_token_usage_sum", ',gen_ai_token_type="output"')
    assert tokens == {"legacy": 20.0 * 150, "candidate": 20.0 * 150}
    assert per_version("agent_answers_flagged_total") == {"legacy": 0.0, "candidate": 20.0}
    assert per_version("agent_eval_total") == {"legacy": 20.0, "candidate": 20.0}
    assert set(per_version("agent_eval_correct_total")) == {"legacy", "candidate"}
    cost = per_version("agent_cost_usd_total")
    assert cost == pytest.approx({"legacy": 0.04, "candidate": 0.04})
    p50 = _by_version(
        prometheus,
        "histogram_quantile(0.5, sum by (version, le) "
        f"(gen_ai_client_operation_duration_seconds_bucket{{{ns}}}))",
    )
    assert 2 < p50["legacy"] <= 3 and 10 < p50["candidate"] <= 15

    # The profile changes while the agent runs: now every legacy call fails with a 500.
    agents["legacy"].set_profile(error_ratio=1.0)
    assert agents["legacy"].invoke(5) == [500] * 5
    # The error series exist from the start at 0 (see test_agents_export_every_gate_series_at_zero...).
    errors = _eventually(
        lambda: (
            (v := per_version("gen_ai_client_operation_duration_seconds_count", ',error_type!=""')).get(
                "legacy"
            )
            == 5.0
            and v
        ),
        15,
        "5 errors of legacy in Prometheus",
    )
    assert errors == {"legacy": 5.0, "candidate": 0.0}
    assert per_version("agent_requests_total", ',code="500"') == {"legacy": 5.0, "candidate": 0.0}


def _agent_counts(agents: AgentGroup) -> dict[str, int]:
    return {version: int(agent.stats()["requests"]) for version, agent in agents.agents.items()}


def test_traffic_splits_by_httproute_weights_and_follows_changes(
    kube_api: KubeApi,
    namespace: str,
    sim_agents: Callable[..., AgentGroup],
    traffic: Callable[..., TrafficDriver],
) -> None:
    fast = {"latency_sleep": False}
    agents = sim_agents(namespace, {"legacy": fast, "candidate": fast}, wait_scraped=False)
    kube_api.create_agent_backends(namespace, {"legacy": "legacy", "candidate": "candidate"})
    kube_api.create_httproute(namespace, "triage", {"legacy": 90, "candidate": 10})
    driver = traffic(namespace, "triage", agents.urls(), concurrency=4, seed=11)
    driver.wait_for_weights({"legacy": 90, "candidate": 10}, timeout_s=10)

    records = driver.run(max_requests=2000, duration_s=60)
    assert len(records) == 2000 and {r.status for r in records} == {200}
    counts = _agent_counts(agents)  # the agents' own counts, not the driver's
    assert sum(counts.values()) == 2000
    print(f"90/10 route: legacy share {counts['legacy'] / 2000:.3f} over 2000 requests (agents' counts)")
    assert abs(counts["legacy"] / 2000 - 0.90) <= 0.03

    # Steady background traffic while the route changes, as during a real rollout step.
    driver.start(max_requests=20_000, duration_s=30, rps=300)
    time.sleep(0.5)
    patched_at = time.monotonic()
    kube_api.set_route_weights(namespace, "triage", {"legacy": 50, "candidate": 50})
    change = driver.wait_for_weights({"legacy": 50, "candidate": 50}, timeout_s=2)
    first = _eventually(
        lambda: driver.first_request_with(change.generation), 2, "a request with the new weights"
    )
    driver.stop()
    follow_s = first.sent_at - patched_at
    print(
        f"route patch -> watch event {change.observed_at - patched_at:.3f}s, -> first request {follow_s:.3f}s"
    )
    assert follow_s < 2.0, f"driver used the new weights {follow_s:.3f}s after the patch"

    before = _agent_counts(agents)
    records = driver.run(max_requests=2000, duration_s=60)
    assert {r.generation for r in records} == {change.generation}
    after = _agent_counts(agents)
    legacy = after["legacy"] - before["legacy"]
    assert after["candidate"] - before["candidate"] + legacy == 2000
    print(f"50/50 route: legacy share {legacy / 2000:.3f} over 2000 requests (agents' counts)")
    assert abs(legacy / 2000 - 0.50) <= 0.03


def _set_rule_filters(kube_api: KubeApi, namespace: str, name: str, filters: list[dict[str, Any]]) -> None:
    route = kube_api.get_httproute(namespace, name)
    route["spec"]["rules"][0]["filters"] = filters
    kube_api.custom.replace_namespaced_custom_object(
        GATEWAY_GROUP, HTTPROUTE_VERSION, namespace, HTTPROUTE_PLURAL, name, route
    )


def test_traffic_driver_mirrors_a_request_mirror_filters_share_to_the_real_comparator(
    kube_api: KubeApi,
    namespace: str,
    sim_agents: Callable[..., AgentGroup],
    traffic: Callable[..., TrafficDriver],
    tmp_path: Path,
) -> None:
    fast = {"latency_sleep": False}
    agents = sim_agents(namespace, {"legacy": fast, "candidate": fast}, wait_scraped=False)
    kube_api.create_agent_backends(namespace, {"legacy": "legacy", "candidate": "candidate"})
    kube_api.create_service(namespace, "comparator")
    kube_api.create_httproute(namespace, "support", {"legacy": 100, "candidate": 0})
    header_filter = {
        "type": "RequestHeaderModifier",
        "requestHeaderModifier": {"set": [{"name": "X-Tenant", "value": "acme"}]},
    }
    mirror = {
        "type": "RequestMirror",
        "requestMirror": {"backendRef": {"name": "comparator", "port": SERVICE_PORT}, "percent": 40},
    }
    # The apiserver's Gateway API schema accepts the filter next to another one.
    _set_rule_filters(kube_api, namespace, "support", [header_filter, mirror])
    fields = ["--mode", "json", "--field", "/status", "--field", "/flagged", "--field", "/tokens"]
    comparator = start_comparator(
        agents.url("legacy"), agents.url("candidate"), log_dir=tmp_path, args=fields
    )
    try:
        driver = traffic(namespace, "support", {**agents.urls(), "comparator": comparator.url}, seed=5)
        driver.wait_for_mirrors(["comparator"], timeout_s=10)
        records = driver.run(max_requests=1000, duration_s=60)
        mirrored = driver.wait_for_mirrors_sent(timeout_s=30)
        assert len(records) == 1000 and {(r.service, r.status) for r in records} == {("legacy", 200)}
        n = len(mirrored)
        print(f"40% mirror: {n} of 1000 requests mirrored to the comparator")
        assert driver.mirrors_shed == 0
        assert abs(n - 400) <= 5 * (1000 * 0.4 * 0.6) ** 0.5 and {r.status for r in mirrored} == {202}
        _eventually(lambda: comparator.counts()["match"] == n, 30, f"{n} comparisons")
        assert comparator.counts()["mismatch"] == 0 and comparator.counts()["candidate_error"] == 0
        # The live requests plus one shadow copy each reached legacy; the candidate got only the copies.
        assert _agent_counts(agents) == {"legacy": 1000 + n, "candidate": n}

        # The mirror filter removed, the other filter kept: no copy any more.
        _set_rule_filters(kube_api, namespace, "support", [header_filter])
        driver.wait_for_mirrors([], timeout_s=10)
        driver.run(max_requests=200, duration_s=60)
        assert len(driver.wait_for_mirrors_sent(timeout_s=30)) == n
        assert _agent_counts(agents) == {"legacy": 1200 + n, "candidate": n}
    finally:
        comparator.close()


def test_agents_export_every_gate_series_at_zero_before_any_call(
    sim_agents: Callable[..., AgentGroup], namespace: str, prometheus: PrometheusConnect
) -> None:
    agents = sim_agents(namespace, {"candidate": {"latency_sleep": False, "error_code": 503}})
    sel = f'namespace="{namespace}",version="candidate"'
    zero_series = [
        f'gen_ai_client_operation_duration_seconds_count{{{sel},error_type="500"}}',
        f'gen_ai_client_operation_duration_seconds_count{{{sel},error_type="503"}}',
        f'agent_requests_total{{{sel},code="500"}}',
        f'agent_requests_total{{{sel},code="503"}}',
        f"agent_answers_flagged_total{{{sel}}}",
        f"agent_cost_usd_total{{{sel}}}",
        f"agent_eval_total{{{sel}}}",
        f"agent_eval_correct_total{{{sel}}}",
        f'gen_ai_client_token_usage_sum{{{sel},gen_ai_token_type="output"}}',
    ]
    for promql in zero_series:  # scraped (wait_scraped), before any call
        assert [float(r["value"][1]) for r in prometheus.custom_query(promql)] == [0.0], promql

    # A short burst on that error series: increase() sees it because the series was at 0 before; had it
    # appeared with the burst, its first sample (3) would count as nothing.
    agents["candidate"].set_profile(error_ratio=1.0)
    assert agents["candidate"].invoke(3) == [503] * 3
    failed = f'gen_ai_client_operation_duration_seconds_count{{{sel},error_type!=""}}'
    _eventually(
        lambda: _by_version(prometheus, f"sum by (version) ({failed})") == {"candidate": 3.0},
        15,
        "3 errors scraped",
    )
    burst = _by_version(prometheus, f"sum by (version) (increase({failed}[1m]))")
    assert burst.get("candidate", 0.0) >= 2.5, burst


def test_deployment_availability_follows_the_agent_process(
    kube_api: KubeApi, namespace: str, sim_agents: Callable[..., AgentGroup]
) -> None:
    fast = {"latency_sleep": False}
    agents = sim_agents(namespace, {"legacy": fast, "candidate": fast}, wait_scraped=False)
    kube_api.create_agent_backends(namespace, {"legacy": "legacy", "candidate": "candidate"}, replicas=2)
    for name in ("legacy", "candidate"):
        kube_api.wait_deployment_available(namespace, name, timeout_s=60)

    def candidate_pods_ready() -> set[str]:
        pods: list[Any] = kube_api.core.list_namespaced_pod(
            namespace, label_selector="app.kubernetes.io/name=candidate"
        ).items
        return {next(c.status for c in p.status.conditions if c.type == "Ready") for p in pods}

    for stop in (agents.kill, agents.stop):  # a crash, then a clean shutdown
        started = time.monotonic()
        stop("candidate")
        kube_api.wait_available_replicas(namespace, "candidate", 0, timeout_s=10)
        print(f"{stop.__name__}: candidate availableReplicas 0 after {time.monotonic() - started:.1f}s")
        assert candidate_pods_ready() == {"False"}
        legacy: Any = kube_api.apps.read_namespaced_deployment_status("legacy", namespace)
        assert legacy.status.available_replicas == 2  # only the candidate's pods follow its agent
        dep: Any = kube_api.apps.read_namespaced_deployment_status("candidate", namespace)
        assert {c.type: c.status for c in dep.status.conditions}["Available"] == "False"

        started = time.monotonic()
        agents.start("candidate")
        kube_api.wait_deployment_available(namespace, "candidate", timeout_s=10)
        print(f"start: candidate Available again after {time.monotonic() - started:.1f}s")
        assert candidate_pods_ready() == {"True"}
        assert agents["candidate"].invoke(2) == [200, 200]  # same URL as before


def test_etcd_is_one_kubernetes_supports_so_watch_lists_and_cached_lists_work(
    cluster: ClusterState, kubectl: Callable[..., Any], kube_api: KubeApi, namespace: str
) -> None:
    """Debian's etcd 3.4 has no progress notifications: the apiserver could not serve a watch-list
    stream (it failed, so the harness turned the feature off) and read every list page from etcd,
    where a production cluster (etcd 3.5+) answers from its watch cache. The harness runs the etcd it
    builds; a watch-list ends its initial events with the bookmark that says so."""
    etcd = next(p for p in cluster.processes if p.name == "etcd")
    assert Path(etcd.exe) == cluster.bin_dir / "etcd"
    kube_api.core.create_namespaced_config_map(namespace, {"metadata": {"name": "seen"}})
    stream = kubectl(
        "get",
        "--raw",
        f"/api/v1/namespaces/{namespace}/configmaps?watch=1&sendInitialEvents=true"
        "&resourceVersionMatch=NotOlderThan&allowWatchBookmarks=true&timeoutSeconds=3",
    ).stdout
    events = [json.loads(line) for line in stream.splitlines() if line.strip()]
    added = [e["object"]["metadata"]["name"] for e in events if e["type"] == "ADDED"]
    assert "seen" in added
    end = [
        e
        for e in events
        if e["type"] == "BOOKMARK"
        and e["object"]["metadata"].get("annotations", {}).get("k8s.io/initial-events-end") == "true"
    ]
    assert end, f"no end-of-initial-events bookmark in {[e['type'] for e in events]}"


def test_scratch_dir_is_private_to_the_clone() -> None:
    # /dev/shm is machine-wide: two clones must not share (and wipe) each other's etcd data.
    assert scratch_root(Path("/src/clone-a")) != scratch_root(Path("/src/clone-b"))
    assert scratch_root() == scratch_root(REPO_ROOT)


def test_fake_node_and_deployments_stay_ready_past_the_node_grace_period(
    cluster: ClusterState, kube_api: KubeApi, namespace: str
) -> None:
    """The controller-manager marks a node NotReady (and all its pods Ready=False) when its heartbeat
    is older than --node-monitor-grace-period (50 s); kwok must keep the fake node's heartbeat going.
    Last in this file, so the session's other tests pass most of that time."""
    kube_api.create_deployment(namespace, "steady", version="legacy")
    kube_api.wait_deployment_available(namespace, "steady", timeout_s=60)
    node: Any = kube_api.core.read_node(FAKE_NODE_NAME)
    check_at = node.metadata.creation_timestamp + timedelta(seconds=NODE_CHECK_AFTER_S)

    def node_ready() -> str:
        n: Any = kube_api.core.read_node(FAKE_NODE_NAME)
        return str(next(c.status for c in n.status.conditions if c.type == "Ready"))

    def available() -> tuple[int, str]:
        dep: Any = kube_api.apps.read_namespaced_deployment_status("steady", namespace)
        conditions = {c.type: c.status for c in dep.status.conditions}
        return dep.status.available_replicas or 0, conditions["Available"]

    # Checked all along, so a lapse fails when it happens rather than at the end. A lost node is back
    # within seconds (kwok re-initializes it), its pods stay Ready=False: the Deployment shows it.
    while datetime.now(UTC) < check_at:
        assert node_ready() == "True", f"node {FAKE_NODE_NAME} lost Ready"
        assert available() == (1, "True")
        time.sleep(1)
    assert node_ready() == "True"
    assert available() == (1, "True")
