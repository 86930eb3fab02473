"""The real operator process at N AgentRollouts: `python -m e2e.bench.operator_scale [--rollouts N]`.

A benchmark, not a test: it prints figures and asserts nothing. One operator process
(`python -m agent_rollout.main`) against a real kube-apiserver, etcd, controller-manager, kwok and
Prometheus, all started by the benchmark for itself (a cluster of its own, never a shared `cluster up`
one: N rollouts' objects and the apiserver's counters must be ours alone) and stopped at the end,
which deletes everything it created (etcd's data lives in the run's scratch dir).

Per rollout, 100 to a namespace: legacy and candidate Deployments of 1 replica each (kwok pods, bound
to the fake node by nodeName: no scheduler), a headless selector-less Service each (the cluster's
/24 service range holds 254 ClusterIPs; the operator never reads Services), an HTTPRoute with the two
backendRefs (legacy 100, candidate 0), and an AgentRollout: interval 30s, gates errorRate max 0.05
and latencyQuantile p95 max 8s (window 1m), minSamples 20, steps [setWeight 10, pause 1h,
setWeight 50, pause 1h, setWeight 100], so it sits in a steady pause; every 10th rollout pauses
60s instead of the first hour (pause-end lateness). Metrics: one exporter process (e2e/sim/fleet.py)
serves the series the two gates read for every (namespace, version), registered through file_sd and
scraped every 5 s (the cluster's 1 s default would be 100,000 samples a second at N=10,000).

The controller-manager gets --kube-api-qps=500 (default 20): at 20 requests a second creating 2N
ReplicaSets and 2N pods alone takes over 30 minutes at N=10,000.

Printed, with N, interval, machine and date:
 1. operator RSS: empty cluster, 0 rollouts but the 2N Deployments and N routes it indexes, and
    the steady state at N (median of samples every 10 s over the window); per rollout above both;
 2. start-up: operator start -> every rollout has status.phase (its first status: the operator's
    acknowledgement) and -> every rollout's phase left Pending (step 1 entered, its route written),
    from a watch on the rollouts: p50, p90, all; status writes during start-up; and, after a
    restart of the operator with N rollouts mid-pause, `status.abort` patched on a few rollouts
    right after the start -> their route's candidate weight 0 (route watch);
 3. status writes (PATCH agentrollouts/status, from the apiserver's own apiserver_request_total)
    and other operator writes over the steady window; per rollout per 5 minutes; 3b. the same over
    the longest measured-value refresh period from the window's start (--writes-window, 750 s by
    default): a shorter window may fall on the wave of first refreshes after 10,000 rollouts started
    together, or between waves;
 4. pause-end lateness of the 60 s pauses: history decision entering the next step minus (pause
    start + 60 s), p50/p99/max; status times have whole seconds, so +-1 s;
 5. breach -> candidate weight 0: K rollouts (different ones) start answering 50% errors at times
    spread over one interval; from the first 0.25 s poll at which Prometheus shows the error rate
    over 1m above 0.05 with >= 20 samples, to the route watch seeing the candidate's weight 0;
    split at the fast check's wake (its log line): seeing the breach, then acting on it;
 5l. the same for latency: L other rollouts answer half their requests slower than the histogram's
    last finite bucket (p95 reads 10 s, the gate's max is 8 s), which the fast check sees on the
    whole fleet's histogram;
 6. "connection pool is full" warnings in the operator log, and the operator's CPU seconds
    (utime + stime from /proc/<pid>/stat) over the steady window, and the same for every other
    process the benchmark started (Prometheus, the control plane, kwok, the fleet exporter, itself).

The benchmark's own load during the measurements: reading /proc, a Table list (no objects) during
start-up, a label-selected watch on the few routes it breaches or aborts, two Prometheus queries
every 0.25 s during the breaches. Nothing runs during the steady window but /proc reads. Other
processes on the machine (other benchmarks, tests) are not ours: the load average is printed.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import re
import shutil
import ssl
import statistics
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar, cast

from kubernetes import client, config, watch
from kubernetes.client.exceptions import ApiException
from prometheus_client.parser import text_string_to_metric_families

from agent_rollout import api
from agent_rollout.looplag import STALL
from agent_rollout.reconcile import ANALYSIS_REFRESH, ANALYSIS_REFRESH_SPREAD
from agent_rollout.sentinel import SLOW_CYCLE
from e2e.bench.rollback_speed import install_crd, stopped_at_the_end, terminate_as_exit
from e2e.cluster import components, objects, prometheus
from e2e.cluster.lifecycle import start_cluster
from e2e.cluster.paths import REPO_ROOT, RUN_ROOT, scratch_root
from e2e.cluster.ports import free_ports
from e2e.cluster.state import ClusterState
from e2e.rollout.scene import OperatorProcess
from e2e.sim.fleet import DEFAULT_ERROR_RATIO, METRIC, Fleet, start_fleet
from e2e.sim.route import GATEWAY_GROUP, HTTPROUTE_PLURAL, HTTPROUTE_VERSION

T = TypeVar("T")

ROLLOUTS = 1000
PER_NAMESPACE = 100
INTERVAL_S = 30
WINDOW_S = 300
BREACHES = 20
ABORTS = 5
SHORT_PAUSE_S = 60
SHORT_EVERY = 10  # every 10th rollout pauses SHORT_PAUSE_S
LONG_PAUSE = "1h"
ERROR_MAX = 0.05
LATENCY_MAX_S = 8
GATE_WINDOW = "1m"
GATE_WINDOW_S = 60
MIN_SAMPLES = 20
BREACH_ERROR_RATIO = 0.5
BREACH_SLOW_RATIO = 0.5
SLOW_BREACHES = 10
SCRAPE_S = 5
WORKERS = 16
CM_QPS = 500
RUN_PREFIX = "bench-scale-"
BLIND_METRIC = "agent_rollout_fast_check_blind_seconds"
SWEEP_METRIC = "agent_rollout_fast_check_sweep_seconds"
QUERY_ERRORS_METRIC = "agent_rollout_prometheus_query_errors"
PROMETHEUS_QUEUE_METRIC = "agent_rollout_prometheus_queue_seconds"
LOOP_LAG_METRIC = "agent_rollout_event_loop_lag_seconds"
LOOP_STALL_S = STALL  # the operator logs where its event loop is once held this long
STALLS_SHOWN = 5
LABEL = "bench.agent-rollout.dev/role"  # on routes: breach / abort; on rollouts: short / long
SCALE_LABEL = "bench.agent-rollout.dev/scale"
# The longest of the rollouts' measured-value refresh periods (reconcile.analysis_refresh): a window
# this long holds every rollout's refresh, wherever it starts.
REFRESH_PERIOD_S = ANALYSIS_REFRESH * (1 + ANALYSIS_REFRESH_SPREAD)


# ---------------------------------------------------------------- what is created


@dataclass(frozen=True)
class Target:
    namespace: str
    name: str  # rollout and route
    legacy: str
    candidate: str
    role: str  # "short" (60 s pause), "breach" (errors), "slow" (latency), "abort" or "steady"


def plan_targets(n: int, breaches: int, aborts: int, slow: int = 0) -> list[Target]:
    roles = ["short" if i % SHORT_EVERY == SHORT_EVERY // 2 else "steady" for i in range(n)]
    steady = [i for i, r in enumerate(roles) if r == "steady"]
    # Spread over the namespaces: every k-th steady rollout, the aborts and latency breaches offset.
    for role, count, offset in (("breach", breaches, 0), ("abort", aborts, 1), ("slow", slow, 2)):
        free = [i for i in steady if roles[i] == "steady"]
        if count > len(free):
            raise SystemExit(f"{count} {role} rollouts do not fit in {len(free)} steady ones")
        stride = max(1, len(free) // max(1, count))
        for j in range(count):
            roles[free[(j * stride + offset) % len(free)]] = role
    return [
        Target(
            f"scale-{i // PER_NAMESPACE:03d}",
            f"agent-{i:05d}",
            f"agent-{i:05d}-legacy",
            f"agent-{i:05d}-cand",
            r,
        )
        for i, r in enumerate(roles)
    ]


def fleet_pairs(targets: Iterable[Target]) -> list[tuple[str, str]]:
    """Every (namespace, version) the fleet exporter serves: both sides of every rollout."""
    return [(t.namespace, v) for t in targets for v in (t.legacy, t.candidate)]


def steps(short: bool) -> list[dict[str, Any]]:
    first = f"{SHORT_PAUSE_S}s" if short else LONG_PAUSE
    return [
        {"setWeight": 10},
        {"pause": {"duration": first}},
        {"setWeight": 50},
        {"pause": {"duration": LONG_PAUSE}},
        {"setWeight": 100},
    ]


def rollout_body(t: Target, prometheus_url: str, interval_s: int) -> dict[str, Any]:
    return {
        "apiVersion": f"{api.GROUP}/{api.VERSION}",
        "kind": api.KIND,
        "metadata": {
            "name": t.name,
            "labels": {SCALE_LABEL: "true", LABEL: "short" if t.role == "short" else "long"},
        },
        "spec": {
            "legacy": {"deployment": t.legacy},
            "candidate": {"deployment": t.candidate},
            "traffic": {
                "gatewayAPI": {
                    "httpRoute": t.name,
                    "legacyBackend": t.legacy,
                    "candidateBackend": t.candidate,
                }
            },
            "analysis": {
                "prometheus": {"url": prometheus_url, "timeout": "10s"},
                "interval": f"{interval_s}s",
                "minSamples": MIN_SAMPLES,
                "gates": [
                    {"name": "error-rate", "template": "errorRate", "max": ERROR_MAX, "window": GATE_WINDOW},
                    {
                        "name": "p95-latency",
                        "template": "latencyQuantile",
                        "quantile": 0.95,
                        "max": LATENCY_MAX_S,
                        "window": GATE_WINDOW,
                    },
                ],
            },
            "steps": steps(t.role == "short"),
        },
    }


def deployment_body(name: str) -> dict[str, Any]:
    body = objects.deployment(name, version=name, replicas=1)
    body["metadata"]["labels"][SCALE_LABEL] = "true"
    # Bound to kwok's node directly: the scheduler would add 2N bindings at its own 50 requests/s.
    body["spec"]["template"]["spec"]["nodeName"] = components.FAKE_NODE_NAME
    return body


def service_body(name: str) -> dict[str, Any]:
    # Headless and without a selector: no ClusterIP (the /24 range would run out at 254) and no
    # EndpointSlices to maintain. Routes only name the Service; the operator never reads it.
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name},
        "spec": {
            "clusterIP": "None",
            "ports": [{"name": "http", "port": objects.SERVICE_PORT, "targetPort": 8080}],
        },
    }


def route_body(t: Target) -> dict[str, Any]:
    body = objects.httproute(t.name, {t.legacy: 100, t.candidate: 0})
    body["metadata"]["labels"] = {SCALE_LABEL: "true", LABEL: t.role}
    return body


# ---------------------------------------------------------------- Kubernetes, in bulk and lightly


def bulk_client(kubeconfig: Path, pool: int) -> client.ApiClient:
    cfg = client.Configuration()
    config.load_kube_config(config_file=str(kubeconfig), client_configuration=cfg)  # type: ignore[no-untyped-call]
    cfg.connection_pool_maxsize = pool
    return client.ApiClient(cfg)


def run_all(what: str, calls: Sequence[Callable[[], Any]], workers: int = WORKERS) -> float:
    """Every call on a thread pool; AlreadyExists counts as done, throttling and 5xx are retried.
    Returns the seconds it took; raises with the first error that retries did not cure."""

    def one(call: Callable[[], Any]) -> str | None:
        for attempt in range(8):
            try:
                call()
                return None
            except ApiException as e:
                if e.status == 409:
                    return None
                if e.status not in (429, 500, 502, 503, 504) or attempt == 7:
                    return f"{e.status} {e.reason}: {(e.body or '')[:300]}"
            except Exception as e:  # a dropped connection under load
                if attempt == 7:
                    return f"{type(e).__name__}: {e}"
            time.sleep(0.2 * 2**attempt)
        return "unreachable"

    t0 = time.monotonic()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        errors = [e for e in pool.map(one, calls) if e]
    took = time.monotonic() - t0
    if errors:
        raise RuntimeError(f"{what}: {len(errors)} of {len(calls)} calls failed, first: {errors[0]}")
    print(f"  {what}: {len(calls)} in {took:.0f}s ({len(calls) / max(took, 1e-9):.0f}/s)", flush=True)
    return took


def raw_get(
    api_client: client.ApiClient, path: str, query: dict[str, str], accept: str = "application/json"
) -> Any:
    """GET without the client's model deserialization (slow at 20,000 objects)."""
    url = f"{api_client.configuration.host}{path}?{urllib.parse.urlencode(query)}"
    resp = api_client.call_api("GET", url, header_params={"Accept": accept}, _request_timeout=120)
    data = resp.read()
    if resp.status != 200:
        raise RuntimeError(f"GET {path}: {resp.status} {resp.reason}: {data[:300]!r}")
    return json.loads(data)


def phase_table(api_client: client.ApiClient) -> dict[str, dict[str, Any]]:
    """name -> {Phase, Step, Candidate} for every AgentRollout: the server-side Table of the CRD's
    printer columns, from the watch cache (resourceVersion=0), without the objects: ~100 bytes a row."""
    table = raw_get(
        api_client,
        f"/apis/{api.GROUP}/{api.VERSION}/{api.PLURAL}",
        {"resourceVersion": "0", "includeObject": "None", "labelSelector": f"{SCALE_LABEL}=true"},
        accept="application/json;as=Table;v=v1;g=meta.k8s.io",
    )
    names = [c["name"] for c in table["columnDefinitions"]]
    return {row["cells"][0]: dict(zip(names, row["cells"], strict=False)) for row in table.get("rows") or []}


def list_rollouts(api_client: client.ApiClient, selector: str) -> list[dict[str, Any]]:
    body = raw_get(
        api_client,
        f"/apis/{api.GROUP}/{api.VERSION}/{api.PLURAL}",
        {"resourceVersion": "0", "labelSelector": selector},
    )
    return cast(list[dict[str, Any]], body.get("items") or [])


def paged_list_seconds(api_client: client.ApiClient, path: str, page: int = 500) -> tuple[float, int]:
    """Seconds to list every object at `path` page by page as the operator's informers do (a
    consistent list, pages of 500), and how many there were: the floor under anything the operator
    must list before it acts."""
    started, count, token = time.monotonic(), 0, ""
    while True:
        query = {"limit": str(page), **({"continue": token} if token else {})}
        body = raw_get(api_client, path, query)
        count += len(body.get("items") or [])
        token = (body.get("metadata") or {}).get("continue") or ""
        if not token:
            return time.monotonic() - started, count


def count_available(api_client: client.ApiClient) -> int:
    """Deployments with an available replica, from the server-side Table (the Available column), not
    the objects: a full list of 20,000 Deployments every few seconds was a good part of the
    apiserver's CPU while kwok's pods were coming up."""
    table = raw_get(
        api_client,
        "/apis/apps/v1/deployments",
        {"resourceVersion": "0", "includeObject": "None", "labelSelector": f"{SCALE_LABEL}=true"},
        accept="application/json;as=Table;v=v1;g=meta.k8s.io",
    )
    column = [c["name"] for c in table["columnDefinitions"]].index("Available")
    return sum(1 for row in table.get("rows") or [] if int(row["cells"][column] or 0) >= 1)


def candidate_weight(route: dict[str, Any], candidate: str) -> int | None:
    for rule in (route.get("spec") or {}).get("rules") or []:
        for ref in rule.get("backendRefs") or []:
            if ref.get("name") == candidate:
                return int(ref.get("weight", 1))
    return None


def follow(
    custom: client.CustomObjectsApi,
    resource: tuple[str, str, str],
    selector: str,
    record: Callable[[dict[str, Any]], None],
    stop: threading.Event,
    listed: threading.Event,
    watch_s: int = 30,
) -> None:
    """List, then watch, the custom objects of `resource` matching `selector` until `stop`, passing
    every object (listed, added, modified) to `record`; `listed` is set after the first list. Lists
    and watches again after an error."""
    rv: str | None = None
    while not stop.is_set():
        try:
            if rv is None:
                listing: Any = custom.list_cluster_custom_object(*resource, label_selector=selector)
                for item in listing.get("items") or []:
                    record(item)
                rv = str(listing["metadata"]["resourceVersion"])
                listed.set()
            w = watch.Watch()  # type: ignore[no-untyped-call]
            for event in w.stream(  # type: ignore[no-untyped-call]
                custom.list_cluster_custom_object,
                *resource,
                label_selector=selector,
                resource_version=rv,
                timeout_seconds=watch_s,
                _request_timeout=watch_s + 10,
            ):
                if event["type"] == "ERROR":
                    rv = None
                    break
                rv = str(event["object"]["metadata"]["resourceVersion"])
                if event["type"] in ("ADDED", "MODIFIED"):
                    record(event["object"])
                if stop.is_set():
                    w.stop()  # type: ignore[no-untyped-call]
        except Exception:
            rv = None
            stop.wait(0.2)


class RouteWatch:
    """A cluster-wide watch on the routes with one value of LABEL: when each first gave its candidate
    weight 0 after arm(). Few routes, so its own load is nothing."""

    def __init__(self, kubeconfig: Path, role: str, candidates: dict[tuple[str, str], str]) -> None:
        self._client = bulk_client(kubeconfig, 2)
        self._custom = client.CustomObjectsApi(self._client)
        self._selector = f"{LABEL}={role}"
        self._candidates = candidates  # (namespace, route) -> candidate service
        self._armed: dict[tuple[str, str], float] = {}
        self.zero_at: dict[tuple[str, str], float] = {}
        self.weights: dict[tuple[str, str], int | None] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"route-watch-{role}", daemon=True)
        self._thread.start()
        if not self._ready.wait(30):
            raise RuntimeError(f"route watch {role}: no initial list within 30 s")

    def arm(self, key: tuple[str, str], at: float) -> None:
        """From `at` on, the first weight-0 event of this route counts (or now, if it is 0 already)."""
        with self._lock:
            self._armed[key] = at
            if self.weights.get(key) == 0:
                self.zero_at.setdefault(key, time.monotonic())

    def _record(self, obj: dict[str, Any]) -> None:
        meta = obj.get("metadata") or {}
        key = (meta.get("namespace", ""), meta.get("name", ""))
        if key not in self._candidates:
            return
        weight = candidate_weight(obj, self._candidates[key])
        now = time.monotonic()
        with self._lock:
            self.weights[key] = weight
            if weight == 0 and key in self._armed and key not in self.zero_at:
                self.zero_at[key] = now

    def _run(self) -> None:
        resource = (GATEWAY_GROUP, HTTPROUTE_VERSION, HTTPROUTE_PLURAL)
        follow(self._custom, resource, self._selector, self._record, self._stop, self._ready, watch_s=5)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(20)
        self._client.close()  # type: ignore[no-untyped-call]


class PhaseWatch:
    """A cluster-wide watch on the benchmark's rollouts: when each first had a status.phase. A watch is
    served from the apiserver's watch cache with one encoding per event for every watcher, so it costs
    the apiserver next to nothing; a Table list of 10,000 rollouts every 2 s (what measured start-up
    before) cost it a good share of a core while the operator was writing."""

    def __init__(self, kubeconfig: Path, started: float) -> None:
        self._client = bulk_client(kubeconfig, 2)
        self._custom = client.CustomObjectsApi(self._client)
        self._started = started
        self.first: dict[str, float] = {}  # name -> seconds after `started`
        # name -> seconds after `started` when its phase first left Pending: step 1 entered, its route
        # written (the first status is only the operator's acknowledgement, planner.first_sight).
        self.begun: dict[str, float] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="phase-watch", daemon=True)
        self._thread.start()

    def count(self) -> int:
        with self._lock:
            return len(self.first)

    def times(self) -> list[float]:
        with self._lock:
            return list(self.first.values())

    def begun_count(self) -> int:
        with self._lock:
            return len(self.begun)

    def begun_times(self) -> list[float]:
        with self._lock:
            return list(self.begun.values())

    def _record(self, obj: dict[str, Any]) -> None:
        name = (obj.get("metadata") or {}).get("name", "")
        phase = (obj.get("status") or {}).get("phase")
        if phase:
            now = time.monotonic() - self._started
            with self._lock:
                self.first.setdefault(name, now)
                if phase != "Pending":
                    self.begun.setdefault(name, now)

    def _run(self) -> None:
        resource = (api.GROUP, api.VERSION, api.PLURAL)
        follow(self._custom, resource, f"{SCALE_LABEL}=true", self._record, self._stop, threading.Event())

    def close(self) -> None:
        self._stop.set()
        self._thread.join(60)
        self._client.close()  # type: ignore[no-untyped-call]


# ---------------------------------------------------------------- the operator process, from outside


def startup_pass_s(op: OperatorProcess, timeout_s: float) -> float | None:
    """Seconds from start to the operator's "start-up pass done" (every rollout reconciled once)."""
    pattern = re.compile(r"start-up pass done: every rollout reconciled once, ([0-9.]+) s after start")
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = pattern.search(op.log_path.read_text(errors="replace"))
        if found:
            return float(found.group(1))
        time.sleep(1)
    return None


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # After the command: state is field 3, utime 14 and stime 15 (1-based, man 5 proc).
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def operator_pid(op: OperatorProcess) -> int:
    assert op.proc is not None
    return op.proc.pid


def log_slice(log: Path, start: int = 0, end: int | None = None) -> bytes:
    """The operator's log between two byte offsets (to its end without `end`)."""
    with log.open("rb") as f:
        f.seek(start)
        return f.read(None if end is None else max(0, end - start))


def pool_warnings(log: Path, start: int = 0, end: int | None = None) -> int:
    return len(re.findall(rb"connection pool is full", log_slice(log, start, end), flags=re.IGNORECASE))


STALL_LINE = re.compile(
    r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) WARNING agent_rollout.looplag: event loop held "
    r"([0-9.]+) s so far; the loop's thread is at (.*)$"
)


def stalls(log: Path, start: int, end: int) -> list[tuple[float, str]]:
    """The operator's event-loop stalls (looplag) logged between two offsets of its log: how long
    the loop had been held when logged, and where its thread was (innermost frame first)."""
    text = log_slice(log, start, end).decode(errors="replace")
    return [(float(m[2]), m[3]) for line in text.splitlines() if (m := STALL_LINE.match(line))]


def settled_rss(op: OperatorProcess, min_s: float = 20.0, max_s: float = 120.0) -> float:
    """RSS once it stops growing: two samples 10 s apart within 2%, after at least min_s."""
    pid = operator_pid(op)
    t0 = time.monotonic()
    time.sleep(min_s)
    last = rss_mib(pid)
    while time.monotonic() - t0 < max_s:
        time.sleep(10)
        now = rss_mib(pid)
        if abs(now - last) <= 0.02 * last:
            return now
        last = now
    return last


# ---------------------------------------------------------------- apiserver and Prometheus metrics


def apiserver_requests(state: ClusterState) -> dict[tuple[str, str, str], float]:
    """apiserver_request_total summed over codes etc.: (resource, subresource, verb) -> count."""
    pki = state.run_dir / "pki"
    ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
    ctx.load_cert_chain(str(pki / "admin.crt"), str(pki / "admin.key"))
    with urllib.request.urlopen(f"{state.apiserver_url}/metrics", context=ctx, timeout=30) as resp:
        text = resp.read().decode()
    totals: dict[tuple[str, str, str], float] = {}
    for line in text.splitlines():
        if not line.startswith("apiserver_request_total{"):
            continue
        labels_text, value = line[len("apiserver_request_total{") :].rsplit("} ", 1)
        labels = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', labels_text))
        key = (labels.get("resource", ""), labels.get("subresource", ""), labels.get("verb", ""))
        totals[key] = totals.get(key, 0.0) + float(value)
    return totals


def delta(
    after: dict[tuple[str, str, str], float], before: dict[tuple[str, str, str], float]
) -> dict[tuple[str, str, str], float]:
    return {k: v - before.get(k, 0.0) for k, v in after.items() if v - before.get(k, 0.0) > 0}


def _series(prometheus_url: str, promql: str) -> dict[tuple[str, str], float]:
    return {
        (r["metric"].get("namespace", ""), r["metric"].get("version", "")): float(r["value"][1])
        for r in prometheus.query(prometheus_url, promql, timeout_s=10)
    }


def prometheus_own_metrics(prometheus_url: str) -> str:
    with urllib.request.urlopen(f"{prometheus_url}/metrics", timeout=10) as resp:
        return cast(bytes, resp.read()).decode()


def without_focus(promql: str) -> str:
    """A query with its focus (the regexes of the pairs it is narrowed to) left out: one shape per block."""
    return re.sub(r'=~"[^"]*"', '=~"…"', promql)


def query_log_summary(path: Path, seconds: float, top: int = 6) -> list[str]:
    """The query shapes that took most of Prometheus' query time in its query log (`top` of them):
    count, per second, time per query (median, max) and share of all the logged queries' time."""
    spent: dict[str, list[float]] = {}
    with suppress(OSError), path.open() as log:
        for line in log:
            with suppress(ValueError, KeyError, TypeError):
                entry = json.loads(line)
                took = float(entry["stats"]["timings"]["execTotalTime"])
                spent.setdefault(without_focus(entry["params"]["query"]), []).append(took)
    total = sum(sum(times) for times in spent.values())
    ranked = sorted(spent.items(), key=lambda item: -sum(item[1]))
    lines = [
        f"{len(times) / seconds:.2f}/s, {statistics.median(times):.3f}s median, {max(times):.3f}s max, "
        f"{100 * sum(times) / total:.0f}% of the time: {shape[:160]}"
        for shape, times in ranked[:top]
    ]
    count = sum(len(times) for times in spent.values())
    return [f"{count} queries, {total:.1f}s of query time in {seconds:.0f}s ({len(spent)} shapes)", *lines]


def logged_queries(path: Path) -> list[tuple[float, float, str]]:
    """Prometheus' query log as (evaluation time as wall clock, execTotalTime, query), in log order."""
    found: list[tuple[float, float, str]] = []
    with suppress(OSError), path.open() as log:
        for line in log:
            with suppress(ValueError, KeyError, TypeError):
                entry = json.loads(line)
                params, timings = entry["params"], entry["stats"]["timings"]
                at = datetime.fromisoformat(params["start"].replace("Z", "+00:00")).timestamp()
                found.append((at, float(timings["execTotalTime"]), params["query"]))
    return found


def _shape_name(query: str) -> str:
    """A fleet query of the operator's by what it reads (the fast check's and the evaluations' blocks)."""
    if "group_left" in query:
        return "latency-shortfall"
    if "histogram_quantile" in query:
        return "quantile"
    if 'error_type!=""' in query:
        return "errors"
    if "count by (le)" in query:
        return "bucket-bounds"
    return "count" if "_count" in query else without_focus(query)[:60]


def breach_timeline(queries: Sequence[tuple[float, float, str]], visible: float, woken: float) -> str:
    """The operator's fleet queries in flight or sent from 2 s before a breach became visible until the
    fast check woke its rollout (wall clock), each as its send time from visibility, its time and its
    shape: which query the breach waited for, and what ran beside it. Focused queries (a few pairs)
    and the benchmark's own polls (versions only) are counted, not listed."""
    fleet, small = [], 0
    for at, took, query in queries:
        if at + took < visible - 2 or at > woken:
            continue
        if "namespace=~" in query or "version=~" in query:
            small += 1
            continue
        fleet.append(f"{at - visible:+.2f}s {_shape_name(query)} {took:.2f}s")
    listed = " | ".join(fleet)
    return f"woken {woken - visible:+.2f}s; fleet queries: {listed}; {small} focused or ours"


def engine_quantiles(prometheus_url: str) -> str:
    """Prometheus' own summary of its query engine (its recent queries, all clients): how long a query
    spends selecting series (prepare_time) and evaluating (inner_eval), p50/p90/p99."""
    text = prometheus_own_metrics(prometheus_url)
    found: dict[str, dict[str, float]] = {}
    pattern = r'^prometheus_engine_query_duration_seconds\{slice="(\w+)",quantile="([\d.]+)"\} (\S+)$'
    for slice_, quantile, value in re.findall(pattern, text, re.MULTILINE):
        found.setdefault(slice_, {})[quantile] = float(value)
    return "; ".join(
        f"{slice_} " + " ".join(f"p{float(q) * 100:.0f} {v:.2f}s" for q, v in sorted(found[slice_].items()))
        for slice_ in ("prepare_time", "inner_eval")
        if slice_ in found
    )


def engine_queries(prometheus_url: str) -> float | None:
    """Queries Prometheus' engine has evaluated since it started (all clients), or None unread."""
    try:
        text = prometheus_own_metrics(prometheus_url)
    except OSError:
        return None
    return prometheus.text_sample(text, "prometheus_engine_query_duration_seconds_count", slice="inner_eval")


# ---------------------------------------------------------------- the cluster


@contextmanager
def own_cluster() -> Iterator[ClusterState]:
    """A cluster of our own, with the controller-manager's client allowed CM_QPS requests a second."""
    original = components.controller_manager_argv

    def faster(*args: Any, **kwargs: Any) -> list[str]:
        return [
            *original(*args, **kwargs),
            f"--kube-api-qps={CM_QPS}",
            f"--kube-api-burst={2 * CM_QPS}",
            "--concurrent-deployment-syncs=10",
            "--concurrent-replicaset-syncs=10",
        ]

    for root in (RUN_ROOT, scratch_root()):  # run dirs of earlier benchmarks that have exited
        for d in root.glob(f"{RUN_PREFIX}*") if root.is_dir() else ():
            pid = d.name.removeprefix(RUN_PREFIX)
            if pid.isdigit() and not Path(f"/proc/{pid}").exists():
                subprocess.run(["rm", "-rf", str(d)], check=False)
    components.controller_manager_argv = faster  # type: ignore[assignment]
    try:
        t0 = time.monotonic()
        state = start_cluster(f"{RUN_PREFIX}{os.getpid()}", die_with_parent=True)
    finally:
        components.controller_manager_argv = original  # type: ignore[assignment]
    print(f"  cluster of its own up in {time.monotonic() - t0:.0f}s ({state.run_dir})", flush=True)
    with stopped_at_the_end(state):
        yield state


# ---------------------------------------------------------------- figures


def pct(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


QUEUE_WAIT_METRIC = "agent_rollout_queue_wait_seconds"
GC_METRIC = "agent_rollout_gc_pause_seconds"
PUT_OFF_METRIC = "agent_rollout_reconciles_put_off_total"


def histogram_summaries(text: str, metric: str, label: str = "urgency") -> dict[str, str]:
    """'n=…, p50 <= …, p99 <= …, max <= …' of each value of `label` of a histogram in Prometheus' text
    format, from its cumulative buckets (so each figure is the bound of the bucket it falls in)."""
    return window_summaries("", text, metric, label)


def histogram_buckets(text: str, metric: str, label: str) -> dict[str, dict[float, float]]:
    """Each value of `label` of a histogram in Prometheus' text format: bucket bound -> count."""
    found: dict[str, dict[float, float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == f"{metric}_bucket":
                found.setdefault(sample.labels.get(label, ""), {})[float(sample.labels["le"])] = sample.value
    return found


def other_writes(
    writes: dict[tuple[str, str, str], float], resources: tuple[str, ...]
) -> dict[tuple[str, str, str], float]:
    """The requests of `writes` (apiserver_request_total deltas by resource, subresource, verb) that
    write one of `resources`, but the status patches (figure 3 counts those)."""
    return {
        k: v
        for k, v in writes.items()
        if k[0] in resources and k[2] not in ("WATCH", "LIST", "GET") and k != (api.PLURAL, "status", "PATCH")
    }


def window_summaries(before: str, after: str, metric: str, label: str) -> dict[str, str]:
    """histogram_summaries of what was observed between two scrapes (bucket bounds)."""
    start, end = histogram_buckets(before, metric, label), histogram_buckets(after, metric, label)
    summaries: dict[str, str] = {}
    for value, buckets in sorted(end.items()):
        rows = sorted((le, count - start.get(value, {}).get(le, 0.0)) for le, count in buckets.items())
        total = rows[-1][1] if rows else 0.0
        if not total:
            continue

        def bound(q: float, rows: list[tuple[float, float]] = rows, total: float = total) -> str:
            le = next(le for le, count in rows if count >= q * total)
            return "+Inf" if le == float("inf") else f"{le:g} s"

        summaries[value] = f"n={total:.0f}, p50 <= {bound(0.5)}, p99 <= {bound(0.99)}, max <= {bound(1.0)}"
    return summaries


def gc_totals(text: str) -> dict[str, tuple[float, float]]:
    """The operator's garbage-collector pauses since start, by generation: (count, seconds)."""
    totals: dict[str, list[float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in (f"{GC_METRIC}_count", f"{GC_METRIC}_sum"):
                row = totals.setdefault(sample.labels["generation"], [0.0, 0.0])
                row[sample.name.endswith("_sum")] = sample.value
    return {generation: (row[0], row[1]) for generation, row in totals.items()}


def block_name(promql: str) -> str:
    """A building block's query, short: its metric, its window, and what sets it apart."""
    metric = re.search(r"([A-Za-z_:][A-Za-z0-9_:]*)[{\[]", promql)
    window = re.search(r"\[([^\]]+)\]", promql)
    name = f"{metric[1] if metric else promql[:40]}[{window[1] if window else '?'}]"
    if promql.startswith("histogram_quantile"):
        name = f"quantile of {name}"
    if "!=" in promql:
        name += " (errors)"
    return name


def spread(values: Sequence[float], unit: str = "s", digits: int = 1) -> str:
    if not values:
        return "none"
    parts = [("min", min(values)), ("p50", statistics.median(values)), ("p99", pct(values, 0.99))]
    text = " ".join(f"{name} {v:.{digits}f}{unit}" for name, v in [*parts, ("max", max(values))])
    return f"{text} (n={len(values)})"


WAKE_LINE = re.compile(
    r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) INFO agent_rollout.sentinel: ([^/ ]+)/([^:]+): gate .* waking"
    r"[^(]*(?:\((.*)\))?$"
)


def logged(log_path: Path, start: int, line: re.Pattern[str]) -> Iterator[tuple[float, re.Match[str]]]:
    """The operator's log lines from byte `start` that `line` matches (its first group: asctime), each
    with the wall time it was logged."""
    with log_path.open("rb") as f:
        f.seek(start)
        for raw in f:
            if m := line.match(raw.decode(errors="replace").rstrip()):
                # asctime is the operator's local time, as datetime.timestamp reads a naive one.
                yield datetime.strptime(m[1], "%Y-%m-%d %H:%M:%S,%f").timestamp(), m


def wake_times(log_path: Path, start: int, keys: set[tuple[str, str]]) -> dict[tuple[str, str], float]:
    """Wall time of the fast check's first wake of each rollout in `keys`, in the log from byte `start`."""
    return {key: at for key, (at, _) in wakes(log_path, start, keys).items()}


def wakes(log_path: Path, start: int, keys: set[tuple[str, str]]) -> dict[tuple[str, str], tuple[float, str]]:
    """wake_times with what the wake's line says of the answer the breach was seen in (its age)."""
    found: dict[tuple[str, str], tuple[float, str]] = {}
    for at, m in logged(log_path, start, WAKE_LINE):
        if (key := (m[2], m[3])) in keys and key not in found:
            found[key] = (at, m[4] or "")
    return found


SLOW_CYCLE_LINE = re.compile(
    r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) INFO agent_rollout.sentinel: fast check: "
    r"(a cycle of ([0-9.]+) s.*)$"
)


def slow_cycles(log_path: Path, start: int) -> list[tuple[float, float, str]]:
    """The fast check's slow cycles (sentinel.SLOW_CYCLE) in the log from byte `start`: the wall time
    each was logged (the next sweep's start), its length and where its time went."""
    return [(at, float(m[3]), m[2]) for at, m in logged(log_path, start, SLOW_CYCLE_LINE)]


def machine() -> str:
    model = ""
    with suppress(OSError), open("/proc/cpuinfo") as f:
        model = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "")
    with open("/proc/meminfo") as f:
        mem_kib = int(next(ln for ln in f if ln.startswith("MemTotal")).split()[1])
    system = f"{platform.system()} {platform.release()}"
    return f"{os.cpu_count()} CPUs ({model}), {mem_kib / 1024**2:.0f} GiB, {system}"


def loadavg() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def git_revision() -> str:
    out = subprocess.run(
        ["git", "-C", str(REPO_ROOT), "log", "-1", "--format=%h %s", "--", "operator"],
        capture_output=True,
        text=True,
        check=False,
    )
    return out.stdout.strip()[:90] or "unknown"


def parse_time(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


@dataclass
class Figures:
    lines: list[str] = field(default_factory=list)

    def add(self, text: str) -> None:
        self.lines.append(text)
        print(text, flush=True)


# ---------------------------------------------------------------- the run


@dataclass
class Bench:
    state: ClusterState
    n: int
    window_s: int
    breaches: int
    interval_s: int
    targets: list[Target]
    figures: Figures
    bulk: client.ApiClient
    log_dir: Path
    writes_window_s: int = 0  # 3b: status writes counted over this long from the steady window's start
    fleet: Fleet = field(init=False)  # started once the Deployments exist
    _steady_from: tuple[dict[tuple[str, str, str], float], float, float] = field(init=False)
    metrics_ports: dict[str, int] = field(default_factory=dict)  # by operator label

    @property
    def prometheus_url(self) -> str:
        return self.state.prometheus_url

    def operator(self, label: str) -> OperatorProcess:
        port = free_ports(1)[0]
        log = self.log_dir / f"operator-{label}.log"
        op = OperatorProcess(self.state.kubeconfig, log, ["--metrics-port", str(port)])
        self.metrics_ports[label] = port
        op.start()
        return op

    def operator_metrics(self, label: str) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_ports[label]}/metrics", timeout=30) as r:
            return cast(bytes, r.read()).decode()

    def blind_spots(self, label: str) -> str:
        """The fast check's own histogram, per block since start: from one answer's query sent to the
        next answer, the longest a breach could wait to be seen through that block."""
        try:
            text = self.operator_metrics(label)
        except OSError as e:
            return f"the fast check's blind spots: metrics not read ({e})"
        parts = [
            f"{block_name(block)} {summary}"
            for block, summary in histogram_summaries(text, BLIND_METRIC, "block").items()
        ]
        return "the fast check's blind spot per block since start (bucket bounds): " + "; ".join(parts)

    def scrape(self, label: str) -> str:
        """The operator's /metrics now ('' unread)."""
        with suppress(OSError):
            return self.operator_metrics(label)
        return ""

    def queue_waits(self, label: str) -> None:
        """The operator's own histogram of the time runs waited for a worker, by urgency, since start
        (what a pause's end waits for besides its timer)."""
        try:
            text = self.operator_metrics(label)
        except OSError as e:
            self.figures.add(f"   queue wait by urgency: metrics not read ({e})")
            return
        parts = [
            f"{urgency} {summary}"
            for urgency, summary in histogram_summaries(text, QUEUE_WAIT_METRIC).items()
        ]
        self.figures.add(
            "   queue wait for a worker since start, by urgency (the operator's histogram; bucket bounds): "
            + "; ".join(parts)
        )
        errors: dict[str, float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples if family.name == QUERY_ERRORS_METRIC else ():
                if sample.name == f"{QUERY_ERRORS_METRIC}_total":
                    errors[sample.labels["kind"]] = errors.get(sample.labels["kind"], 0.0) + sample.value
        self.figures.add(
            "   Prometheus queries with no usable answer since start (the operator's counter): "
            + (", ".join(f"{kind} {count:.0f}" for kind, count in sorted(errors.items())) or "none")
        )

    # -- set-up

    def create_backends(self) -> None:
        core, apps = client.CoreV1Api(self.bulk), client.AppsV1Api(self.bulk)
        custom = client.CustomObjectsApi(self.bulk)
        namespaces = sorted({t.namespace for t in self.targets})
        run_all(
            "namespaces",
            [lambda ns=ns: core.create_namespace(cast(Any, {"metadata": {"name": ns}})) for ns in namespaces],
        )
        deployments = [(t.namespace, name) for t in self.targets for name in (t.legacy, t.candidate)]
        run_all(
            "Deployments",
            [
                lambda ns=ns, n=n: apps.create_namespaced_deployment(ns, cast(Any, deployment_body(n)))
                for ns, n in deployments
            ],
        )
        run_all(
            "Services",
            [
                lambda ns=ns, n=n: core.create_namespaced_service(ns, cast(Any, service_body(n)))
                for ns, n in deployments
            ],
        )
        run_all(
            "HTTPRoutes",
            [
                lambda t=t: custom.create_namespaced_custom_object(
                    GATEWAY_GROUP, HTTPROUTE_VERSION, t.namespace, HTTPROUTE_PLURAL, route_body(t)
                )
                for t in self.targets
            ],
        )

    def wait_available(self) -> None:
        want = 2 * self.n
        t0 = time.monotonic()
        deadline = t0 + 300 + 0.3 * want
        last_print = t0
        while True:
            available = count_available(self.bulk)
            if available >= want:
                break
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"only {available} of {want} Deployments available after {time.monotonic() - t0:.0f}s "
                    f"(controller-manager at --kube-api-qps={CM_QPS}, kwok pods)"
                )
            if time.monotonic() - last_print > 60:
                print(f"  ... {available}/{want} Deployments available", flush=True)
                last_print = time.monotonic()
            time.sleep(10)
        print(
            f"  {want} Deployments available (1 kwok pod each) after {time.monotonic() - t0:.0f}s", flush=True
        )

    def create_rollouts(self) -> None:
        custom = client.CustomObjectsApi(self.bulk)
        run_all(
            "AgentRollouts",
            [
                lambda t=t: custom.create_namespaced_custom_object(
                    api.GROUP,
                    api.VERSION,
                    t.namespace,
                    api.PLURAL,
                    rollout_body(t, self.prometheus_url, self.interval_s),
                )
                for t in self.targets
            ],
        )

    # -- 2. start-up

    def startup(self, op: OperatorProcess, started: float, timeout_s: float) -> float | None:
        """Seconds from operator start until every rollout has a phase (prints p50/p90/all); None when
        that did not happen within timeout_s (prints how far it got). From a watch (PhaseWatch): each
        rollout's time is when the apiserver sent the event of its first phase."""
        pid = operator_pid(op)
        phases = PhaseWatch(self.state.kubeconfig, started)
        last_print = started
        # Which process the start-up waits on: the apiserver's CPU per first status is measured on
        # its own (python -m e2e.bench --only writes); here every process shares the 2 cores.
        others0, cpu0, t0 = self._cpu_by_process(), cpu_seconds(pid), time.monotonic()
        # The same, split where the first status appears: before it the operator lists, after it writes.
        first: tuple[dict[str, float], float, float] | None = None
        try:
            while phases.count() < self.n:
                if first is None and phases.count() > 0:
                    first = self._cpu_by_process(), cpu_seconds(pid), time.monotonic()
                if not op.alive():
                    raise RuntimeError(f"the operator exited during start-up:\n{op.log_tail()}")
                elapsed = time.monotonic() - started
                if elapsed > timeout_s:
                    self.figures.add(
                        f"2. start-up: only {phases.count()} of {self.n} rollouts had a status "
                        f"{elapsed:.0f}s after the operator started (gave up; operator CPU "
                        f"{cpu_seconds(pid):.0f}s, RSS {rss_mib(pid):.0f} MiB)"
                    )
                    return None
                if time.monotonic() - last_print > 60:
                    print(
                        f"  ... {phases.count()}/{self.n} rollouts with a status after {elapsed:.0f}s "
                        f"(operator CPU {cpu_seconds(pid):.0f}s, RSS {rss_mib(pid):.0f} MiB)",
                        flush=True,
                    )
                    last_print = time.monotonic()
                time.sleep(0.5)
            times = phases.times()
            self.figures.add(
                f"2. start-up, operator start -> status.phase set (a watch on the rollouts): "
                f"first {min(times):.1f}s p50 {statistics.median(times):.1f}s p90 {pct(times, 0.9):.1f}s "
                f"all {max(times):.1f}s; operator CPU {cpu_seconds(pid):.0f}s"
            )
            self.figures.add(
                "   where the 2 cores went meanwhile (utime + stime of each process): "
                + self._cpu_shares(others0, cpu0, pid, time.monotonic() - t0)
            )
            if first is not None:
                others1, cpu1, t1 = first
                after = time.monotonic() - t1
                self.figures.add(
                    f"   of which until the first status (the lists, {t1 - t0:.1f}s): "
                    + self._cpu_shares(others0, cpu0, pid, t1 - t0, others1, cpu1)
                )
                self.figures.add(
                    f"   and after it (the first statuses, {after:.1f}s): "
                    + self._cpu_shares(others1, cpu1, pid, after)
                )
            # The first status is the operator's acknowledgement; step 1 (its route write) comes next.
            while phases.begun_count() < self.n and time.monotonic() - started < timeout_s:
                if time.monotonic() - last_print > 60:
                    print(
                        f"  ... {phases.begun_count()}/{self.n} rollouts past Pending after "
                        f"{time.monotonic() - started:.0f}s",
                        flush=True,
                    )
                    last_print = time.monotonic()
                time.sleep(0.5)
            begun = phases.begun_times()
        finally:
            phases.close()
        if begun:
            self.figures.add(
                f"   step 1 entered (phase past Pending, its route written): {len(begun)}/{self.n}, "
                f"first {min(begun):.1f}s p50 {statistics.median(begun):.1f}s p90 {pct(begun, 0.9):.1f}s "
                f"all {max(begun):.1f}s; operator CPU {cpu_seconds(pid):.0f}s"
            )
        return max(times)

    # -- 4. pause-end lateness

    def wait_short_pauses(self, timeout_s: float) -> None:
        shorts = {t.name for t in self.targets if t.role == "short"}
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            rows = phase_table(self.bulk)
            waiting = [n for n in shorts if (rows.get(n) or {}).get("Step") in ("", None, "1/5", "2/5")]
            if not waiting:
                return
            time.sleep(2)
        print(f"  {len(waiting)} short pauses had not ended after {timeout_s:.0f}s", flush=True)

    def lateness(self) -> None:
        late: list[float] = []
        missing = 0
        for obj in list_rollouts(self.bulk, f"{LABEL}=short"):
            history = (obj.get("status") or {}).get("history") or []
            entered = next((d for d in history if d.get("step") == 1), None)
            left = next((d for d in history if d.get("step") == 2), None)
            if entered is None or left is None:
                missing += 1
                continue
            # stepStartedAt is the entering reconcile's time rounded UP to a whole second (tick.step_start);
            # the decision's time is rounded down. So the pause was due at decision time + 1 s + pause,
            # unless that reconcile ran at a whole second exactly (then 1 s later than said here).
            due = parse_time(entered["time"]) + 1 + SHORT_PAUSE_S
            late.append(parse_time(left["time"]) - due)
        note = f"; {missing} had not left the pause" if missing else ""
        self.figures.add(
            f"4. pause-end lateness ({SHORT_PAUSE_S}s pauses, history: next step entered - pause due; "
            f"whole seconds, +-1 s): {spread(late, digits=0)}{note}"
        )

    # -- 1, 3, 6. the steady window

    def steady_window(self, op: OperatorProcess, baseline_empty: float, baseline_objects: float) -> None:
        pid = operator_pid(op)
        log_start = op.log_path.stat().st_size
        load_before = loadavg()
        before = apiserver_requests(self.state)
        self._steady_from = (before, time.monotonic(), cpu_seconds(pid))
        others0 = self._cpu_by_process()
        scrape0 = self.scrape("main")
        queries0 = engine_queries(self.prometheus_url)
        prometheus_config = self.state.run_dir / "prometheus.yml"
        query_log = self.state.run_dir / "bench" / "prometheus-queries.jsonl"
        prometheus.log_queries(prometheus_config, self.prometheus_url, query_log)
        cpu0, t0 = cpu_seconds(pid), time.monotonic()
        samples: list[float] = []
        while time.monotonic() - t0 < self.window_s:
            samples.append(rss_mib(pid))
            time.sleep(min(10.0, max(0.0, self.window_s - (time.monotonic() - t0))))
        cpu1, t1 = cpu_seconds(pid), time.monotonic()
        others1 = self._cpu_by_process()
        scrape1 = self.scrape("main")
        queries1 = engine_queries(self.prometheus_url)
        prometheus.log_queries(prometheus_config, self.prometheus_url, None)
        after = apiserver_requests(self.state)
        samples.append(rss_mib(pid))
        log_end = op.log_path.stat().st_size
        minutes = (t1 - t0) / 60
        rss = statistics.median(samples)
        self.figures.add(
            f"1. operator RSS: empty cluster {baseline_empty:.0f} MiB; "
            f"0 rollouts with {2 * self.n} Deployments "
            f"and {self.n} routes in its stores {baseline_objects:.0f} MiB; "
            f"{self.n} rollouts steady {rss:.0f} MiB "
            f"(min {min(samples):.0f} max {max(samples):.0f} over the window) -> "
            f"{(rss - baseline_objects) * 1024 / self.n:.1f} KiB per rollout above 0 rollouts, "
            f"{(rss - baseline_empty) * 1024 / self.n:.1f} KiB per rollout above the empty cluster"
        )
        writes = delta(after, before)
        status = writes.get((api.PLURAL, "status", "PATCH"), 0.0)
        self.figures.add(
            f"3. status writes over {t1 - t0:.0f}s steady "
            f"(apiserver_request_total PATCH agentrollouts/status): {status:.0f} "
            f"= {status / minutes:.0f}/min "
            f"= {status / self.n * 5 / minutes:.2f} per rollout per 5 min "
            f"(one per interval would be {5 * 60 / self.interval_s:.0f})"
        )
        others = other_writes(writes, (api.PLURAL, "httproutes", "events"))
        reads = {
            k: v
            for k, v in writes.items()
            if k[0] in (api.PLURAL, "httproutes", "deployments") and k[2] in ("GET", "LIST")
        }
        fmt = ", ".join(
            f"{v:.0f} {verb} {res}{'/' + sub if sub else ''}"
            for (res, sub, verb), v in sorted(others.items())
        )
        fmt_reads = ", ".join(
            f"{v:.0f} {verb} {res}{'/' + sub if sub else ''}" for (res, sub, verb), v in sorted(reads.items())
        )
        self.figures.add(f"   other writes in the window: {fmt or 'none'}; reads: {fmt_reads or 'none'}")
        self.figures.add(
            f"6. operator CPU over the steady window: {cpu1 - cpu0:.1f}s in {t1 - t0:.0f}s "
            f"= {100 * (cpu1 - cpu0) / (t1 - t0):.1f}% of one core; 'connection pool is full' warnings: "
            f"{pool_warnings(op.log_path, log_start, log_end)} in the window, "
            f"{pool_warnings(op.log_path)} since start "
            f"(load average {load_before} before, {loadavg()} after)"
        )
        held = stalls(op.log_path, log_start, log_end)
        self.figures.add(
            f"   event-loop stalls over {LOOP_STALL_S:g} s in the window (the operator's log, looplag): "
            f"{len(held)}"
            + "".join(f"\n      {s:.1f} s at {where[:400]}" for s, where in held[:STALLS_SHOWN])
        )
        self.figures.add(
            "   where the 2 cores went over the window (utime + stime of each process): "
            + self._cpu_shares(others0, cpu0, pid, t1 - t0, others1, cpu1)
        )
        if queries0 is not None and queries1 is not None:
            self.figures.add(
                f"   Prometheus evaluated {(queries1 - queries0) / (t1 - t0):.1f} queries/s over the window "
                "(prometheus_engine_query_duration_seconds_count; all clients, nearly all the operator's)"
            )
        self.figures.add(
            "   where its query time went (its query log over the window, execTotalTime by query shape): "
            + "\n      ".join(query_log_summary(query_log, t1 - t0))
        )
        phases = window_summaries(scrape0, scrape1, SWEEP_METRIC, "phase")
        self.figures.add(
            "   the fast check's own wall time over the window (agent_rollout_fast_check_sweep_seconds, "
            "bucket bounds): " + ("; ".join(f"{phase} {line}" for phase, line in phases.items()) or "none")
        )
        lanes = window_summaries(scrape0, scrape1, PROMETHEUS_QUEUE_METRIC, "lane")
        self.figures.add(
            "   Prometheus queries' wait for a worker thread over the window, by lane "
            "(agent_rollout_prometheus_queue_seconds, bucket bounds): "
            + ("; ".join(f"{lane} {line}" for lane, line in lanes.items()) or "none")
        )
        lag = window_summaries(scrape0, scrape1, LOOP_LAG_METRIC, "").get("", "none")
        self.figures.add(
            "   the operator's event-loop lag over the window (a timer every 0.25 s, how late it ran: "
            f"agent_rollout_event_loop_lag_seconds, bucket bounds): {lag}"
        )
        off0, off1 = (prometheus.text_sample(text, PUT_OFF_METRIC) for text in (scrape0, scrape1))
        self.figures.add(
            "   routine reconciles put off to a later turn of the event loop over the window (their turn's "
            f"slice spent, pacer.py; {PUT_OFF_METRIC}): "
            + (f"{off1 - off0:.0f}" if off0 is not None and off1 is not None else "not read")
        )
        blind = window_summaries(scrape0, scrape1, BLIND_METRIC, "block")
        self.figures.add(
            "   the fast check's blind spot over the window, per block and window (from one answer's "
            "query to the next's: the longest a breach waited to be seen through it; bucket bounds): "
            + ("; ".join(f"{block_name(b)} {line}" for b, line in blind.items()) or "none")
        )
        gc0, gc1 = gc_totals(scrape0), gc_totals(scrape1)
        pauses = [
            f"generation {g}: {n - gc0.get(g, (0.0, 0.0))[0]:.0f} in {s - gc0.get(g, (0.0, 0.0))[1]:.2f}s"
            for g, (n, s) in sorted(gc1.items())
        ]
        self.figures.add(
            "   the operator's garbage-collector pauses over the window (agent_rollout_gc_pause_seconds): "
            + ("; ".join(pauses) or "not read")
        )
        if scrape1:
            since = histogram_summaries(scrape1, GC_METRIC, "generation")
            frozen = prometheus.text_sample(scrape1, "agent_rollout_gc_frozen_objects")
            self.figures.add(
                "   its pauses since start (bucket bounds): "
                + "; ".join(f"generation {g} {summary}" for g, summary in since.items())
                + f"; objects frozen out of its walks at the end: {frozen or 0:.0f}"
            )

    def refresh_period_writes(self, op: OperatorProcess) -> None:
        """3b. Status writes over a whole refresh period from the steady window's start: every rollout
        refreshes its measured values once in 0.75-1.25 x AGENT_ROLLOUT_ANALYSIS_REFRESH, so a shorter
        window says where it fell (on the first wave of 10,000 refreshes after a start, or between
        waves: 1.48 and 0.01 per rollout per 5 min in two runs of one code), not the steady rate."""
        if self.writes_window_s <= self.window_s:
            return
        before, t0, cpu0 = self._steady_from
        time.sleep(max(0.0, t0 + self.writes_window_s - time.monotonic()))
        after, t1, cpu1 = apiserver_requests(self.state), time.monotonic(), cpu_seconds(operator_pid(op))
        writes = delta(after, before)
        status, minutes = writes.get((api.PLURAL, "status", "PATCH"), 0.0), (t1 - t0) / 60
        others = sum(other_writes(writes, (api.PLURAL, "httproutes")).values())
        self.figures.add(
            f"3b. status writes over {t1 - t0:.0f}s from the steady window's start ("
            + (
                "the longest refresh period: every rollout's refresh falls in it"
                if t1 - t0 >= REFRESH_PERIOD_S
                else f"shorter than the longest refresh period, {REFRESH_PERIOD_S:.0f}s"
            )
            + f"): {status:.0f} "
            f"= {status / self.n * 5 / minutes:.2f} per rollout per 5 min; other rollout and route "
            f"writes {others:.0f}; the operator {100 * (cpu1 - cpu0) / (t1 - t0):.1f}% of a core over it"
        )

    def _cpu_by_process(self) -> dict[str, float]:
        """CPU seconds so far of every process the benchmark started but the operator: the control
        plane, Prometheus, the fleet exporter, and the benchmark itself (a process gone is left out,
        and so is its line)."""
        pids = {p.name: p.pid for p in self.state.processes}
        pids["fleet exporter"] = self.fleet.process.pid
        pids["benchmark"] = os.getpid()
        used = {}
        for name, pid in pids.items():
            with suppress(OSError):
                used[name] = cpu_seconds(pid)
        return used

    def _cpu_shares(
        self,
        others0: dict[str, float],
        cpu0: float,
        pid: int,
        seconds: float,
        others1: dict[str, float] | None = None,
        cpu1: float | None = None,
    ) -> str:
        """Each process's CPU since `others0` / `cpu0` (the operator's), in % of one core over `seconds`;
        read now unless given."""
        others1 = self._cpu_by_process() if others1 is None else others1
        cpu1 = cpu_seconds(pid) if cpu1 is None else cpu1
        shares = sorted(((others1[k] - others0[k], k) for k in others0.keys() & others1.keys()), reverse=True)
        return (
            ", ".join(f"{name} {100 * used / seconds:.1f}%" for used, name in shares)
            + f" of one core; operator {100 * (cpu1 - cpu0) / seconds:.1f}%"
        )

    # -- 5. breach -> weight 0

    def breach_run(self, interval_s: int, op: OperatorProcess, latency: bool = False) -> None:
        """Error-rate breaches (role "breach"), or with `latency` p95 breaches (role "slow": half the
        candidate's requests from t slower than the histogram's last finite bucket, so p95 reads 10 s
        where the gate's max is 8 s)."""
        role = "slow" if latency else "breach"
        chosen = [t for t in self.targets if t.role == role]
        if not chosen:
            return
        log_start = op.log_path.stat().st_size
        candidates = {(t.namespace, t.name): t.candidate for t in chosen}
        routes = RouteWatch(self.state.kubeconfig, role, candidates)
        # Deployment names need no regex escaping ([a-z0-9-]); a backslash would be a PromQL string escape.
        versions = "|".join(t.candidate for t in chosen)
        errors = f'{METRIC}_count{{error_type!="",version=~"{versions}"}}'
        errors_q = f"sum by (namespace, version) (increase({errors}[{GATE_WINDOW}]))"
        total_q = (
            f'sum by (namespace, version) (increase({METRIC}_count{{version=~"{versions}"}}[{GATE_WINDOW}]))'
        )
        buckets = f'rate({METRIC}_bucket{{version=~"{versions}"}}[{GATE_WINDOW}])'
        p95_q = f"histogram_quantile(0.95, sum by (le, namespace, version) ({buckets}))"

        def breached(pair: tuple[str, str], signal: dict[tuple[str, str], float], samples: float) -> bool:
            if samples < MIN_SAMPLES:
                return False
            if latency:
                return signal.get(pair, 0.0) > LATENCY_MAX_S
            return signal.get(pair, 0.0) / samples > ERROR_MAX

        visible: dict[tuple[str, str], float] = {}
        started: dict[tuple[str, str], float] = {}
        stop = threading.Event()
        poll_errors: list[str] = []

        def poll() -> None:
            by_version = {(t.namespace, t.candidate): (t.namespace, t.name) for t in chosen}
            while not stop.is_set():
                try:
                    signal, total = (
                        _series(self.prometheus_url, p95_q if latency else errors_q),
                        _series(self.prometheus_url, total_q),
                    )
                except Exception as e:
                    poll_errors.append(f"{type(e).__name__}: {e}")
                    stop.wait(0.25)
                    continue
                now = time.monotonic()
                for pair, samples in total.items():
                    key = by_version.get(pair)
                    if key is None or key not in started or key in visible or not samples:
                        continue
                    if breached(pair, signal, samples):
                        visible[key] = now
                stop.wait(0.25)

        # Prometheus' query log over the breaches: which query each slow one waited for (breach_timeline).
        prometheus_config = self.state.run_dir / "prometheus.yml"
        query_log = self.state.run_dir / "bench" / f"prometheus-queries-{role}.jsonl"
        prometheus.log_queries(prometheus_config, self.prometheus_url, query_log)
        poller = threading.Thread(target=poll, name="breach-poll", daemon=True)
        poller.start()
        fleet = self.fleet
        try:
            spacing = interval_s / len(chosen)
            t0 = time.monotonic()
            for j, t in enumerate(chosen):
                time.sleep(max(0.0, t0 + j * spacing - time.monotonic()))
                key = (t.namespace, t.name)
                started[key] = time.monotonic()
                routes.arm(key, started[key])
                if latency:
                    fleet.breach(t.namespace, t.candidate, DEFAULT_ERROR_RATIO, slow_ratio=BREACH_SLOW_RATIO)
                else:
                    fleet.breach(t.namespace, t.candidate, BREACH_ERROR_RATIO)
            deadline = time.monotonic() + GATE_WINDOW_S + 4 * interval_s + 60
            while time.monotonic() < deadline and len(routes.zero_at) < len(chosen):
                time.sleep(0.5)
        finally:
            stop.set()
            poller.join(15)
            routes.close()
            with suppress(Exception):  # the breach figures stand without the log
                prometheus.log_queries(prometheus_config, self.prometheus_url, None)
        seconds = [routes.zero_at[k] - visible[k] for k in candidates if k in routes.zero_at and k in visible]
        # Where the time went: the fast check's wake (its log line, wall clock to the millisecond) splits
        # each breach into seeing it (visible -> wake) and acting on it (wake -> weight 0).
        woken = wake_times(op.log_path, log_start, set(candidates))
        to_wall = time.time() - time.monotonic()
        to_wake = [woken[k] - (visible[k] + to_wall) for k in candidates if k in woken and k in visible]
        wake_to_zero = [
            routes.zero_at[k] + to_wall - woken[k] for k in candidates if k in woken and k in routes.zero_at
        ]
        unwoken = len(chosen) - len(woken)
        to_visible = [visible[k] - started[k] for k in candidates if k in visible]
        early = sum(1 for s in seconds if s < 0)
        never = [f"{ns}/{n}" for ns, n in candidates if (ns, n) not in routes.zero_at]
        unseen = [f"{ns}/{n}" for ns, n in candidates if (ns, n) in routes.zero_at and (ns, n) not in visible]
        what = (
            f"{int(BREACH_SLOW_RATIO * 100)}% of requests slower than 10 s from t: p95 over {GATE_WINDOW} "
            f"above {LATENCY_MAX_S} s"
            if latency
            else f"{int(BREACH_ERROR_RATIO * 100)}% errors from t"
        )
        self.figures.add(
            f"5{'l' if latency else ''}. {'latency ' if latency else ''}breach -> candidate weight 0 at "
            f"interval {interval_s}s with {self.n} live rollouts ({len(chosen)} rollouts, {what}, "
            f"spaced {spacing:.1f}s): "
            f"{spread(seconds)}"
        )
        notes = [
            f"breach became visible in Prometheus {spread(to_visible)} after the errors started "
            f"(scrape {SCRAPE_S}s)",
            f"visible -> the fast check's wake (operator log) {spread(to_wake)}",
            f"wake -> weight 0 {spread(wake_to_zero)}"
            + (f" ({unwoken} cut off with no wake: by the interval's analysis)" if unwoken else ""),
        ]
        if early:
            notes.append(
                f"{early} cut off before our 0.25 s poll saw the breach (negative, counted as measured)"
            )
        if unseen:
            notes.append(f"{len(unseen)} cut off with no breach seen by our poll: {', '.join(unseen[:5])}")
        if poll_errors:
            notes.append(f"{len(poll_errors)} Prometheus polls failed, last: {poll_errors[-1][:200]}")
        if never:
            notes.append(f"{len(never)} NOT cut off in time: {', '.join(never[:5])}")
        with suppress(Exception):  # a figure for scale only: the breach figures stand without it
            notes.append(f"Prometheus' query engine meanwhile: {engine_quantiles(self.prometheus_url)}")
        notes.append(self.blind_spots("main"))
        self.figures.add("   " + "; ".join(notes))
        # The two slowest breaches to see, traced through the query log.
        logged = logged_queries(query_log)
        seen = {k: woken[k] - (visible[k] + to_wall) for k in candidates if k in woken and k in visible}
        slow = slow_cycles(op.log_path, log_start)
        longest = max((cycle for _, cycle, _ in slow), default=0.0)
        self.figures.add(
            f"   fast-check cycles longer than {SLOW_CYCLE:g} periods in this phase (operator log): "
            f"{len(slow)}, longest {longest:.2f} s"
        )
        said = wakes(op.log_path, log_start, set(candidates))
        for key in sorted(seen, key=lambda k: -seen[k])[:2]:
            at = visible[key] + to_wall
            self.figures.add(f"   slowest seen {key[0]}/{key[1]}: " + breach_timeline(logged, at, woken[key]))
            if said.get(key, (0.0, ""))[1]:
                self.figures.add(f"      its wake: {said[key][1]}")
            for logged_at, _, text in slow:
                if at - 2 <= logged_at <= woken[key] + 1:
                    self.figures.add(f"      {logged_at - at:+.2f}s {text}")

    # -- 2b. abort from the first second, at a restart with N rollouts mid-pause

    def abort_at_restart(self, old: OperatorProcess) -> OperatorProcess:
        chosen = [t for t in self.targets if t.role == "abort"]
        candidates = {(t.namespace, t.name): t.candidate for t in chosen}
        routes = RouteWatch(self.state.kubeconfig, "abort", candidates)
        try:
            not_ten = [k for k in candidates if routes.weights.get(k) != 10]
            old.stop()
            op = self.operator("restart")
            started = time.monotonic()
            custom = client.CustomObjectsApi(self.bulk)
            patched: dict[tuple[str, str], float] = {}
            for t in chosen:
                custom.patch_namespaced_custom_object_status(
                    api.GROUP, api.VERSION, t.namespace, api.PLURAL, t.name, {"status": {"abort": True}}
                )
                key = (t.namespace, t.name)
                patched[key] = time.monotonic()
                routes.arm(key, patched[key])
            deadline = time.monotonic() + 120 + 0.05 * self.n
            while time.monotonic() < deadline and len(routes.zero_at) < len(chosen):
                time.sleep(0.1)
        finally:
            routes.close()
        from_start = [routes.zero_at[k] - started for k in candidates if k in routes.zero_at]
        from_patch = [routes.zero_at[k] - patched[k] for k in candidates if k in routes.zero_at]
        last_patch = max(patched.values(), default=started)
        missing = len(chosen) - len(from_start)
        note = f"; {missing} NOT at 0 within {120 + 0.05 * self.n:.0f}s" if missing else ""
        note += f"; {len(not_ten)} were not at weight 10 before the restart" if not_ten else ""
        pass_s = startup_pass_s(op, timeout_s=120 + 0.05 * self.n)
        listed_s, listed = paged_list_seconds(self.bulk, f"/apis/{api.GROUP}/{api.VERSION}/{api.PLURAL}")
        self.figures.add(
            f"2c. restart with {self.n} rollouts mid-pause: every rollout reconciled once "
            + (f"{pass_s:.1f}s after the operator started (its log)" if pass_s is not None else "NOT in time")
        )
        self.figures.add(
            f"2b. abort at a restart with {self.n} rollouts mid-pause "
            f"(patched {last_patch - started:.2f}s after the operator started): route candidate weight 0 "
            f"after, from operator start: {spread(from_start)}; "
            f"from the abort patch: {spread(from_patch)}{note}"
        )
        self.figures.add(
            f"   for scale: listing the {listed} rollouts page by page as the operator does took "
            f"{listed_s:.1f}s on this apiserver after that restart (the bench's own client)"
        )
        return op


def run(
    n: int,
    window_s: int,
    breaches: int,
    interval_s: int = INTERVAL_S,
    aborts: int = ABORTS,
    startup_timeout_s: float | None = None,
    startup_only: bool = False,
    keep_logs: Path | None = None,
    slow: int = SLOW_BREACHES,
    writes_window_s: int = round(REFRESH_PERIOD_S),
) -> list[str]:
    figures = Figures()
    print(
        f"== operator at scale: N={n} AgentRollouts, interval {interval_s}s, steady window {window_s}s, "
        f"{breaches} breaches, {slow} latency breaches; {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}\n"
        f"   machine: {machine()}; operator: {git_revision()}",
        flush=True,
    )
    targets = plan_targets(n, breaches, aborts, slow)
    with terminate_as_exit(), own_cluster() as state:
        log_dir = state.run_dir / "bench"
        log_dir.mkdir(parents=True, exist_ok=True)
        print(f"   Prometheus {prometheus.version(state.prometheus_url)}", flush=True)
        install_crd(state)
        bulk = bulk_client(state.kubeconfig, WORKERS + 4)
        bench = Bench(
            state, n, window_s, breaches, interval_s, targets, figures, bulk, log_dir, writes_window_s
        )
        operators: list[OperatorProcess] = []
        try:
            op = bench.operator("empty")
            operators.append(op)
            empty = settled_rss(op, min_s=15, max_s=60)
            op.stop()

            print("setting up:", flush=True)
            bench.create_backends()
            bench.fleet = start_fleet(
                fleet_pairs(targets),
                file_sd_dir=state.file_sd_dir,
                prometheus_url=state.prometheus_url,
                work_dir=log_dir,
                scrape_interval_s=SCRAPE_S,
            )
            bench.fleet.wait_scraped(timeout_s=120)
            bench.wait_available()

            op = bench.operator("no-rollouts")
            operators.append(op)
            objects_rss = settled_rss(op)
            op.stop()
            figures.add(
                f"1. operator RSS before any rollout: empty cluster {empty:.0f} MiB; {2 * n} Deployments and "
                f"{n} routes in its stores {objects_rss:.0f} MiB"
            )

            bench.create_rollouts()
            print(f"measuring (load average {loadavg()}):", flush=True)
            before = apiserver_requests(state)
            op = bench.operator("main")
            operators.append(op)
            started = time.monotonic()
            startup_s = bench.startup(op, started, startup_timeout_s or 600 + 0.1 * n)
            if startup_s is None:
                figures.add("   stopped there: the other figures need every rollout in its steady state")
                return figures.lines
            writes = delta(apiserver_requests(state), before).get((api.PLURAL, "status", "PATCH"), 0.0)
            figures.add(
                f"   status writes from operator start until every rollout entered step 1 "
                f"({time.monotonic() - started:.0f}s): {writes:.0f} "
                f"({writes / n:.2f} per rollout); "
                f"RSS at the end of start-up {rss_mib(operator_pid(op)):.0f} MiB"
            )
            if startup_only:
                operators.append(bench.abort_at_restart(op))
                return figures.lines
            # The 60 s pauses end during this; the steady window starts after them.
            bench.wait_short_pauses(timeout_s=SHORT_PAUSE_S + 4 * interval_s + 0.05 * n)
            bench.lateness()
            bench.queue_waits("main")
            bench.steady_window(op, empty, objects_rss)
            bench.refresh_period_writes(op)
            # Breaches need the gate's full window since the pause began, as our query uses it.
            time.sleep(max(0.0, started + startup_s + GATE_WINDOW_S + 5 - time.monotonic()))
            bench.breach_run(interval_s, op)
            bench.breach_run(interval_s, op, latency=True)
            operators.append(bench.abort_at_restart(op))
        finally:
            for o in operators:
                o.stop()
            with suppress(Exception):
                bench.fleet.stop()
            bulk.close()  # type: ignore[no-untyped-call]
            if keep_logs is not None:
                shutil.copytree(log_dir, keep_logs, dirs_exist_ok=True)
            print(f"operator logs in {keep_logs or log_dir}", flush=True)
    print("cleaned up: the benchmark's cluster is stopped and its etcd data deleted (all namespaces with it)")
    return figures.lines


def main(argv: Iterable[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m e2e.bench.operator_scale",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--rollouts", type=int, default=ROLLOUTS, help=f"N (default {ROLLOUTS})")
    parser.add_argument(
        "--window", type=int, default=WINDOW_S, help=f"steady window in seconds (default {WINDOW_S})"
    )
    parser.add_argument(
        "--writes-window",
        type=int,
        default=round(REFRESH_PERIOD_S),
        help="seconds from the steady window's start over which status writes are counted again (3b; "
        f"default {REFRESH_PERIOD_S:.0f}, the longest refresh period; at most --window: not counted again)",
    )
    parser.add_argument(
        "--breaches", type=int, default=BREACHES, help=f"breached rollouts (default {BREACHES})"
    )
    parser.add_argument(
        "--slow-breaches",
        type=int,
        default=SLOW_BREACHES,
        help=f"rollouts whose latency is breached after the error breaches (default {SLOW_BREACHES})",
    )
    parser.add_argument(
        "--interval",
        type=int,
        default=INTERVAL_S,
        help=f"analysis interval in seconds (default {INTERVAL_S})",
    )
    parser.add_argument(
        "--startup-timeout", type=float, default=None, help="seconds (default 600 + 0.1 s per rollout)"
    )
    parser.add_argument(
        "--keep-logs",
        type=Path,
        default=None,
        help="copy the operators' and the exporter's logs here before the cluster's folder is deleted",
    )
    parser.add_argument(
        "--startup-only",
        action="store_true",
        help="start-up, then a restart with the rollouts mid-pause (2, 2b, 2c); no steady window or breach",
    )
    args = parser.parse_args(list(argv) if argv is not None else None)
    if (
        args.rollouts < args.breaches + args.slow_breaches + ABORTS + 1
        or args.window < 10
        or args.interval < 5
    ):
        parser.error("need rollouts > breaches + slow breaches + 5, window >= 10, interval >= 5")
    logging.basicConfig(level=logging.WARNING, format="%(message)s", stream=sys.stderr)
    run(
        args.rollouts,
        args.window,
        args.breaches,
        args.interval,
        startup_timeout_s=args.startup_timeout,
        startup_only=args.startup_only,
        keep_logs=args.keep_logs,
        slow=args.slow_breaches,
        writes_window_s=args.writes_window,
    )


if __name__ == "__main__":
    main()
