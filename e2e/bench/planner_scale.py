"""What 10,000 AgentRollouts cost one operator process: CPU, memory and status size.

    python -m e2e.bench.planner_scale [--rollouts N]

A benchmark, not a test: it prints figures. Every rollout is distinct (its own namespace, name,
Deployments, route, gate bounds, weights, pause length) and shaped like a real one: 5 steps
(setWeight, pause with duration and minRequests, three setWeights) and 4 gates (error rate, p95
latency, flagged answers, cost per request). The real planner walks each one into the steady state
of its pause step (started, step 1 completed, first analysis of the pause recorded), which is where a
rollout spends nearly all of its life: one reconcile per interval that changes nothing.

Measured, in this process, with no network unless said:
 1. plan() per call in the steady state and at a step transition (the pause ends: setWeight next),
    CPU time of the calling thread (so other load on the machine does not count), min/median/p99/max
    over all rollouts, with cyclic GC on as in production;
 2. Reconciler.reconcile() per rollout in the steady state with in-memory Kubernetes and Prometheus
    fakes: spec and status parsing, PromQL rendering, gate evaluation, plan, status diff. It must
    make no API write (checked: the run stops if it does);
 3. memory of holding, per rollout, the body, kopf-index-like summaries (two Deployment summaries
    and one HTTPRoute spec), the parsed spec+status and the reconciler's copy of its last status
    write: RSS growth building each for all rollouts, and tracemalloc (exact for Python objects)
    over a sample;
 4. status size as compact JSON in the steady state and at max history (api.HISTORY_LIMIT decisions,
    each with 4-gate evidence), against etcd's default 1.5 MiB request limit;
 5. reconciles per second implied by a 30s interval against the measured CPU per reconcile: the
    share of one core needed and the headroom factor. Plus, to keep (5) honest, the CPU this process
    spends per real Prometheus HTTP query (PrometheusGateway against a stub server in a child
    process), which the fakes in (2) leave out: a per-rollout instant query, and a shared
    building-block query answering one series per version of every rollout on that Prometheus.

Prometheus queries: template gates read building blocks shared by all rollouts on one Prometheus
(analysis.batch), each refreshed at most once per BATCH_TTL; in (2) the rollouts' reconciles are
spread evenly over one interval on a simulated clock, as the daemons spread them, so the fakes count
how many block queries a reconcile costs. The per-rollout figure before batching is the number of
distinct per-rollout queries the same gates render (what measure_gates sent until batching).

Not measured: load on the API server and on Prometheus (query evaluation); kopf's own per-object
cost (watch stream decoding, one daemon task and its state per rollout, annotation patches, event
posting); Kubernetes client CPU (the steady state makes no API call; a transition makes one or two);
the daemon loop's sleep/wake; GIL contention between the event loop and the query threads.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from agent_rollout import api
from agent_rollout.analysis.batch import DEFAULT_TTL, BatchReader
from agent_rollout.analysis.prometheus import PrometheusGateway, measure_gates
from agent_rollout.analysis.templates import Block, Side, gate_queries, template_read
from agent_rollout.api import AgentRolloutSpec, AgentRolloutStatus, Decision, GateResult, Weights
from agent_rollout.domain import DeploymentState, Observations, iso
from agent_rollout.kube import KubeClient
from agent_rollout.planner import plan
from agent_rollout.reconcile import Reconciler, WrittenStatus

T = TypeVar("T")

ROLLOUTS = 10_000
INTERVAL_S = 30.0
NAMESPACES = 250
T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
REQUESTS = 5000.0  # every count query: enough samples for every gate and every pause's minRequests
ETCD_REQUEST_LIMIT = 1.5 * 1024 * 1024  # etcd --max-request-bytes default, the ceiling on one object
PROMETHEUS_QUERIES = 300
PROMETHEUS_SERVERS = 4  # rollout i reads prometheus-{i % 4}
BATCH_TTL = DEFAULT_TTL


# ---------------------------------------------------------------- 10,000 distinct rollouts


def prometheus_url(i: int) -> str:
    return f"http://prometheus-{i % PROMETHEUS_SERVERS}.monitoring:9090"


def rollout_body(i: int) -> dict[str, Any]:
    namespace, name = f"team-{i % NAMESPACES:03d}", f"agent-{i:05d}"
    legacy, candidate = f"{name}-rules", f"{name}-v{2 + i % 7}"
    return {
        "apiVersion": f"{api.GROUP}/{api.VERSION}",
        "kind": api.KIND,
        "metadata": {
            "namespace": namespace,
            "name": name,
            "uid": f"00000000-0000-4000-8000-{i:012d}",
            "generation": 1,
            "resourceVersion": str(100_000 + i),
        },
        "spec": {
            "legacy": {"deployment": legacy},
            "candidate": {"deployment": candidate},
            "traffic": {
                "gatewayAPI": {"httpRoute": name, "legacyBackend": legacy, "candidateBackend": candidate}
            },
            "analysis": {
                "prometheus": {"url": prometheus_url(i), "timeout": "10s"},
                "interval": "30s",
                "minSamples": 100 + 50 * (i % 5),
                "failureLimit": i % 2,
                "gates": [
                    {"name": "error-rate", "template": "errorRate", "max": round(0.01 + 0.005 * (i % 5), 4)},
                    {
                        "name": "p95-latency",
                        "template": "latencyQuantile",
                        "quantile": 0.95,
                        "max": 8 + i % 4,
                    },
                    {"name": "flagged", "template": "flagRate", "max": 0.02},
                    {"name": "cost", "template": "costPerRequest", "max": round(0.03 + 0.01 * (i % 3), 4)},
                ],
            },
            "steps": [
                {"setWeight": 1 + i % 10},
                {"pause": {"duration": f"{1 + i % 4}h", "minRequests": 1000 + 100 * (i % 9)}},
                {"setWeight": 20 + i % 11},
                {"setWeight": 50},
                {"setWeight": 100},
            ],
        },
    }


def route_spec(name: str, legacy: str, candidate: str, weights: Weights) -> dict[str, Any]:
    return {
        "parentRefs": [{"name": "public", "namespace": "gateways"}],
        "hostnames": [f"{name}.example.com"],
        "rules": [
            {
                "matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
                "backendRefs": [
                    {"name": legacy, "port": 8080, "weight": weights.legacy},
                    {"name": candidate, "port": 8080, "weight": weights.candidate},
                ],
            }
        ],
    }


class SteadyPrometheus(PrometheusGateway):
    """A healthy candidate on one Prometheus: every answer from the query's shape alone, no I/O.

    Building blocks answer one series per version of every rollout on this Prometheus, already parsed
    (their HTTP and parsing cost is measured in 2b); the shared BatchReader runs for real.
    """

    def __init__(self, versions: Sequence[tuple[str, str]], clock: Callable[[], float]) -> None:
        super().__init__("http://steady-prometheus", reader=BatchReader(ttl=BATCH_TTL, clock=clock))
        self.versions = versions
        self.scalars = 0
        self.blocks = 0
        self._answers: dict[float, dict[tuple[str, str], float]] = {}  # built once: no cost per query

    async def _run(self, promql: str, parse: Callable[[Any], T]) -> T:
        if not promql.startswith(("sum by (", "histogram_quantile(")):
            self.scalars += 1
            return REQUESTS  # type: ignore[return-value]  # the only per-rollout query: minRequests
        self.blocks += 1
        if promql.startswith("histogram_quantile("):
            value = 2.5
        elif "error_type" in promql:
            value = 0.002 * REQUESTS
        elif "flagged" in promql:
            value = 0.004 * REQUESTS
        elif "cost" in promql:
            value = 0.012 * REQUESTS
        else:
            value = REQUESTS  # request counts
        if value not in self._answers:
            self._answers[value] = dict.fromkeys(self.versions, value)
        return self._answers[value]  # type: ignore[return-value]


def steady_prometheus(count: int, clock: Callable[[], float]) -> dict[str, SteadyPrometheus]:
    """One fake per Prometheus URL, each knowing the versions of the rollouts that read it."""
    versions: dict[str, list[tuple[str, str]]] = {prometheus_url(k): [] for k in range(PROMETHEUS_SERVERS)}
    for i in range(count):
        namespace, name = f"team-{i % NAMESPACES:03d}", f"agent-{i:05d}"
        versions[prometheus_url(i)] += [(namespace, f"{name}-rules"), (namespace, f"{name}-v{2 + i % 7}")]
    return {url: SteadyPrometheus(v, clock) for url, v in versions.items()}


class CountingKube(KubeClient):
    """No API server: counts writes, which the steady state must not make."""

    def __init__(self) -> None:
        self.writes = 0

    async def patch_rollout_status(
        self, namespace: str, name: str, patch: dict[str, Any], priority: int = 2
    ) -> dict[str, Any]:
        self.writes += 1
        return {}

    async def patch_route(self, namespace: str, name: str, ops: list[dict[str, Any]]) -> None:
        self.writes += 1


@dataclass
class Rollout:
    body: dict[str, Any]  # as the watch delivers it, status included
    spec: AgentRolloutSpec
    status: AgentRolloutStatus  # body["status"] parsed
    route: dict[str, Any]
    legacy: DeploymentState
    candidate: DeploymentState
    gates: tuple[GateResult, ...]  # what the fake Prometheus makes of this rollout's queries
    now: datetime  # a moment inside the pause: the next reconcile is a steady one

    @property
    def namespace(self) -> str:
        return str(self.body["metadata"]["namespace"])

    def observations(self) -> Observations:
        return Observations(
            legacy=self.legacy,
            candidate=self.candidate,
            route_weights=read_route(self.route),
            gates=self.gates,
            candidate_requests=int(REQUESTS),
            generation=1,
        )


def read_route(spec: dict[str, Any]) -> Weights:
    legacy, candidate = spec["rules"][0]["backendRefs"]
    return Weights(legacy=legacy["weight"], candidate=candidate["weight"])


async def seed(i: int, prometheus: PrometheusGateway) -> Rollout:
    """Rollout `i` walked by the real planner into the steady state of its pause step."""
    body = rollout_body(i)
    spec = api.parse_spec(body["spec"])
    namespace, name = body["metadata"]["namespace"], body["metadata"]["name"]
    legacy = DeploymentState(spec.legacy.deployment, True, f"{i:08x}1e9ac7", 3, 3)
    candidate = DeploymentState(spec.candidate.deployment, True, f"{i:08x}ca0d1d", 3, 3)
    gates = await measure_gates(spec, namespace, prometheus)
    started = T0 - timedelta(seconds=i % 600)

    def seen(weights: Weights, requests: int | None = None) -> Observations:
        return Observations(
            legacy=legacy,
            candidate=candidate,
            route_weights=weights,
            gates=gates,
            candidate_requests=requests,
            generation=1,
        )

    p = plan(spec, AgentRolloutStatus(), seen(Weights()), started)  # Started: step 1 (setWeight)
    p = plan(spec, p.status, seen(p.status.weights), started + timedelta(seconds=30))  # into the pause
    p = plan(spec, p.status, seen(p.status.weights, int(REQUESTS)), started + timedelta(seconds=60))
    if p.status.current_step != 1 or p.status.phase is not api.Phase.PROGRESSING:
        raise SystemExit(f"seeding rollout {i} did not reach the pause step: {p.status.message}")
    body["status"] = api.dump(p.status)
    route = route_spec(name, legacy.name, candidate.name, p.status.weights)
    return Rollout(body, spec, p.status, route, legacy, candidate, gates, started + timedelta(seconds=90))


async def seed_all(count: int) -> list[Rollout]:
    prometheus = steady_prometheus(count, time.monotonic)
    return [await seed(i, prometheus[prometheus_url(i)]) for i in range(count)]


# ---------------------------------------------------------------- 1. planner


def percentiles(values_ns: Sequence[int]) -> tuple[float, float, float, float]:
    """(min, median, p99, max) in microseconds."""
    ordered = sorted(values_ns)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return ordered[0] / 1e3, statistics.median(ordered) / 1e3, p99 / 1e3, ordered[-1] / 1e3


@dataclass
class PlannerFigures:
    steady_ns: list[int]
    transition_ns: list[int]
    steady_unchanged: int  # steady plans whose status equals the input and that asked for nothing
    transitions_done: int  # transition plans that entered step 3 and asked for its weights


def measure_planner(rollouts: Sequence[Rollout]) -> PlannerFigures:
    steady, transition, unchanged, done = [], [], 0, 0
    for r in rollouts:
        status, obs = r.status, r.observations()
        pause = r.spec.steps[1].pause
        assert pause is not None and pause.duration is not None and status.step_started_at is not None
        pause_end = datetime.fromisoformat(status.step_started_at) + timedelta(
            seconds=api.duration_seconds(pause.duration) + 1
        )
        t = time.thread_time_ns()
        result = plan(r.spec, status, obs, r.now)
        steady.append(time.thread_time_ns() - t)
        unchanged += result.status == status and not result.actions
        t = time.thread_time_ns()
        result = plan(r.spec, status, obs, pause_end)
        transition.append(time.thread_time_ns() - t)
        done += result.status.current_step == 2 and len(result.actions) == 2
    return PlannerFigures(steady, transition, unchanged, done)


# ---------------------------------------------------------------- 2. whole reconcile, steady state


@dataclass
class ReconcileFigures:
    cpu_ns: list[int]  # per reconcile, CPU time of the event loop's thread (the fakes never leave it)
    process_cpu_s: float  # whole process over all reconciles
    writes: int
    scalars_per_reconcile: float  # per-rollout queries (minRequests since the step began)
    blocks_per_reconcile: float  # shared building-block queries, spread over the rollouts
    series_per_block: float  # series one building-block answer holds (versions on one Prometheus)


def measure_reconcile(rollouts: Sequence[Rollout]) -> ReconcileFigures:
    # The daemons spread their reconciles over the interval; the readers' TTL runs on that clock.
    elapsed = [0.0]
    kube, prometheus = CountingKube(), steady_prometheus(len(rollouts), lambda: elapsed[0])
    moment = [T0]
    reconciler = Reconciler(
        kube=kube,
        gateway_for=lambda url, timeout: prometheus[url],
        events=lambda body, type, reason, message: None,
        clock=lambda: moment[0],
    )
    deployments = {(r.namespace, d.name): d for r in rollouts for d in (r.legacy, r.candidate)}
    routes = {(r.namespace, r.body["metadata"]["name"]): r.route for r in rollouts}

    async def run() -> tuple[list[int], float]:
        per_call: list[int] = []
        process = time.process_time()
        for k, r in enumerate(rollouts):
            moment[0] = r.now
            elapsed[0] = k * INTERVAL_S / len(rollouts)
            t = time.thread_time_ns()
            await reconciler.reconcile(
                r.body,
                deployments=lambda ns, n: deployments.get((ns, n)),
                routes=lambda resource, ns, n: routes.get((ns, n)),
                written=WrittenStatus(),
            )
            per_call.append(time.thread_time_ns() - t)
        return per_call, time.process_time() - process

    per_call, process = asyncio.run(run())
    fakes = prometheus.values()
    return ReconcileFigures(
        per_call,
        process,
        kube.writes,
        sum(p.scalars for p in fakes) / len(rollouts),
        sum(p.blocks for p in fakes) / len(rollouts),
        sum(len(p.versions) for p in fakes) / len(fakes),
    )


# ---------------------------------------------------------------- 2b. Prometheus client CPU

_STUB_SERVER = """
import json, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
def answer(series):
    return json.dumps({"status": "success", "data": {"resultType": "vector", "result": series}}).encode()
scalar = answer([{"metric": {}, "value": [1772366400.0, "0.002"]}])
# A building block: one series per version of every rollout on this Prometheus, as `sum by` returns.
block = answer([{"metric": {"namespace": f"team-{k % 250:03d}", "version": f"agent-{k:05d}-v3"},
                 "value": [1772366400.0, "5000"]} for k in range(int(sys.argv[1]))])
class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # else headers and body in two writes meet delayed ACKs: 40 ms a query
    def do_GET(self):
        payload = block if "sum%20by" in self.path or "sum+by" in self.path else scalar
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)
    def log_message(self, *args):
        pass
server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
print(server.server_address[1], flush=True)
server.serve_forever()
"""


@dataclass
class ClientFigures:
    scalar_cpu_s: float  # process CPU per per-rollout instant query
    scalar_wall_s: float
    block_cpu_s: float  # process CPU per building-block query, parsing its series included
    block_wall_s: float
    block_series: int


def measure_prometheus_client(
    query: str, block: Block, series: int, count: int = PROMETHEUS_QUERIES
) -> ClientFigures | None:
    """CPU seconds and wall seconds this process spends per real query; the server runs elsewhere."""
    server = subprocess.Popen(
        [sys.executable, "-c", _STUB_SERVER, str(series)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert server.stdout is not None
        port = int(server.stdout.readline())
        # ttl 0: every block read is a real query (and its parse, in the query thread pool)
        gateway = PrometheusGateway(f"http://127.0.0.1:{port}", timeout=5.0, reader=BatchReader(ttl=0))

        async def per_query(read: Callable[[], Awaitable[Any]], n: int) -> tuple[float, float]:
            for _ in range(5):  # connection pool, lazy imports
                await read()
            cpu, wall = time.process_time(), time.perf_counter()
            for _ in range(n):
                await read()
            return (time.process_time() - cpu) / n, (time.perf_counter() - wall) / n

        scalar = asyncio.run(per_query(lambda: gateway.scalar(query), count))
        answered = len(asyncio.run(gateway.block(block)))
        if answered != series:
            raise RuntimeError(f"the stub answered {answered} series, not {series}")
        blocks = asyncio.run(per_query(lambda: gateway.block(block), max(10, count // 10)))
        return ClientFigures(*scalar, *blocks, series)
    except Exception as error:  # a benchmark row, not a crash: report it as not measured
        print(f"  (Prometheus client CPU not measured: {error})", file=sys.stderr)
        return None
    finally:
        server.terminate()
        server.wait(timeout=10)


def per_rollout_queries(r: Rollout) -> int:
    """Instant queries one reconcile sent before batching: every distinct rendered gate query (value
    and samples, legacy too with `compare`) and the candidate's requests since the step began."""
    assert r.spec.analysis is not None
    queries: set[str] = set()
    for gate in r.spec.analysis.gates:
        sides: tuple[Side, ...] = ("candidate", "legacy") if gate.compare else ("candidate",)
        for side in sides:
            rendered = gate_queries(gate, r.spec, r.namespace, side)
            queries.update(q for q in (rendered.value, rendered.samples) if q)
    return len(queries) + 1


# ---------------------------------------------------------------- 3. memory


def rss_bytes() -> int | None:
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return None


MEMORY_PARTS = (
    "bodies (what kopf caches per object)",
    "index summaries (2 Deployments, 1 route)",
    "parsed spec + status models",
    "last written status (per daemon)",
)
HELD = MEMORY_PARTS[:2]  # held all the time; the models live for one reconcile, the copy for one write
TRACED_SAMPLE = 1_000  # tracemalloc is slow; memory is linear in rollouts (RSS covers all of them)


@dataclass
class MemoryFigures:
    rss: dict[str, int | None]  # component -> RSS growth in bytes, building it for every rollout
    traced: dict[str, float]  # component -> bytes per rollout (tracemalloc over a sample)


def _build(wire: Sequence[tuple[str, str]], part: str, held: dict[str, Any]) -> None:
    """One component for every rollout, from the JSON the API server would send."""
    if part == MEMORY_PARTS[0]:
        held["bodies"] = [json.loads(body) for body, _ in wire]
    elif part == MEMORY_PARTS[1]:
        deployments: dict[tuple[str, str], list[DeploymentState]] = {}
        routes: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for body, route in wire:
            parsed = json.loads(body)
            meta, spec = parsed["metadata"], parsed["spec"]
            for ref in (spec["legacy"], spec["candidate"]):
                key = (meta["namespace"], ref["deployment"])
                deployments[key] = [DeploymentState(ref["deployment"], True, meta["uid"][-16:], 3, 3)]
            routes[(meta["namespace"], meta["name"])] = [json.loads(route)]
        held["index"] = (deployments, routes)
    elif part == MEMORY_PARTS[2]:
        held["models"] = [(api.parse_spec(b["spec"]), api.parse_status(b["status"])) for b in held["bodies"]]
    else:
        held["written"] = [
            WrittenStatus(json.loads(json.dumps(b["status"])), "2", {"1"}) for b in held["bodies"]
        ]


def measure_memory(rollouts: Sequence[Rollout]) -> MemoryFigures:
    wire = [(json.dumps(r.body), json.dumps(r.route)) for r in rollouts]
    # JSON dicts and these models hold no reference cycles: reference counting frees every temporary,
    # so no gc.collect() (seconds each, on a heap this large) is needed between the parts.
    held: dict[str, Any] = {}
    rss: dict[str, int | None] = {}
    for part in MEMORY_PARTS:
        before = rss_bytes()
        _build(wire, part, held)
        after = rss_bytes()
        rss[part] = after - before if before is not None and after is not None else None
    held.clear()
    sample = wire[:TRACED_SAMPLE]
    traced: dict[str, float] = {}
    tracemalloc.start()
    for part in MEMORY_PARTS:
        before_traced = tracemalloc.get_traced_memory()[0]
        _build(sample, part, held)
        traced[part] = (tracemalloc.get_traced_memory()[0] - before_traced) / len(sample)
    tracemalloc.stop()
    held.clear()
    return MemoryFigures(rss, traced)


# ---------------------------------------------------------------- 4. status size


@dataclass
class SizeFigures:
    steady: list[int]
    max_history_status: int
    max_history_object: int


def compact(value: Any) -> int:
    return len(json.dumps(value, separators=(",", ":")).encode())


def measure_sizes(rollouts: Sequence[Rollout]) -> SizeFigures:
    steady = [compact(r.body["status"]) for r in rollouts]
    r = max(rollouts, key=lambda x: compact(x.body["status"]))
    status = api.parse_status(r.body["status"])
    completed = next(d for d in status.history if d.reason == "StepCompleted")
    status.history = [
        Decision(
            time=iso(T0 + timedelta(minutes=k)),
            reason=completed.reason,
            message=completed.message,
            step=k % len(r.spec.steps),
            weights=status.weights,
            evidence=list(r.gates),
        )
        for k in range(api.HISTORY_LIMIT)
    ]
    full_status = api.dump(status)
    return SizeFigures(steady, compact(full_status), compact({**r.body, "status": full_status}))


# ---------------------------------------------------------------- report


def _us(values: tuple[float, float, float, float]) -> str:
    return "  ".join(f"{v:9.1f}" for v in values)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rollouts", type=int, default=ROLLOUTS)
    count = parser.parse_args(argv).rollouts
    started = time.perf_counter()

    phases: dict[str, float] = {}

    def timed(name: str, gc_on: bool, run: Callable[[], T]) -> T:
        # Building the fixture and measuring memory are not timed figures: cyclic GC off makes them
        # several times faster on a heap this large. The CPU figures are taken with GC on, as in production.
        if gc_on:
            gc.collect()  # start from a clean heap, not from the garbage of building the fixture
        (gc.enable if gc_on else gc.disable)()
        t = time.perf_counter()
        try:
            return run()
        finally:
            phases[name] = time.perf_counter() - t
            gc.enable()

    rollouts = timed("seed", False, lambda: asyncio.run(seed_all(count)))
    memory = timed("memory", False, lambda: measure_memory(rollouts))
    planner = timed("planner", True, lambda: measure_planner(rollouts))
    reconcile = timed("reconcile", True, lambda: measure_reconcile(rollouts))
    if reconcile.writes:
        raise SystemExit(f"the steady state made {reconcile.writes} API writes: the benchmark is invalid")
    first = rollouts[0]
    assert first.spec.analysis is not None
    gate = first.spec.analysis.gates[0]
    query = gate_queries(gate, first.spec, first.namespace, "candidate").value
    assert gate.template is not None
    block = template_read(gate.template, first.spec.analysis.metrics, window=gate.window).samples
    series = round(reconcile.series_per_block)
    client = timed("prometheus", True, lambda: measure_prometheus_client(query, block, series))
    before_queries = per_rollout_queries(first)
    sizes = timed("sizes", False, lambda: measure_sizes(rollouts))

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"agent-rollout scale benchmark: {count:,} rollouts (5 steps, 4 gates each); Python "
        f"{platform.python_version()}, {os.cpu_count()} CPUs, load average {load:.1f} at the end"
    )
    print(f"{'CPU time per call, microseconds':44}{'min':>9}  {'median':>9}  {'p99':>9}  {'max':>9}")
    print(f"{'1 plan(), steady state':44}{_us(percentiles(planner.steady_ns))}")
    print(f"{'1 plan(), step transition':44}{_us(percentiles(planner.transition_ns))}")
    print(f"{'2 reconcile(), steady state, fakes':44}{_us(percentiles(reconcile.cpu_ns))}")
    per_reconcile_cpu = reconcile.process_cpu_s / count
    print(
        f"  checks: {planner.steady_unchanged:,}/{count:,} steady plans changed nothing, "
        f"{planner.transitions_done:,}/{count:,} transitions entered the next step;\n"
        f"  steady reconciles: {reconcile.writes} API writes, Prometheus queries each: "
        f"{reconcile.scalars_per_reconcile:g} per-rollout + {reconcile.blocks_per_reconcile:.3f} shared "
        f"building blocks\n  (before batching: {before_queries} per-rollout), "
        f"process CPU {per_reconcile_cpu * 1e6:.0f} us each (mean, GC included)"
    )
    if client is not None:
        print(
            f"{'2b real Prometheus queries (client side)':44}{client.scalar_cpu_s * 1e6:9.0f} us process CPU "
            f"per per-rollout query (wall {client.scalar_wall_s * 1e6:.0f} us),\n{'':44}"
            f"{client.block_cpu_s * 1e6:9.0f} us per building block of {client.block_series:,} series "
            f"(wall {client.block_wall_s * 1e6:.0f} us); stub server in a child process"
        )

    print(f"3 memory{'':36}{'RSS, all':>11}  {'per rollout':>11}  {'tracemalloc':>11}")
    for part in MEMORY_PARTS:
        grown = memory.rss[part]
        rss_text = (
            f"{grown / 2**20:7.1f} MiB  {grown / count / 1024:7.1f} KiB" if grown is not None else "n/a"
        )
        print(f"    {part:42}{rss_text:>24}  {memory.traced[part] / 1024:7.1f} KiB")
    held_traced = sum(memory.traced[part] for part in HELD)
    print(
        f"    held all the time (first two): {held_traced / 1024:.1f} KiB per rollout = "
        f"{held_traced * count / 2**20:.0f} MiB for {count:,}; models are built per reconcile and\n"
        f"    dropped, the status copy is kept only until the watch delivers our write "
        f"(tracemalloc over {min(count, TRACED_SAMPLE):,} rollouts)"
    )

    steady = sorted(sizes.steady)
    print(
        f"4 status JSON, steady state: min {steady[0]:,} B, median {int(statistics.median(steady)):,} B, "
        f"max {steady[-1]:,} B"
    )
    print(
        f"  at max history ({api.HISTORY_LIMIT} decisions x 4-gate evidence): status "
        f"{sizes.max_history_status:,} B, whole object {sizes.max_history_object:,} B "
        f"= {100 * sizes.max_history_object / ETCD_REQUEST_LIMIT:.1f}% of etcd's 1.5 MiB"
    )

    needed = count / INTERVAL_S
    print(f"5 at interval {INTERVAL_S:g}s: {needed:,.0f} reconciles/s needed")
    rows = [("planner + shell with fakes", per_reconcile_cpu)]
    if client is not None:
        batched = (
            reconcile.scalars_per_reconcile * client.scalar_cpu_s
            + reconcile.blocks_per_reconcile * client.block_cpu_s
        )
        rows += [
            (f"before: + {before_queries} per-rollout queries", before_queries * client.scalar_cpu_s),
            (
                f"after: + {reconcile.scalars_per_reconcile:g} per-rollout + "
                f"{reconcile.blocks_per_reconcile:.3f} blocks",
                batched,
            ),
        ]
        rows = [rows[0], *((label, per_reconcile_cpu + cpu) for label, cpu in rows[1:])]
    for label, cpu in rows:
        share = needed * cpu
        print(
            f"    {label:40} {cpu * 1e6:7.0f} us/reconcile -> {100 * share:5.1f}% of one core, "
            f"headroom x{1 / share:.1f}"
        )
    blocks_per_s = needed * reconcile.blocks_per_reconcile
    print(
        f"  queries/s on Prometheus: before {needed * before_queries:,.0f}; after "
        f"{needed * reconcile.scalars_per_reconcile:,.0f} per-rollout (pause minRequests) + "
        f"{blocks_per_s:.0f} blocks\n  ({PROMETHEUS_SERVERS} servers, TTL {BATCH_TTL:g}s) returning "
        f"{blocks_per_s * reconcile.series_per_block:,.0f} series/s"
    )
    print(
        "Not measured: API server and Prometheus server load; kopf's per-object overhead (watch decoding,\n"
        "one daemon task per rollout, its annotations and event posting); Kubernetes client CPU (the steady\n"
        "state makes no API call); the daemon's sleep/wake; GIL contention with the query thread pool."
    )
    spent = ", ".join(f"{name} {seconds:.1f}s" for name, seconds in phases.items())
    print(f"(ran in {time.perf_counter() - started:.1f}s: {spent})")


if __name__ == "__main__":
    main()
