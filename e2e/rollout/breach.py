"""Measure breach-to-rollback: from the first moment Prometheus shows a gate's bound broken (with enough
samples) to the moment the HTTPRoute sends the candidate nothing. Shared by the e2e test and `make bench`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from prometheus_api_client import PrometheusConnect

from agent_rollout import api
from agent_rollout.analysis.templates import gate_queries


@dataclass(frozen=True)
class BreachTiming:
    breach_at: float  # time.monotonic() when Prometheus first showed value > max with samples >= min
    rolled_back_at: float  # time.monotonic() when the route first gave the candidate weight 0 again

    @property
    def seconds(self) -> float:
        return self.rolled_back_at - self.breach_at


def _scalar(prometheus: PrometheusConnect, query: str) -> float | None:
    result = prometheus.custom_query(query)
    return float(result[0]["value"][1]) if result else None


def watch_breach_to_rollback(
    manifest: dict[str, Any],
    prometheus: PrometheusConnect,
    candidate_weight: Callable[[], int],
    timeout_s: float = 120.0,
    every_s: float = 0.1,
) -> BreachTiming:
    """Poll Prometheus with the rollout's own first gate and the route, until the candidate is cut off."""
    spec = api.parse_spec(manifest["spec"])
    assert spec.analysis is not None and spec.analysis.gates, "needs a gate"
    gate = spec.analysis.gates[0]
    queries = gate_queries(gate, spec, manifest["metadata"]["namespace"], "candidate")
    min_samples = gate.min_samples if gate.min_samples is not None else spec.analysis.min_samples
    assert gate.max is not None
    breach_at: float | None = None
    had_traffic = False
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        # Prometheus first, then the route: read the other way round, a breach that became visible
        # during our sleep and was acted on by the operator's next sweep (a fresh-clone CI run,
        # 2026-11-27) read as a rollback without a breach. This way a weight of 0 with no breach seen
        # means the operator cut the candidate off on data Prometheus did not show us a moment before.
        polled = time.monotonic()
        if breach_at is None:
            value = _scalar(prometheus, queries.value)
            samples = _scalar(prometheus, queries.samples) if queries.samples else None
            if value is not None and value > gate.max and (samples or 0) >= min_samples:
                breach_at = polled
        weight = candidate_weight()
        now = time.monotonic()
        had_traffic = had_traffic or weight > 0
        if had_traffic and weight == 0:
            if breach_at is None:
                raise AssertionError("rolled back before Prometheus showed a breach")
            return BreachTiming(breach_at, now)
        time.sleep(every_s)
    raise AssertionError(f"no rollback within {timeout_s}s (breach seen: {breach_at is not None})")
