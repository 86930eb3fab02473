"""The shadow comparator's overhead: `python -m e2e.bench.comparator_overhead` (part of `make bench`).

Real processes on loopback, no cluster: two simulated agents (e2e/sim/agent.py) as legacy and
candidate, answering at once (latency_sleep false, so the figures are the comparator's own cost and
not an agent's think time), and the comparator (`python -m agent_rollout.comparator`) comparing
JSON fields of their answers.

Latency, closed loop, one request at a time on a keep-alive connection, after a warm-up:
  direct        POST /invoke to the candidate agent;
  compared      the same through the comparator run with --answer-after-compare: it answers once
                both agents answered and the comparison is done (the whole cost of one mirrored
                request); added latency = its quantile minus the direct call's quantile;
  mirror ack    the comparator as deployed (answers 202 at once, compares in the background):
                what a gateway's mirror connection waits for.
CPU: the comparator as deployed, open loop at a fixed rate for a fixed time, noise floor sampled
at 10% (those requests cost a third agent call); CPU seconds of the comparator process (utime +
stime from /proc) per second of traffic, scaled to 100 req/s. Prints figures; asserts only that
every request was compared.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import sys
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from e2e.cluster import procs
from e2e.cluster.paths import REPO_ROOT
from e2e.sim.comparator import SimComparator, start_comparator

FIELDS = ["--mode", "json", "--field", "/status", "--field", "/flagged", "--field", "/tokens"]
BODY = json.dumps({"input": "where is my refund?", "customer": "c-123"})
CLK_TCK = os.sysconf("SC_CLK_TCK")


def quantile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime (fields 14 and 15)


@contextmanager
def agents(log_dir: Path) -> Iterator[dict[str, str]]:
    started: list[procs.ProcessInfo] = []
    urls: dict[str, str] = {}
    try:
        for version in ("legacy", "candidate"):
            port_file = log_dir / f"{version}.port"
            argv = [
                sys.executable,
                "-m",
                "e2e.sim.agent",
                "--version",
                version,
                "--port-file",
                str(port_file),
            ]
            argv += ["--profile", json.dumps({"latency_sleep": False}), "--seed", "1"]
            info = procs.spawn(version, argv, log_dir / f"{version}.log", cwd=REPO_ROOT, die_with_parent=True)
            started.append(info)
            procs.wait_until(port_file.exists, timeout_s=20, what=f"{version} to listen", alive=[info])
            urls[version] = f"http://127.0.0.1:{int(port_file.read_text())}"
        yield urls
    finally:
        procs.stop_all(started, grace_s=3.0)


def closed_loop(url: str, requests: int, warmup: int = 100) -> list[float]:
    """Seconds per request, one at a time on one keep-alive connection."""
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.netloc, timeout=30)
    out: list[float] = []
    try:
        for i in range(warmup + requests):
            t0 = time.perf_counter()
            conn.request("POST", "/invoke", body=BODY, headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            resp.read()
            if i >= warmup:
                out.append(time.perf_counter() - t0)
    finally:
        conn.close()
    return out


def open_loop(url: str, rps: float, duration_s: float, senders: int = 4) -> int:
    """Sends at `rps` in total for `duration_s`; returns how many requests were sent."""
    parts = urllib.parse.urlsplit(url)
    sent = [0] * senders
    start = time.monotonic() + 0.1

    def send(index: int) -> None:
        conn = http.client.HTTPConnection(parts.netloc, timeout=30)
        interval = senders / rps
        at = start + index * interval / senders
        while at < start + duration_s:
            time.sleep(max(0.0, at - time.monotonic()))
            conn.request("POST", "/invoke", body=BODY, headers={"Content-Type": "application/json"})
            conn.getresponse().read()
            sent[index] += 1
            at += interval
        conn.close()

    threads = [threading.Thread(target=send, args=(i,), daemon=True) for i in range(senders)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(sent)


def wait_compared(comparator: SimComparator, count: int, timeout_s: float = 60.0) -> dict[str, float]:
    deadline = time.monotonic() + timeout_s
    while True:
        counts = comparator.counts()
        if sum(counts.values()) >= count or time.monotonic() > deadline:
            return counts
        time.sleep(0.1)


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f} ms"


def run(requests: int = 2000, rps: float = 100.0, duration_s: float = 30.0) -> dict[str, float]:
    print(f"== shadow comparator overhead: {requests} sequential requests, {rps:g} req/s for {duration_s:g}s")
    figures: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="bench-comparator-") as tmp, agents(Path(tmp)) as urls:
        log_dir = Path(tmp)
        direct = closed_loop(urls["candidate"], requests)
        synced = start_comparator(
            urls["legacy"],
            urls["candidate"],
            log_dir=log_dir,
            name="synced",
            args=[*FIELDS, "--answer-after-compare"],
        )
        try:
            compared = closed_loop(synced.url, requests)
        finally:
            synced.close()
        deployed = start_comparator(
            urls["legacy"],
            urls["candidate"],
            log_dir=log_dir,
            name="deployed",
            args=[*FIELDS, "--noise-share", "0.1"],
        )
        try:
            ack = closed_loop(deployed.url, requests)
            wait_compared(deployed, requests + 100)
            before = sum(deployed.counts().values())
            cpu0, t0 = cpu_seconds(deployed.process.pid), time.monotonic()
            sent = open_loop(deployed.url, rps, duration_s)
            counts = wait_compared(deployed, before + sent)
            cpu = cpu_seconds(deployed.process.pid) - cpu0
            elapsed = time.monotonic() - t0
            noise = deployed.counts("agent_shadow_noise_comparisons_total")
        finally:
            deployed.close()
    compared_total = sum(counts.values()) - before
    achieved = sent / duration_s
    for q, name in ((0.5, "p50"), (0.99, "p99")):
        figures[f"direct_{name}_s"] = quantile(direct, q)
        figures[f"compared_{name}_s"] = quantile(compared, q)
        figures[f"added_{name}_s"] = quantile(compared, q) - quantile(direct, q)
        figures[f"ack_{name}_s"] = quantile(ack, q)
    figures["cpu_per_100_rps"] = cpu / duration_s * (100.0 / achieved)
    for label, key in (
        ("direct call to the candidate", "direct"),
        ("through the comparator, compared", "compared"),
        ("added per mirrored request", "added"),
        ("mirror acknowledged (202)", "ack"),
    ):
        print(f"{label:<34} p50 {ms(figures[key + '_p50_s'])}  p99 {ms(figures[key + '_p99_s'])}")
    nonzero = lambda c: {k: int(v) for k, v in c.items() if v}  # noqa: E731
    print(
        f"comparator CPU at {achieved:.0f} req/s (noise share 10%): {cpu:.2f} CPU-s in {duration_s:g}s "
        f"-> {figures['cpu_per_100_rps']:.3f} CPU-s per second per 100 req/s "
        f"({figures['cpu_per_100_rps'] * 100:.1f}% of a core); all {compared_total:.0f} of {sent} compared "
        f"in {elapsed:.1f}s: {nonzero(counts)}, noise floor {nonzero(noise)}"
    )
    assert compared_total == sent, f"{sent} mirrored, {compared_total} compared"
    return figures


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=2000, help="sequential requests per latency run")
    parser.add_argument("--rps", type=float, default=100.0)
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of the CPU run")
    args = parser.parse_args(argv)
    run(args.requests, args.rps, args.duration)


if __name__ == "__main__":
    main()
