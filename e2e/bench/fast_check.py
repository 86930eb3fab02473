"""The operator's fast check (sentinel.py) at N rollouts: `python -m e2e.bench.fast_check [--rollouts N]`.

A component benchmark, not a test: it prints figures and asserts nothing. Real processes, no
apiserver: a Prometheus of its own (started by the benchmark with the e2e cluster's config, stopped
at the end) and one fleet exporter (e2e/sim/fleet.py) serving every (namespace, version) of N
rollouts shaped like operator_scale's (100 to a namespace; interval 30s; gates errorRate max 0.05 and
latencyQuantile p95 max 8s, window 1m, minSamples 20), scraped every 5 s. The benchmark waits until
Prometheus holds a full 1m window, so queries cost what they cost in the steady state.

In the benchmark's process, as in the operator's: a Sentinel whose N Watched entries come from
Sentinel.update with each rollout's parsed spec and a status in a pause step that began about an
hour ago (full windows; 1,000 distinct stepStartedAt values, as rollouts created over minutes
have), reading through one PrometheusGateway and BatchReader configured like handlers._gateway_for's.

Printed, min / median / max over the sweeps (each followed by the pause run() would take, so the
BatchReader's TTL works as in the operator):
  wall          sentinel.sweep() from start to end;
  loop CPU      CPU time of the event loop's thread during the sweep (time.thread_time): what the
                sweep takes from the reconciles; the rest is waiting on Prometheus (worker threads);
  busy (sweep)  the same as the sentinel counts it for next_pause (Sentinel.busy: only between its
                awaits; here nothing else runs on the loop, so it is close to loop CPU);
  prometheus    per block: the HTTP call as the worker thread sees it (requests' get, body included);
  decode        per sweep: JSON decoding of the answers (response.json), in the worker threads;
  parse         per sweep: parse_vector, in the worker threads;
  measure       per sweep: planning (windows and template reads per rollout) + measuring every
                watched rollout against the vectors, on the event loop;
  blocks        queries sent per sweep;
  period        sweep start to the next sweep start (next_pause), what a breach may wait for.
Then breach -> wake: K candidates (one at a time, BREACH_SPACING_S apart) answer 50% errors
(fleet.breach); a thread polls Prometheus every 0.25 s until that candidate's error rate over 1m is
above 0.05 with >= 20 samples ("visible", as operator_scale's breach_run), while Sentinel.run()
runs as in the operator; the figure is the Sentinel's first `wake` of that rollout minus visible
(negative: the sentinel saw it before our poll did).
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import json
import os
import shutil
import statistics
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from agent_rollout import api
from agent_rollout.analysis import prometheus as gateway_module
from agent_rollout.analysis.batch import BatchReader
from agent_rollout.analysis.prometheus import PrometheusGateway, prometheus_session
from agent_rollout.handlers import BATCH_TTL, EVALUATION_MAX_AGE
from agent_rollout.sentinel import PERIOD, Sentinel, next_pause
from e2e.bench.operator_scale import (
    BREACH_ERROR_RATIO,
    ERROR_MAX,
    GATE_WINDOW,
    GATE_WINDOW_S,
    INTERVAL_S,
    MIN_SAMPLES,
    SCRAPE_S,
    Target,
    fleet_pairs,
    git_revision,
    machine,
    plan_targets,
    rollout_body,
    spread,
)
from e2e.cluster import procs, prometheus
from e2e.cluster.paths import RUN_ROOT, scratch_root
from e2e.cluster.ports import free_ports
from e2e.sim.fleet import METRIC, Fleet, start_fleet

ROLLOUTS = 1000
SWEEPS = 20
BREACHES = 10
BREACH_SPACING_S = 3.0
RUN_PREFIX = "bench-fast-"


# ---------------------------------------------------------------- processes


@contextmanager
def own_prometheus() -> Iterator[tuple[str, Path, Path]]:
    """(url, file_sd dir, run dir) of a Prometheus of our own, with the e2e cluster's config."""
    name = f"{RUN_PREFIX}{os.getpid()}"
    run_dir, scratch = RUN_ROOT / name, scratch_root() / name
    for d in (run_dir, scratch):
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
    file_sd = run_dir / "file_sd"
    file_sd.mkdir()
    config = run_dir / "prometheus.yml"
    prometheus.write_config(config, file_sd)
    (port,) = free_ports(1)
    argv = prometheus.prometheus_argv(config, scratch / "prometheus", port)
    info = procs.spawn("prometheus", argv, run_dir / "prometheus.log", die_with_parent=True)
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        try:
            with urllib.request.urlopen(f"{url}/-/ready", timeout=2) as resp:
                return bool(resp.status == 200)
        except OSError:
            return False

    try:
        procs.wait_until(ready, timeout_s=60, what="prometheus /-/ready", alive=[info])
        yield url, file_sd, run_dir
    finally:
        procs.stop_all([info], grace_s=5.0)
        shutil.rmtree(scratch, ignore_errors=True)
        shutil.rmtree(run_dir, ignore_errors=True)


@contextmanager
def fleet_on_prometheus(targets: Sequence[Target]) -> Iterator[tuple[str, Fleet]]:
    """(Prometheus URL, fleet exporter) of a Prometheus of our own scraping the fleet of `targets`,
    once it holds a full gate window of every series (so queries cost what they cost steady)."""
    with own_prometheus() as (url, file_sd, run_dir):
        fleet = start_fleet(
            fleet_pairs(targets),
            file_sd_dir=file_sd,
            prometheus_url=url,
            work_dir=run_dir,
            scrape_interval_s=SCRAPE_S,
        )
        try:
            fleet.wait_scraped(timeout_s=180)
            time.sleep(GATE_WINDOW_S + SCRAPE_S)
            yield url, fleet
        finally:
            fleet.stop()


# ---------------------------------------------------------------- instruments


@dataclass
class SweepRecord:
    wall: float = 0.0
    loop_cpu: float = 0.0
    busy: float = 0.0
    measure: float = 0.0
    period: float = 0.0
    http: dict[str, float] = field(default_factory=dict)  # block label -> seconds
    decode: float = 0.0
    parse: float = 0.0
    queries: int = 0


def block_label(promql: str) -> str:
    if promql.startswith("histogram_quantile"):
        return "latency buckets"
    if "error_type" in promql:
        return "errors"
    return "requests"


class Probe:
    """Times the worker threads' HTTP calls, JSON decoding and parse_vector, and the loop's measuring,
    by wrapping them in place (the session of the URL, the module's parse_vector, the sentinel's
    methods): the code measured is the operator's own."""

    def __init__(self, url: str, sentinel: Sentinel) -> None:
        self.current = SweepRecord()
        self.lock = threading.Lock()
        session = prometheus_session(url)
        get = session.get

        def timed_get(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            response = get(*args, **kwargs)
            took = time.perf_counter() - started
            promql = (kwargs.get("params") or {}).get("query", "")
            with self.lock:
                label = block_label(promql)
                self.current.http[label] = self.current.http.get(label, 0.0) + took
                self.current.queries += 1
            decode = response.json

            def timed_json(**kw: Any) -> Any:
                t0 = time.perf_counter()
                try:
                    return decode(**kw)
                finally:
                    with self.lock:
                        self.current.decode += time.perf_counter() - t0

            response.json = timed_json  # type: ignore[method-assign]
            return response

        session.get = timed_get  # type: ignore[method-assign]
        parse_vector = gateway_module.parse_vector

        def timed_parse(result: Any, labels: tuple[str, str]) -> Any:
            t0 = time.perf_counter()
            try:
                return parse_vector(result, labels)
            finally:
                with self.lock:
                    self.current.parse += time.perf_counter() - t0

        gateway_module.parse_vector = timed_parse
        # Planning and measuring: _reads and _breached before the sentinel measured gates as their
        # blocks arrived, _reads and _measure (a coroutine, yielding between slices) since.
        for name in ("_reads", "_breached", "_measure"):
            if hasattr(sentinel, name):
                self._time_on_loop(sentinel, name)

    def _time_on_loop(self, sentinel: Sentinel, name: str) -> None:
        method: Callable[..., Any] = getattr(sentinel, name)

        def timed(*args: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return method(*args)
            finally:
                self.current.measure += time.perf_counter() - t0

        async def timed_async(*args: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return await method(*args)
            finally:
                self.current.measure += time.perf_counter() - t0

        setattr(sentinel, name, timed_async if inspect.iscoroutinefunction(method) else timed)


# ---------------------------------------------------------------- the run


STEP_STARTS = 1000  # distinct stepStartedAt values, as rollouts created over many minutes have


def paused_status(now: datetime, i: int) -> api.AgentRolloutStatus:
    """In the first pause at weight 10, since about an hour ago (every window is full); rollout i's
    step began (i mod STEP_STARTS) seconds after the first one's, in whole seconds like the operator's."""
    started = (now - timedelta(hours=1) + timedelta(seconds=i % STEP_STARTS)).replace(microsecond=0)
    return api.AgentRolloutStatus.model_validate(
        {
            "phase": "Paused",
            "currentStep": 1,
            "stepStartedAt": started.isoformat(),
            "weights": {"legacy": 90, "candidate": 10},
        }
    )


def watch_all(sentinel: Sentinel, targets: Sequence[Target], url: str, gateway: PrometheusGateway) -> float:
    t0 = time.monotonic()
    now = datetime.now(UTC)
    for i, t in enumerate(targets):
        spec = api.AgentRolloutSpec.model_validate(rollout_body(t, url, INTERVAL_S)["spec"])
        sentinel.update((t.namespace, t.name), spec, paused_status(now, i), gateway)
    return time.monotonic() - t0


def figures(values: Sequence[float], unit: str = "s", digits: int = 3) -> str:
    if not values:
        return "none"
    return (
        f"min {min(values):.{digits}f}{unit} median {statistics.median(values):.{digits}f}{unit} "
        f"max {max(values):.{digits}f}{unit}"
    )


async def sweeps(sentinel: Sentinel, probe: Probe, count: int) -> list[SweepRecord]:
    """`count` sweeps, each followed by the pause Sentinel.run() would take."""
    records: list[SweepRecord] = []
    for _ in range(count + 1):  # the first one warms the connection pool and caches: not counted
        probe.current = record = SweepRecord()
        cpu0, started = time.thread_time(), time.monotonic()
        await sentinel.sweep()
        record.wall = time.monotonic() - started
        record.loop_cpu = time.thread_time() - cpu0
        record.busy = sentinel.busy
        pause = next_pause(sentinel.period, record.wall, sentinel.busy)
        record.period = record.wall + pause
        records.append(record)
        await asyncio.sleep(pause)
    return records[1:]


def report_sweeps(records: Sequence[SweepRecord], fetches: int) -> None:
    print(f"  sweeps: {len(records)}")
    print(f"  wall          {figures([r.wall for r in records])}")
    print(f"  loop CPU      {figures([r.loop_cpu for r in records])}")
    print(f"  busy (sweep)  {figures([r.busy for r in records])}")
    for label in sorted({label for r in records for label in r.http}):
        print(f"  prometheus    {label + ':':17s}{figures([r.http.get(label, 0.0) for r in records])}")
    print(f"  decode JSON   {figures([r.decode for r in records])}")
    print(f"  parse_vector  {figures([r.parse for r in records])}")
    print(f"  measure       {figures([r.measure for r in records])}")
    print(
        f"  blocks/sweep  {figures([float(r.queries) for r in records], unit='', digits=0)} "
        f"({fetches} queries in all)"
    )
    print(f"  period        {figures([r.period for r in records])}", flush=True)


def _series(url: str, promql: str) -> dict[tuple[str, str], float]:
    query = f"{url}/api/v1/query?{urllib.parse.urlencode({'query': promql})}"
    with urllib.request.urlopen(query, timeout=10) as resp:
        body = json.load(resp)
    return {
        (s["metric"].get("namespace", ""), s["metric"].get("version", "")): float(s["value"][1])
        for s in body["data"]["result"]
    }


async def breach_to_wake(
    sentinel: Sentinel, chosen: Sequence[Target], url: str, fleet_breach: Callable[[str, str], None]
) -> tuple[list[float], list[str]]:
    woken: dict[tuple[str, str], float] = {}
    wake = sentinel.wake

    def record(key: tuple[str, str]) -> None:
        woken.setdefault(key, time.monotonic())
        wake(key)

    sentinel.wake = record
    versions = "|".join(t.candidate for t in chosen)
    errors = f'{METRIC}_count{{error_type!="",version=~"{versions}"}}'
    errors_q = f"sum by (namespace, version) (increase({errors}[{GATE_WINDOW}]))"
    total_q = (
        f'sum by (namespace, version) (increase({METRIC}_count{{version=~"{versions}"}}[{GATE_WINDOW}]))'
    )
    started: dict[tuple[str, str], float] = {}
    visible: dict[tuple[str, str], float] = {}
    stop = threading.Event()
    notes: list[str] = []

    def poll() -> None:
        by_version = {(t.namespace, t.candidate): (t.namespace, t.name) for t in chosen}
        while not stop.is_set():
            try:
                errors, total = _series(url, errors_q), _series(url, total_q)
            except Exception as e:
                notes.append(f"poll failed: {type(e).__name__}: {e}")
                stop.wait(0.25)
                continue
            now = time.monotonic()
            for pair, samples in total.items():
                key = by_version.get(pair)
                if key is None or key not in started or key in visible or not samples:
                    continue
                if errors.get(pair, 0.0) / samples > ERROR_MAX and samples >= MIN_SAMPLES:
                    visible[key] = now
            stop.wait(0.25)

    poller = threading.Thread(target=poll, name="breach-poll", daemon=True)
    poller.start()
    runner = asyncio.get_running_loop().create_task(sentinel.run(), name="fast-check")
    try:
        for t in chosen:
            key = (t.namespace, t.name)
            started[key] = time.monotonic()
            await asyncio.to_thread(fleet_breach, t.namespace, t.candidate)
            await asyncio.sleep(BREACH_SPACING_S)
        deadline = time.monotonic() + GATE_WINDOW_S
        while time.monotonic() < deadline and not all(k in woken and k in visible for k in started):
            await asyncio.sleep(0.25)
    finally:
        stop.set()
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)
        poller.join(15)
        sentinel.wake = wake
    latencies = [woken[k] - visible[k] for k in started if k in woken and k in visible]
    missing = [f"{ns}/{n}" for ns, n in started if (ns, n) not in woken or (ns, n) not in visible]
    if missing:
        notes.append(
            f"{len(missing)} not both visible and woken within {GATE_WINDOW_S}s: {', '.join(missing[:5])}"
        )
    return latencies, notes


async def measure(
    n: int, sweep_count: int, breaches: int, url: str, fleet_breach: Callable[[str, str], None]
) -> None:
    targets = plan_targets(n, breaches, 0)
    gateway = PrometheusGateway(
        url, timeout=10.0, reader=BatchReader(ttl=BATCH_TTL, longest=EVALUATION_MAX_AGE)
    )
    sentinel = Sentinel(clock=lambda: datetime.now(UTC), period=PERIOD)
    took = watch_all(sentinel, targets, url, gateway)
    print(
        f"  {len(sentinel)} rollouts watched (Sentinel.update with parsed specs) in {took:.1f}s", flush=True
    )
    probe = Probe(url, sentinel)
    records = await sweeps(sentinel, probe, sweep_count)
    report_sweeps(records, gateway.reader.fetches)
    chosen = [t for t in targets if t.role == "breach"]
    latencies, notes = await breach_to_wake(sentinel, chosen, url, fleet_breach)
    print(f"  breach visible in Prometheus -> sentinel wake: {spread(latencies, digits=2)}")
    for note in notes:
        print(f"    {note}")


def run(n: int = ROLLOUTS, sweep_count: int = SWEEPS, breaches: int = BREACHES) -> None:
    print(
        f"== fast check: N={n} rollouts ({2 * n} versions), scrape {SCRAPE_S}s; "
        f"{datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}\n"
        f"   machine: {machine()}; load {os.getloadavg()[0]:.1f}; operator: {git_revision()}",
        flush=True,
    )
    t0 = time.monotonic()
    targets = plan_targets(n, breaches, 0)
    with fleet_on_prometheus(targets) as (url, fleet):
        print(
            f"  prometheus and fleet up, a {GATE_WINDOW} window filled after {time.monotonic() - t0:.0f}s",
            flush=True,
        )
        asyncio.run(
            measure(n, sweep_count, breaches, url, lambda ns, v: fleet.breach(ns, v, BREACH_ERROR_RATIO))
        )
    print(f"  ({time.monotonic() - t0:.0f}s in all)", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rollouts", type=int, default=ROLLOUTS, help="N (default %(default)s)")
    parser.add_argument("--sweeps", type=int, default=SWEEPS, help="sweeps measured (default %(default)s)")
    parser.add_argument(
        "--breaches", type=int, default=BREACHES, help="breach -> wake runs (default %(default)s)"
    )
    args = parser.parse_args(argv)
    if args.rollouts <= args.breaches or args.sweeps < 1:
        parser.error("need --rollouts > --breaches and --sweeps >= 1")
    run(args.rollouts, args.sweeps, args.breaches)


if __name__ == "__main__":
    main()
