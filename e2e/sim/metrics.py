"""The metrics contract of a simulated agent: exactly the series the operator's gate templates query.

Every series carries version="<version name>"; Prometheus adds namespace from the file_sd target.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Histogram

# Whole agent invocations take seconds to minutes, not milliseconds.
DURATION_BUCKETS_S = (0.05, 0.1, 0.25, 0.5, 1, 2, 3, 5, 8, 10, 15, 20, 30, 45, 60)
# Powers of four, as in the OpenTelemetry GenAI semantic conventions.
TOKEN_BUCKETS = tuple(float(4**i) for i in range(12))
# Error statuses whose series exist from start-up, plus the profile's error_code (any status it is
# changed to at run time is created at that moment).
COMMON_ERROR_CODES = (429, 500, 502, 503, 504)


@dataclass(frozen=True)
class AgentOutcome:
    latency_s: float
    status: int  # HTTP status the agent answered with
    input_tokens: int = 0
    output_tokens: int = 0
    flagged: bool = False
    cost_usd: float = 0.0
    eval_correct: bool | None = None  # None: no eval ran (failed calls are not evaluated)


class AgentMetrics:
    def __init__(self, version: str, error_codes: Iterable[int] = ()) -> None:
        self.version = version
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.duration = Histogram(
            "gen_ai_client_operation_duration_seconds",
            "Duration of whole agent invocations.",
            ["version", "error_type"],
            buckets=DURATION_BUCKETS_S,
            registry=r,
        )
        self.requests = Counter(
            "agent_requests", "Agent invocations by HTTP status.", ["version", "code"], registry=r
        )
        self.tokens = Histogram(
            "gen_ai_client_token_usage",
            "Tokens per invocation.",
            ["version", "gen_ai_token_type"],
            buckets=TOKEN_BUCKETS,
            registry=r,
        )
        self.flagged = Counter(
            "agent_answers_flagged", "Answers flagged by the validator.", ["version"], registry=r
        )
        self.cost = Counter("agent_cost_usd", "Cost of invocations in US dollars.", ["version"], registry=r)
        self.evals = Counter("agent_eval", "Evaluated answers.", ["version"], registry=r)
        self.evals_correct = Counter(
            "agent_eval_correct", "Evaluated answers judged correct.", ["version"], registry=r
        )
        # Every series a gate reads exists from start-up, at 0. For success series: rate() over a series
        # that does not exist yet is "no data", which is not zero. For error and flag series it matters
        # more: increase() and rate() need two samples of a series, so the scrape that first sees a new
        # series counts nothing, and a short burst on a fresh error series is undercounted or invisible.
        v = version
        self.duration.labels(v, "")
        self.requests.labels(v, "200")
        for kind in ("input", "output"):
            self.tokens.labels(v, kind)
        for counter in (self.flagged, self.cost, self.evals, self.evals_correct):
            counter.labels(v)
        for code in (*COMMON_ERROR_CODES, *error_codes):
            self.precreate_error(code)

    def precreate_error(self, code: int) -> None:
        """The error series of one status code at 0 (duration histogram by error_type, requests by code)."""
        self.duration.labels(self.version, str(code))
        self.requests.labels(self.version, str(code))

    def record(self, outcome: AgentOutcome) -> None:
        v = self.version
        ok = outcome.status < 400
        # error_type is empty on success (Prometheus drops empty labels), the status code otherwise.
        self.duration.labels(v, "" if ok else str(outcome.status)).observe(outcome.latency_s)
        self.requests.labels(v, str(outcome.status)).inc()
        if not ok:
            return
        self.tokens.labels(v, "input").observe(outcome.input_tokens)
        self.tokens.labels(v, "output").observe(outcome.output_tokens)
        self.cost.labels(v).inc(outcome.cost_usd)
        if outcome.flagged:
            self.flagged.labels(v).inc()
        if outcome.eval_correct is not None:
            self.evals.labels(v).inc()
            if outcome.eval_correct:
                self.evals_correct.labels(v).inc()
