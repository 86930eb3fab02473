"""`make demo [SCENARIO=good|bad|shadow]`: watch a real AgentRollout go to Promoted, or roll back by itself.

    python -m e2e.demo --scenario good|bad|shadow [--keep] [--timeout 300]

Everything is real except the agents and the data plane: the local control plane and Prometheus of
e2e/cluster (a healthy `make cluster-up` one is reused), simulated legacy and candidate agents that
Prometheus scrapes, Deployments/Services/HTTPRoute on the apiserver, a traffic driver that follows the
route's weights, and the operator as its own process (watching only the demo's namespace).

good: a healthy candidate walks 10% -> pause 15s -> 50% -> 100% and is Promoted.
bad:  the candidate answers 20% errors and 8% flagged answers; the first conclusive analysis at 10%
      fails and the operator sends all traffic back to legacy (RolledBack).
shadow: the Validate stage before any user reaches the candidate: an evaluation Job (run by the
      harness's pod runner as a process against the candidate), then a shadow step that mirrors 30% of
      legacy's live traffic to the real comparator, whose agreement rate (candidate vs legacy) is
      shown live against its bound, the noise floor (legacy vs legacy); then 10% -> 100%, Promoted.

Exit status 0 only when the scenario ended as expected. Ctrl-C cleans up too. With --keep, a cluster
the demo had to start is left running as the shared `make cluster-up` cluster.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import os
import secrets
import shutil
import signal
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

import urllib3
import yaml
from kubernetes.client.exceptions import ApiException

from agent_rollout import api, report
from agent_rollout.cli import fetch_gate_series, render
from e2e.cluster import (
    ClusterStartError,
    ClusterState,
    is_healthy,
    load_state,
    start_cluster,
    stop_cluster,
    tools,
)
from e2e.cluster.kubeapi import KubeApi, new_api_client
from e2e.cluster.kubectl import run_kubectl, wait_established
from e2e.cluster.paths import SHARED_CLUSTER_NAME
from e2e.cluster.podrunner import pod_runner
from e2e.cluster.session import remove_stale_session_runs
from e2e.rollout.scene import CANDIDATE, CRD_FILE, LEGACY, ROUTE, OperatorProcess, Scene
from e2e.rollout.test_evaluation import evaluate_step
from e2e.sim.comparator import SimComparator, start_comparator
from e2e.sim.launcher import start_agents
from e2e.sim.profile import FaultProfile
from e2e.sim.traffic import TrafficDriver, shares

ROLLOUT = "ticket-triage"
EXPECTED = {
    "good": api.Phase.PROMOTED.value,
    "bad": api.Phase.ROLLED_BACK.value,
    "shadow": api.Phase.PROMOTED.value,
}
TERMINAL = {p.value for p in (api.Phase.PROMOTED, api.Phase.ROLLED_BACK, api.Phase.FAILED)}
PRIVATE_PREFIX = "demo-"  # run dirs of clusters a demo started for itself: .cache/run/demo-<pid>
RPS = 30.0
SHARE_WINDOW = 150  # the traffic share shown is over the last this many requests (~5 s at 30 rps)
REFRESH_S = 2.0
EVENT_CHARS = 230  # Event messages carry every gate's query; the summary shows their beginning

# Agent-scale latencies (seconds) recorded in the histogram without sleeping (latency_sleep False).
_AGENT = {"latency_sleep": False, "latency_median_s": 2.0, "latency_p95_s": 4.0}
PROFILES: dict[str, dict[str, dict[str, Any]]] = {
    "good": {
        LEGACY: {**_AGENT, "error_ratio": 0.002, "flagged_ratio": 0.002, "cost_per_request_usd": 0.0005},
        CANDIDATE: {**_AGENT, "error_ratio": 0.002, "flagged_ratio": 0.003, "cost_per_request_usd": 0.004},
    },
    "bad": {
        LEGACY: {**_AGENT, "error_ratio": 0.002, "flagged_ratio": 0.002, "cost_per_request_usd": 0.0005},
        CANDIDATE: {**_AGENT, "error_ratio": 0.2, "flagged_ratio": 0.08, "cost_per_request_usd": 0.004},
    },
    # Non-deterministic agents: 2% of answers reworded, so legacy disagrees with itself ~4% of the time.
    "shadow": {
        LEGACY: {**_AGENT, "error_ratio": 0.002, "noise_ratio": 0.02, "cost_per_request_usd": 0.0005},
        CANDIDATE: {**_AGENT, "error_ratio": 0.002, "noise_ratio": 0.02, "eval_accuracy": 0.99},
    },
}
# The agents' random draws are seeded, so a run is reproducible: the healthy candidate's rare errors
# and flags cannot bunch up in the first small analysis windows (20 samples) and fail it by chance.
SEED = 1
WINDOW = "30s"
GATES = [
    {"name": "error-rate", "template": "errorRate", "max": 0.05, "window": WINDOW},
    {"name": "p95-latency", "template": "latencyQuantile", "quantile": 0.95, "max": 8, "window": WINDOW},
    {"name": "flagged", "template": "flagRate", "max": 0.05, "window": WINDOW},
    {"name": "cost", "template": "costPerRequest", "max": 0.01, "window": WINDOW},
]
COMPARATOR = "agent-rollout-comparator"  # the Service a shadow step mirrors to by default
AGREEMENT_GATE = {
    "name": "agreement",
    "template": "shadowAgreement",
    "compare": {"twoProportion": True, "margin": 0.1},
    "window": WINDOW,
}
SHADOW_STEP = {"shadow": {"percent": 30, "duration": "20s", "minRequests": 100}}
STEPS: list[dict[str, Any]] = [
    {"setWeight": 10},
    {"pause": {"duration": "15s"}},
    {"setWeight": 50},
    {"setWeight": 100},
]


class Interrupted(BaseException):
    """SIGTERM, raised like KeyboardInterrupt (past `except Exception`) so the same clean-up runs."""


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise Interrupted(f"signal {signum}")


def describe(given: dict[str, Any]) -> str:
    profile = FaultProfile().updated(given)  # the defaults of what a scenario leaves out
    text = (
        f"latency median {profile.latency_median_s}s p95 {profile.latency_p95_s}s, "
        f"errors {100 * profile.error_ratio:g}%, flagged {100 * profile.flagged_ratio:g}%, "
        f"${profile.cost_per_request_usd}/request"
    )
    if profile.noise_ratio or profile.disagreement_ratio:
        reworded, different = 100 * profile.noise_ratio, 100 * profile.disagreement_ratio
        text += f", answers reworded {reworded:g}% / different {different:g}%"
    return text


def redraw(block: str, previous_rows: int) -> int:
    """Replace the block drawn last time (previous_rows terminal rows) with this one; returns its rows.

    Only the live block is redrawn, so the set-up log and the spec above it stay on screen. A block
    taller than the terminal cannot be moved up to, so then the whole screen is cleared instead.
    """
    size = shutil.get_terminal_size()
    rows = sum(max(1, math.ceil(len(line) / max(1, size.columns))) for line in block.splitlines())
    if previous_rows >= size.lines or rows >= size.lines:
        prefix = "\033[H\033[J"
    elif previous_rows:
        prefix = f"\033[{previous_rows}F\033[J"  # to the start of the line previous_rows up, clear below
    else:
        prefix = ""
    print(f"{prefix}{block}", flush=True)
    return rows


class Clock:
    def __init__(self) -> None:
        self.t0 = time.monotonic()

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def say(self, message: str) -> None:
        print(f"[{self.elapsed():6.1f}s] {message}", flush=True)


# ---------------------------------------------------------------- cluster


def acquire_cluster(keep: bool, clock: Clock) -> tuple[ClusterState, bool]:
    """(state, stop_at_end). A healthy `cluster up` cluster is reused and never stopped by the demo."""
    shared = load_state(SHARED_CLUSTER_NAME)
    if shared is not None and is_healthy(shared):
        clock.say(
            f"reusing the running local cluster ({shared.apiserver_url}, Prometheus {shared.prometheus_url})"
        )
        return shared, False
    clock.say(
        "starting a local control plane (etcd, kube-apiserver, controller-manager, scheduler, kwok)"
        " and Prometheus ..."
    )
    if keep:
        if shared is not None:
            stop_cluster(shared)  # stale state of a dead `cluster up`
        return start_cluster(SHARED_CLUSTER_NAME, die_with_parent=False), False
    remove_stale_session_runs(PRIVATE_PREFIX)
    return start_cluster(f"{PRIVATE_PREFIX}{os.getpid()}", die_with_parent=True), True


# ---------------------------------------------------------------- the demo


@dataclass
class Demo:
    scenario: str
    keep: bool
    timeout_s: float
    clock: Clock = field(default_factory=Clock)
    cleanups: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)
    cluster: ClusterState | None = None
    namespace: str = ""
    scene: Scene | None = None
    operator: OperatorProcess | None = None
    comparator: SimComparator | None = None
    log_dir: Path | None = None
    stop_cluster_at_end: bool = False
    timings: dict[str, float] = field(default_factory=dict)  # phase of the demo -> seconds

    # --- set-up ---------------------------------------------------------------------------------

    def kubectl(self, *args: str, stdin: str | None = None, check: bool = True) -> Any:
        assert self.cluster is not None
        return run_kubectl(self.cluster.kubectl_bin, self.cluster.kubeconfig, *args, stdin=stdin, check=check)

    def setup(self) -> Scene:
        say = self.clock.say
        name = f"{PRIVATE_PREFIX}{os.getpid()}"
        # A start interrupted half-way (Ctrl-C) leaves a state file behind; stop what it lists.
        self.cleanups.callback(self._stop_half_started, name)
        t0 = time.monotonic()
        cluster, stop_at_end = acquire_cluster(self.keep, self.clock)
        self.timings["cluster"] = time.monotonic() - t0
        t0 = time.monotonic()
        self.cleanups.pop_all()
        self.cluster = cluster
        self.stop_cluster_at_end = stop_at_end
        if stop_at_end:
            self.cleanups.callback(self._stop_cluster, cluster)
        say(f"cluster ready: KUBECONFIG={cluster.kubeconfig}")

        kube = KubeApi(cluster.kubeconfig)
        self.cleanups.callback(kube.close)
        self.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD_FILE))
        wait_established(self.kubectl, f"{api.PLURAL}.{api.GROUP}")
        say(f"CRD {api.PLURAL}.{api.GROUP} installed")

        self.namespace = ns = f"demo-{self.scenario}-{secrets.token_hex(3)}"
        self.log_dir = log_dir = cluster.run_dir / "demo" / ns
        log_dir.mkdir(parents=True, exist_ok=True)
        body: Any = {"metadata": {"name": ns, "labels": {"agentrollout.io/demo": self.scenario}}}
        kube.core.create_namespace(body)
        self.cleanups.callback(self._delete_namespace, kube, ns)
        say(f"namespace {ns} created")

        profiles = PROFILES[self.scenario]
        agents = start_agents(
            ns,
            profiles,
            file_sd_dir=cluster.file_sd_dir,
            prometheus_url=cluster.prometheus_url,
            log_dir=log_dir,
            seed=SEED,
        )
        self.cleanups.callback(agents.stop)
        agents.wait_scraped(timeout_s=60)
        for version, profile in profiles.items():
            say(f"agent {version:<13} on {agents[version].url}, scraped by Prometheus: {describe(profile)}")

        kube.create_agent_backends(ns, {LEGACY: LEGACY, CANDIDATE: CANDIDATE})
        kube.create_httproute(ns, ROUTE, {LEGACY: 100, CANDIDATE: 0})
        for deployment in (LEGACY, CANDIDATE):
            kube.wait_deployment_available(ns, deployment, timeout_s=120)
        say(f"Deployments {LEGACY} and {CANDIDATE} Available (kwok node); HTTPRoute {ROUTE}: legacy 100")

        # Its own client: the route watch must not share connections with our reads.
        driver_client = new_api_client(cluster.kubeconfig)
        self.cleanups.callback(driver_client.close)
        driver = TrafficDriver(driver_client, ns, ROUTE, agents.urls(), concurrency=4)
        self.cleanups.callback(driver.close)
        duration = self.timeout_s + 60
        driver.start(max_requests=int(RPS * duration), duration_s=duration, rps=RPS)
        driver.wait_for_weights(timeout_s=30)
        say(
            f"traffic: ~{RPS:.0f} req/s split by the HTTPRoute's weights "
            f"(stops by itself after {duration:.0f}s)"
        )

        if self.scenario == "shadow":
            self._validate_stage(cluster, agents.urls(), driver, log_dir)

        self.operator = operator = OperatorProcess(
            cluster.kubeconfig, log_dir / "operator.log", args=["--namespace", ns]
        )
        operator.start()
        self.cleanups.callback(operator.stop)
        say(
            f"operator started (pid {operator.proc.pid if operator.proc else '?'}, watching {ns}), "
            f"log: {operator.log_path}"
        )

        self.scene = Scene(ns, kube, self.kubectl, cluster.prometheus_url, agents, driver)
        # Runs first at cleanup: the rollout goes before its namespace.
        self.cleanups.callback(self._delete_rollout)
        self.timings["set-up"] = time.monotonic() - t0
        return self.scene

    def _validate_stage(
        self, cluster: ClusterState, urls: dict[str, str], driver: TrafficDriver, log_dir: Path
    ) -> None:
        """The shadow scenario's extras: the comparator (scraped by Prometheus, the mirror's Service
        resolved to it) and the pod runner that runs the evaluation Job's command as a process."""
        say = self.clock.say
        ns = self.namespace
        args = ["--namespace", ns, "--version", CANDIDATE, "--mode", "json", "--field", "/answer"]
        self.comparator = comparator = start_comparator(
            urls[LEGACY], urls[CANDIDATE], log_dir=log_dir, args=[*args, "--noise-share", "0.5"]
        )
        self.cleanups.callback(comparator.close)
        comparator.register(cluster.file_sd_dir, ns)
        driver.backends[COMPARATOR] = comparator.url
        say(
            f"shadow comparator on {comparator.url} (Service {COMPARATOR}), comparing the answers' "
            "/answer field, half the copies also sent to legacy twice (noise floor); scraped by Prometheus"
        )

        def resolve(namespace: str, service: str) -> str | None:
            return urls.get(service) if namespace == ns else None

        self.cleanups.enter_context(pod_runner(cluster.kubeconfig, resolve, log_dir))
        say("pod runner started: evaluation Jobs run as local processes against the candidate")

    # --- the rollout --------------------------------------------------------------------------

    def manifest(self) -> dict[str, Any]:
        assert self.scene is not None
        if self.scenario == "shadow":
            steps = [evaluate_step(), SHADOW_STEP, {"setWeight": 10}, {"setWeight": 100}]
            return self.scene.rollout_manifest(ROLLOUT, steps, minSamples=20, gates=[*GATES, AGREEMENT_GATE])
        return self.scene.rollout_manifest(ROLLOUT, STEPS, minSamples=20, gates=GATES)

    def watch(self) -> dict[str, Any]:
        """Redraw the rollout every REFRESH_S until it ends or the timeout; returns the last object."""
        assert self.scene is not None and self.operator is not None
        s, tty = self.scene, sys.stdout.isatty()
        started = time.monotonic()
        deadline = started + self.timeout_s
        last_state, drawn_rows, phase = "", 0, None
        while True:
            if time.monotonic() > deadline:
                raise TimeoutError(f"rollout not finished after {self.timeout_s:.0f}s (phase {phase})")
            try:
                obj = s.rollout(ROLLOUT)
                route = s.route_weights()
            except (ApiException, urllib3.exceptions.HTTPError) as e:  # a busy apiserver: read again
                print(f"(reading the rollout failed, retrying: {str(e).splitlines()[0]})", flush=True)
                drawn_rows = 0
                time.sleep(REFRESH_S)
                continue
            header = f"--- {self.scenario} scenario, {time.monotonic() - started:5.1f}s since apply ---"
            # On a terminal redraw every REFRESH_S; in a log or a pipe a new block only on a change.
            state = f"{render(obj)}{route}"
            if tty:
                drawn_rows = redraw(f"{header}\n{self.frame(obj, route)}", drawn_rows)
            elif state != last_state:
                print(f"\n{header}\n{self.frame(obj, route)}", flush=True)
            last_state = state
            phase = (obj.get("status") or {}).get("phase")
            if phase in TERMINAL:
                return obj
            if not self.operator.alive():
                raise RuntimeError("the operator process exited")
            time.sleep(REFRESH_S)

    def frame(self, obj: dict[str, Any], route: dict[str, int]) -> str:
        assert self.scene is not None
        recent = self.scene.driver.records()[-SHARE_WINDOW:]
        share = shares(recent)
        errors = sum(1 for r in recent if r.status != 200)
        lines = [
            render(obj),
            f"  HTTPRoute {ROUTE}: " + "  ".join(f"{svc}={w}" for svc, w in route.items()),
            f"  traffic, last {len(recent)} requests: "
            + "  ".join(f"{svc} {100 * share.get(svc, 0):.0f}%" for svc in (LEGACY, CANDIDATE))
            + f"  (non-200: {errors})",
        ]
        if self.comparator is not None:
            lines += self._validate_lines(obj)
        return "\n".join(lines)

    def _validate_lines(self, obj: dict[str, Any]) -> list[str]:
        """The evaluation's record, the route's mirror, and the agreement against its bound."""
        assert self.scene is not None and self.comparator is not None
        status = obj.get("status") or {}
        lines = []
        for record in status.get("evaluations", [])[-1:]:
            lines.append(
                f"  evaluation Job {record['job']}: {record['phase']}"
                + (f", {record['passed']}/{record['total']} passed" if record.get("total") else "")
                + (f", failed cases {record['failedCases']}" if record.get("failedCases") else "")
            )
        mirrors = [m for m in self.scene.driver.weights.mirrors if m.service == COMPARATOR]
        shown = f"{100 * mirrors[0].share:.0f}% of legacy's requests" if mirrors else "none"
        try:
            counts = self.comparator.counts()
        except OSError:
            counts = {}
        lines.append(
            f"  mirror to {COMPARATOR}: {shown}; compared: match {counts.get('match', 0):.0f}, "
            f"mismatch {counts.get('mismatch', 0):.0f}, "
            f"candidate errors {counts.get('candidate_error', 0):.0f}"
        )
        agreement = next((r for r in status.get("lastAnalysis", []) if r["name"] == "agreement"), None)
        if agreement is not None and agreement.get("value") is not None:
            floor = agreement.get("legacyValue")
            lines.append(
                f"  shadow agreement {agreement['value']:.3f} over {agreement.get('samples')} pairs vs noise "
                f"floor {'-' if floor is None else f'{floor:.3f}'} over {agreement.get('legacySamples')} "
                f"(bound: {agreement.get('bound')}): {agreement['verdict']}"
            )
        return lines

    def summary(self, obj: dict[str, Any], took_s: float) -> None:
        assert self.scene is not None
        s, status = self.scene, obj.get("status") or {}
        print(f"\n=== {ROLLOUT}: {status.get('phase')} after {took_s:.1f}s (interval 5s) ===")
        print("decisions (status.history):")
        for d in status.get("history", []):
            w = d.get("weights", {})
            print(
                f"  {d['time']}  {d['reason']:<14} legacy={w.get('legacy')} "
                f"candidate={w.get('candidate')}  {d['message']}"
            )
            for g in d.get("evidence", []):
                mark = "  <-- broke its bound" if g.get("verdict") == api.Verdict.FAIL.value else ""
                value = "-" if g.get("value") is None else f"{g['value']:.4g}"
                print(
                    f"      {g['name']:<12} {g['verdict']:<12} value {value:>8}  "
                    f"bound {g.get('bound', ''):<8} "
                    f"samples {g.get('samples')}/{g.get('minSamples')}{mark}"
                )
        print("Kubernetes Events of the rollout:")
        for reason, message in self.events():
            short = message if len(message) <= EVENT_CHARS else message[: EVENT_CHARS - 3] + "..."
            print(f"  {reason:<14} {short}")
        weights = s.route_weights()
        print(f"HTTPRoute {ROUTE} weights now: " + "  ".join(f"{k}={v}" for k, v in weights.items()))
        counts = Counter(r.service for r in s.driver.records())
        print("requests sent during the demo: " + "  ".join(f"{k} {v}" for k, v in sorted(counts.items())))

    def write_report(self, obj: dict[str, Any]) -> Path:
        """The rollout report as the plugin writes it, next to the demo's logs. A promoted revision's
        baseline is recorded one evaluation after the promotion: give it that long to appear."""
        assert self.scene is not None and self.log_dir is not None
        scene = self.scene
        if (obj.get("status") or {}).get("phase") == api.Phase.PROMOTED.value:
            deadline = time.monotonic() + 15
            while not (obj.get("status") or {}).get("baseline") and time.monotonic() < deadline:
                time.sleep(0.5)
                obj = scene.rollout(ROLLOUT)
        now = datetime.now(UTC)
        start, end = report.time_range(obj, now)
        series = fetch_gate_series(report.gate_series(obj), scene.prometheus_url, start, end)
        path = self.log_dir / "report.html"
        path.write_text(report.render_html(report.build(obj, series, now)))
        return path

    def events(self) -> list[tuple[str, str]]:
        assert self.scene is not None
        items = self.scene.kube.core.list_namespaced_event(
            self.namespace, field_selector=f"involvedObject.name={ROLLOUT},involvedObject.kind={api.KIND}"
        ).items
        ordered = sorted(items, key=lambda e: (str(e.first_timestamp or e.event_time or ""), e.metadata.name))
        return [(e.reason or "", (e.message or "").replace("\n", " ")) for e in ordered]

    # --- clean-up -----------------------------------------------------------------------------

    def _delete_rollout(self) -> None:
        assert self.scene is not None
        custom = self.scene.kube.custom
        args = (api.GROUP, api.VERSION, self.namespace, api.PLURAL, ROLLOUT)
        with contextlib.suppress(ApiException):
            custom.delete_namespaced_custom_object(*args)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                custom.get_namespaced_custom_object(*args)
            except ApiException as e:
                if e.status == 404:
                    return
            time.sleep(0.3)
        # A finalizer someone else put on it must not hold the namespace: drop it.
        with contextlib.suppress(ApiException):
            custom.patch_namespaced_custom_object(*args, {"metadata": {"finalizers": []}})

    def _delete_namespace(self, kube: KubeApi, ns: str) -> None:
        with contextlib.suppress(ApiException):
            kube.core.delete_namespace(ns, propagation_policy="Background")

    def _stop_cluster(self, state: ClusterState) -> None:
        self.clock.say(f"stopping the local cluster this demo started (logs kept in {state.run_dir})")
        stop_cluster(state, keep_logs=True)

    def _stop_half_started(self, name: str) -> None:
        private = load_state(name)
        if private is not None:
            stop_cluster(private, keep_logs=True)
        shared = load_state(SHARED_CLUSTER_NAME) if self.keep else None
        if shared is not None and not is_healthy(shared):
            stop_cluster(shared, keep_logs=True)

    def cleanup(self) -> None:
        # No second Ctrl-C in the middle of clean-up; every step below is bounded.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        t0 = time.monotonic()
        if self.scene is not None:
            self.scene.driver.stop()
        try:
            self.cleanups.close()
        except Exception as e:  # report, never hide the demo's own result behind a clean-up error
            print(f"clean-up error: {e!r}", file=sys.stderr)
        self.timings["clean-up"] = time.monotonic() - t0
        if self.namespace:
            self.clock.say(
                f"cleaned up in {time.monotonic() - t0:.1f}s: traffic, agents and operator stopped, "
                f"namespace {self.namespace} deleted"
            )


def run(demo: Demo) -> int:
    clock = demo.clock
    scene = demo.setup()
    manifest = demo.manifest()
    print("\nThe AgentRollout (kubectl apply -f -):\n")
    print(yaml.safe_dump(manifest, sort_keys=False, default_flow_style=None, width=110))
    assert demo.log_dir is not None
    saved = demo.log_dir / "rollout.yaml"
    saved.write_text(yaml.safe_dump(manifest, sort_keys=False))
    scene.apply(manifest)
    applied = time.monotonic()
    clock.say(f"applied {ROLLOUT} (saved as {saved}); expecting {EXPECTED[demo.scenario]}")
    if sys.stdout.isatty():
        print()
    try:
        obj = demo.watch()
    except (TimeoutError, RuntimeError) as e:
        print(f"\nDEMO FAILED: {e}")
        _print_operator_tail(demo)
        return 1
    took = demo.timings["rollout"] = time.monotonic() - applied
    demo.summary(obj, took)
    print(f"report (kubectl agentrollout report {ROLLOUT} -o html): {demo.write_report(obj)}")
    phase = (obj.get("status") or {}).get("phase")
    if phase != EXPECTED[demo.scenario]:
        print(f"\nDEMO FAILED: expected {EXPECTED[demo.scenario]}, the rollout ended {phase}")
        _print_operator_tail(demo)
        return 1
    print(
        f"\nOK: {demo.scenario} scenario ended {phase} as expected, {took:.1f}s after the rollout was applied"
    )
    return 0


def _print_operator_tail(demo: Demo) -> None:
    if demo.operator is not None:
        print(f"--- operator log (tail of {demo.operator.log_path}) ---\n{demo.operator.log_tail(60)}")


def _quiet_logging() -> None:
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("         %(message)s"))
    for name in ("e2e.cluster", "e2e.sim"):
        logger = logging.getLogger(name)
        logger.setLevel(logging.INFO)
        logger.addHandler(handler)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m e2e.demo", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--scenario", choices=sorted(PROFILES), default="good")
    parser.add_argument("--keep", action="store_true", help="leave the local cluster running afterwards")
    parser.add_argument(
        "--timeout", type=float, default=300.0, help="seconds the rollout may take (default 300)"
    )
    args = parser.parse_args(argv)
    _quiet_logging()
    signal.signal(signal.SIGTERM, _on_sigterm)
    demo = Demo(args.scenario, args.keep, args.timeout)
    code = 1
    try:
        code = run(demo)
    except KeyboardInterrupt:
        print("\ninterrupted: cleaning up", flush=True)
        code = 130
    except Interrupted as e:
        print(f"\n{e}: cleaning up", flush=True)
        code = 143
    except (ClusterStartError, tools.ToolError) as e:
        print(f"\nDEMO FAILED: the local cluster did not start:\n{e}")
    except Exception as e:
        print(f"\nDEMO FAILED: {type(e).__name__}: {e}")
        _print_operator_tail(demo)
    finally:
        demo.cleanup()
    parts = ", ".join(f"{k} {v:.1f}s" for k, v in demo.timings.items())
    print(f"total {demo.clock.elapsed():.1f}s ({parts})")
    if demo.cluster is not None and not demo.stop_cluster_at_end:
        print(
            f"\nThe cluster keeps running:\n  export KUBECONFIG={demo.cluster.kubeconfig}\n"
            f"  export PROMETHEUS_URL={demo.cluster.prometheus_url}\nStop it with: make cluster-down"
        )
    return code


if __name__ == "__main__":
    sys.exit(main())
