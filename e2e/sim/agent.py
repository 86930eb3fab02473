"""A simulated AI agent: one process per version, answering POST /invoke according to its fault profile.

    python -m e2e.sim.agent --version candidate --port-file /tmp/p [--profile '{"error_ratio": 0.1}']

Endpoints: POST /invoke (one agent call), GET /metrics (Prometheus), GET|POST /profile (read or change
the profile while running; POST merges the given fields), GET /stats (request counts as JSON, so tests
can check traffic shares against the agent's own counts), GET /healthz.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import prometheus_client
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from e2e.sim.metrics import AgentMetrics, AgentOutcome
from e2e.sim.profile import FaultProfile

MAX_SLEEP_S = 120.0  # a sleeping call never outlives a test by much, whatever the profile says


class Agent:
    """The agent's behaviour without HTTP, so it can be reasoned about (and tested) on its own."""

    def __init__(self, version: str, profile: FaultProfile, seed: int | None = None) -> None:
        self.version = version
        self.metrics = AgentMetrics(version, error_codes=[profile.error_code])
        self._profile = profile
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._counts: dict[str, int] = {}

    @property
    def profile(self) -> FaultProfile:
        return self._profile

    def update_profile(self, changes: dict[str, Any]) -> FaultProfile:
        with self._lock:
            self._profile = self._profile.updated(changes)
            # Before any call can fail with it: the new code's series must be scraped at 0 first.
            self.metrics.precreate_error(self._profile.error_code)
            return self._profile

    def invoke(self) -> AgentOutcome:
        with self._lock:  # one lock for the RNG and the profile snapshot keeps every call consistent
            p = self._profile
            rng = self._rng
            latency = p.sample_latency_s(rng)
            if rng.random() < p.error_ratio:
                outcome = AgentOutcome(latency_s=latency, status=p.error_code)
            else:
                outcome = AgentOutcome(
                    latency_s=latency,
                    status=200,
                    input_tokens=p.input_tokens,
                    output_tokens=p.output_tokens,
                    flagged=rng.random() < p.flagged_ratio,
                    cost_usd=p.cost_per_request_usd,
                    eval_correct=rng.random() < p.eval_accuracy,
                )
        if p.latency_sleep:
            time.sleep(min(latency, MAX_SLEEP_S))
        self.metrics.record(outcome)
        with self._lock:
            key = str(outcome.status)
            self._counts[key] = self._counts.get(key, 0) + 1
        return outcome

    def answer(self, case: str) -> str:
        """The answer to an evaluation input: right unless the profile fails the case by name, or (for
        the unnamed bulk of the suite) the case falls outside eval_accuracy, decided by the case's name
        so that the same suite scores the same agent the same way every run."""
        p = self._profile
        wrong = case in {c.strip() for c in p.failing_cases.split(",") if c.strip()}
        if not wrong and not case.startswith("edge-"):
            wrong = int(hashlib.sha256(case.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF >= p.eval_accuracy
        return f"wrong answer to {case}" if wrong else expected_answer(case)

    def reply(self, text: str) -> str:
        """The answer to a live (or mirrored) input: the same for the same input, but for the profile's
        disagreement_ratio (another answer) and noise_ratio (a rewording), drawn per call."""
        with self._lock:
            p, draw = self._profile, self._rng.random()
        if draw < p.disagreement_ratio:
            return f"a different answer to {text}"
        if draw < p.disagreement_ratio + p.noise_ratio:
            return f"{expected_answer(text)}, worded differently ({draw:.6f})"
        return expected_answer(text)

    def stats(self) -> dict[str, Any]:
        with self._lock:
            counts = dict(self._counts)
        return {"version": self.version, "requests": sum(counts.values()), "by_code": counts}


def expected_answer(case: str) -> str:
    """The label of an evaluation case: what a correct agent answers (e2e.sim.evaluation's dataset)."""
    return f"answer to {case}"


def _field_of(body: bytes, name: str) -> str | None:
    try:
        raw = json.loads(body or b"{}")
    except ValueError:
        return None
    value = raw.get(name) if isinstance(raw, dict) else None
    return value if isinstance(value, str) else None


def _case_of(body: bytes) -> str | None:
    return _field_of(body, "case")


def _handler(agent: Agent) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        # HTTP/1.1 keep-alive: the traffic driver reuses connections instead of paying a TCP setup per call.
        protocol_version = "HTTP/1.1"
        # Headers and body leave in separate writes; with Nagle on, each response waits ~40 ms for
        # the client's delayed ACK.
        disable_nagle_algorithm = True

        def log_message(self, format: str, *args: Any) -> None:
            pass  # thousands of calls per test; the metrics are the record

        def _send(self, status: int, body: bytes, content_type: str = "application/json") -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("X-Agent-Version", agent.version)
            self.end_headers()
            self.wfile.write(body)

        def _json(self, status: int, data: Any) -> None:
            self._send(status, json.dumps(data).encode())

        def _body(self) -> bytes:
            length = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(length) if length else b""

        def do_GET(self) -> None:
            if self.path == "/metrics":
                self._send(200, generate_latest(agent.metrics.registry), CONTENT_TYPE_LATEST)
            elif self.path == "/profile":
                self._json(200, agent.profile.to_json())
            elif self.path == "/stats":
                self._json(200, agent.stats())
            elif self.path == "/healthz":
                self._json(200, {"ok": True})
            else:
                self._json(404, {"error": f"no route {self.path}"})

        def do_POST(self) -> None:
            body = self._body()
            if self.path == "/invoke":
                o = agent.invoke()
                case = _case_of(body)
                answer = {
                    "version": agent.version,
                    "status": o.status,
                    "latency_s": o.latency_s,
                    "flagged": o.flagged,
                    "tokens": {"input": o.input_tokens, "output": o.output_tokens},
                }
                text = _field_of(body, "input")
                if case is not None:
                    answer["answer"] = agent.answer(case)
                elif text is not None and o.status == 200:
                    answer["answer"] = agent.reply(text)
                self._json(o.status, answer)
            elif self.path == "/profile":
                try:
                    changes = json.loads(body or b"{}")
                    if not isinstance(changes, dict):
                        raise ValueError("profile update must be a JSON object")
                    self._json(200, agent.update_profile(changes).to_json())
                except ValueError as e:
                    self._json(400, {"error": str(e)})
            else:
                self._json(404, {"error": f"no route {self.path}"})

    return Handler


def serve(version: str, profile: FaultProfile, port: int, port_file: Path | None, seed: int | None) -> None:
    # *_created series are noise for every query.
    prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]
    agent = Agent(version, profile, seed)
    server = ThreadingHTTPServer(("127.0.0.1", port), _handler(agent))
    server.daemon_threads = True
    if port_file is not None:
        # Written after bind, atomically: the harness learns the port without a race on "free" ports.
        tmp = port_file.with_suffix(".tmp")
        tmp.write_text(str(server.server_address[1]))
        os.replace(tmp, port_file)
    server.serve_forever(poll_interval=0.5)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--version", required=True, help="value of the version label, e.g. legacy or candidate"
    )
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (see --port-file)")
    parser.add_argument("--port-file", type=Path, help="where to write the bound port")
    parser.add_argument("--profile", default="{}", help="JSON object of FaultProfile fields")
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args()
    profile = FaultProfile().updated(json.loads(args.profile))
    serve(args.version, profile, args.port, args.port_file, args.seed)


if __name__ == "__main__":
    main()
