"""Many simulated agents in one exporter process: the series the gate templates read, for thousands of
(namespace, version) pairs, without thousands of agent processes.

    python -m e2e.sim.fleet --pairs FILE --port-file FILE [--rps R] [--error-ratio E]

Per pair, as an agent's metrics would show after serving R requests per second since the start:
`gen_ai_client_operation_duration_seconds_count` (errorRate's denominator and every template's
sample count) and four `_bucket` series (latencyQuantile; p95 about 3 s). No request is served: the
counters are computed from the clock at each scrape, so 20,000 pairs cost one string join per scrape.
The namespace label is in the exposition itself (one target serves every namespace).

Every pair answers a small share of its requests with errors from the start (`--error-ratio`, 1%
by default, below the benchmarks' 5% bound), so every pair has its `_count{error_type="500"}` series,
as agents in production do once they have failed at all: the fleet's errors block costs Prometheus
what it would there, not the few series of the pairs a benchmark breaches. POST /breach
{"namespace", "version", "error_ratio", "slow_ratio"} makes that share of the pair's requests errors
from now on, and that share of its successes slower than the last finite bucket (only in +Inf).
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from e2e.cluster import procs, prometheus

METRIC = "gen_ai_client_operation_duration_seconds"
# Share of requests at or below each bucket bound: p95 falls between 1 s and 5 s.
BUCKETS = (("1", 0.9), ("5", 0.99), ("10", 1.0), ("+Inf", 1.0))
ERROR_CODE = "500"
DEFAULT_RPS = 2.0
DEFAULT_ERROR_RATIO = 0.01


@dataclass
class _Breach:
    ratio: float = 0.0
    errors: float = 0.0  # errors counted up to `since`
    ok: float = 0.0  # successes counted up to `since`
    since: float = 0.0
    slow_ratio: float = 0.0  # share of the successes from `since` on slower than the last finite bucket
    slow: float = 0.0  # such successes counted up to `since` (in `ok` too)


@dataclass
class Exposition:
    """The /metrics text at time t: healthy pairs share their values, so only breached pairs differ."""

    pairs: Sequence[tuple[str, str]]
    rps: float
    started: float
    error_ratio: float = DEFAULT_ERROR_RATIO  # of every pair, until it is breached
    breaches: dict[tuple[str, str], _Breach] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self._prefixes = [self._labels(ns, ver) for ns, ver in self.pairs]

    @staticmethod
    def _labels(namespace: str, version: str) -> str:
        return f'namespace="{prometheus_escape(namespace)}",version="{prometheus_escape(version)}"'

    def breach(self, namespace: str, version: str, ratio: float, now: float, slow_ratio: float = 0.0) -> None:
        with self.lock:
            b = self.breaches.setdefault((namespace, version), _Breach(self.error_ratio, since=self.started))
            b.ok, b.errors, b.slow = self._counts(b, now)
            b.since, b.ratio, b.slow_ratio = now, ratio, slow_ratio

    def _counts(self, b: _Breach, now: float) -> tuple[float, float, float]:
        """(successes, errors, slow successes) at `now`."""
        requests = self.rps * max(0.0, now - b.since)
        ok = requests * (1 - b.ratio)
        return b.ok + ok, b.errors + requests * b.ratio, b.slow + ok * b.slow_ratio

    def render(self, now: float) -> str:
        healthy_ok, healthy_errors, _ = self._counts(_Breach(self.error_ratio, since=self.started), now)
        healthy = self._values(healthy_ok)
        lines: list[str] = []
        with self.lock:
            breaches = dict(self.breaches)
        for pair, labels in zip(self.pairs, self._prefixes, strict=True):
            b = breaches.get(pair)
            if b is None:
                values, errors = healthy, healthy_errors
            else:
                ok, errors, slow = self._counts(b, now)
                values = self._values(ok, slow)
            lines.append(f"{METRIC}_count{{{labels}}} {values[0]}")
            for (le, _), v in zip(BUCKETS, values[1:], strict=True):
                lines.append(f'{METRIC}_bucket{{{labels},le="{le}"}} {v}')
            lines.append(f'{METRIC}_count{{{labels},error_type="{ERROR_CODE}"}} {errors:.3f}')
        lines.append("")
        return "\n".join(lines)

    @staticmethod
    def _values(ok: float, slow: float = 0.0) -> tuple[str, ...]:
        """_count and the buckets: slow successes only in +Inf."""
        fast = ok - slow
        return (f"{ok:.3f}", *(f"{ok if le == '+Inf' else fast * share:.3f}" for le, share in BUCKETS))


def prometheus_escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _handler(exposition: Exposition) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _reply(self, code: int, body: bytes, content_type: str) -> None:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            if self.path.split("?")[0] != "/metrics":
                self._reply(404, b"not found\n", "text/plain")
                return
            body = exposition.render(time.time()).encode()
            self._reply(200, body, "text/plain; version=0.0.4")

        def do_POST(self) -> None:
            if self.path != "/breach":
                self._reply(404, b"not found\n", "text/plain")
                return
            req = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))))
            exposition.breach(
                req["namespace"],
                req["version"],
                float(req["error_ratio"]),
                time.time(),
                float(req.get("slow_ratio", 0.0)),
            )
            self._reply(200, b"{}", "application/json")

    return Handler


def serve(pairs_file: Path, port_file: Path, rps: float, error_ratio: float) -> None:
    spec = json.loads(pairs_file.read_text())
    pairs = [(p["namespace"], p["version"]) for p in spec]
    exposition = Exposition(pairs, rps, started=time.time(), error_ratio=error_ratio)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(exposition))
    tmp = port_file.with_suffix(".tmp")
    tmp.write_text(str(server.server_address[1]))
    tmp.replace(port_file)
    server.serve_forever()


# ---------------------------------------------------------------- the harness's handle


@dataclass
class Fleet:
    """A running fleet exporter, registered with Prometheus as one file_sd target."""

    port: int
    process: procs.ProcessInfo
    file_sd_dir: Path
    prometheus_url: str
    group: str

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def breach(self, namespace: str, version: str, error_ratio: float, slow_ratio: float = 0.0) -> None:
        import urllib.request

        body = json.dumps(
            {"namespace": namespace, "version": version, "error_ratio": error_ratio, "slow_ratio": slow_ratio}
        ).encode()
        req = urllib.request.Request(
            f"{self.url}/breach", data=body, method="POST", headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(req, timeout=10) as resp:
            resp.read()

    def wait_scraped(self, timeout_s: float = 60.0) -> None:
        """Until Prometheus has scraped the exporter once (up == 1 for its instance)."""

        def up() -> bool:
            result = prometheus.query(self.prometheus_url, f'up{{instance="127.0.0.1:{self.port}"}} == 1')
            return bool(result)

        procs.wait_until(
            up,
            timeout_s=timeout_s,
            interval_s=0.5,
            what="Prometheus to scrape the fleet",
            alive=[self.process],
        )

    def stop(self) -> None:
        prometheus.remove_targets(self.file_sd_dir, self.group)
        procs.stop_all([self.process], grace_s=3.0)


def start_fleet(
    pairs: Iterable[tuple[str, str]],
    *,
    file_sd_dir: Path,
    prometheus_url: str,
    work_dir: Path,
    scrape_interval_s: int,
    rps: float = DEFAULT_RPS,
    error_ratio: float = DEFAULT_ERROR_RATIO,
    die_with_parent: bool = True,
) -> Fleet:
    """pairs: (namespace, version). Scraped every scrape_interval_s, set on
    the target itself (file_sd's __scrape_interval__), since the cluster's 1 s would make Prometheus
    ingest 100,000 series a second at 10,000 rollouts."""
    import sys

    from e2e.cluster.paths import REPO_ROOT

    work_dir.mkdir(parents=True, exist_ok=True)
    pairs_file, port_file = work_dir / "fleet-pairs.json", work_dir / "fleet.port"
    pairs_file.write_text(json.dumps([{"namespace": n, "version": v} for n, v in pairs]))
    port_file.unlink(missing_ok=True)
    argv = [sys.executable, "-m", "e2e.sim.fleet", "--pairs", str(pairs_file), "--port-file", str(port_file)]
    info = procs.spawn(
        "fleet",
        [*argv, "--rps", str(rps), "--error-ratio", str(error_ratio)],
        work_dir / "fleet.log",
        cwd=REPO_ROOT,
        die_with_parent=die_with_parent,
    )
    procs.wait_until(port_file.exists, timeout_s=30, what="the fleet exporter to listen", alive=[info])
    port = int(port_file.read_text())
    group = "bench-fleet"
    timeout = max(1, scrape_interval_s - 1)
    labels = {"__scrape_interval__": f"{scrape_interval_s}s", "__scrape_timeout__": f"{timeout}s"}
    prometheus.write_targets(file_sd_dir, group, [(f"127.0.0.1:{port}", labels)])
    return Fleet(port, info, file_sd_dir, prometheus_url, group)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pairs", type=Path, required=True)
    parser.add_argument("--port-file", type=Path, required=True)
    parser.add_argument("--rps", type=float, default=DEFAULT_RPS)
    parser.add_argument("--error-ratio", type=float, default=DEFAULT_ERROR_RATIO)
    args = parser.parse_args(argv)
    serve(args.pairs, args.port_file, args.rps, args.error_ratio)


if __name__ == "__main__":
    main()
