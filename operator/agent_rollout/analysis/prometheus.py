"""Prometheus adapter: PromQL in, numbers out, without blocking the event loop.

prometheus-api-client is synchronous (requests), so each query runs in a small shared thread pool.
Two timeouts bound it: asyncio.wait_for bounds how long a reconcile waits, and the HTTP timeout on
the requests call bounds how long a worker thread stays busy after the reconcile gave up, so a hung
Prometheus cannot pile up threads. Queued (not yet started) queries are cancelled with the wait.

Every failure (connection refused, HTTP error, timeout, bad query, unexpected answer) surfaces as
one exception type, PrometheusUnavailable, which the shell reports as Observations.prometheus_error.
"""

from __future__ import annotations

import asyncio
import functools
import math
from collections.abc import Awaitable, Iterable
from concurrent.futures import Executor, ThreadPoolExecutor
from typing import Any, Protocol, TypeVar

import requests
from prometheus_api_client import PrometheusConnect
from prometheus_api_client.exceptions import PrometheusApiClientException
from urllib3.util.retry import Retry

from agent_rollout.analysis.gates import Measurement, bound_text, evaluate_gate
from agent_rollout.analysis.templates import (
    GateQueries,
    TemplateError,
    candidate_requests_query,
    gate_queries,
)
from agent_rollout.api import AgentRolloutSpec, GateResult, PrometheusSource, Verdict, duration_seconds

T = TypeVar("T")

# Shared by every rollout: the number of Prometheus queries in flight is bounded process-wide.
_EXECUTOR = ThreadPoolExecutor(max_workers=8, thread_name_prefix="prometheus-query")
_MESSAGE_LIMIT = 300


class PrometheusUnavailable(Exception):
    """Prometheus could not answer a query with one number (or with nothing)."""


class ScalarSource(Protocol):
    async def scalar(self, promql: str) -> float | None: ...


@functools.lru_cache(maxsize=32)
def prometheus_client(url: str) -> PrometheusConnect:
    """One client (and so one connection pool) per Prometheus URL.

    No retries inside a query: the operator evaluates again every interval and counts consecutive
    errors (analysis.consecutiveErrorLimit), and retries with backoff would outlive the timeout.
    requests.Session is shared by the worker threads; its urllib3 pool is thread-safe.
    """
    return PrometheusConnect(url=url.rstrip("/"), retry=Retry(total=0, raise_on_status=False))


def _short(error: BaseException) -> str:
    text = f"{type(error).__name__}: {error}"
    return text if len(text) <= _MESSAGE_LIMIT else text[: _MESSAGE_LIMIT - 3] + "..."


def _number(text: Any) -> float:
    try:
        return float(text)  # Prometheus sends values as strings, including "NaN" and "+Inf"
    except (TypeError, ValueError) as error:
        raise PrometheusUnavailable(f"not a number in the answer: {text!r}") from error


def parse_scalar(result: Any) -> float | None:
    """The one number in an instant query's `data.result`; None when it is empty.

    Several series are an error rather than summed: summing ratios (error rates of two pods) gives
    a meaningless number, so a custom query must aggregate to one series itself (sum(...), max(...)).
    NaN and Inf are returned as they are; gate evaluation treats them as no data.
    """
    if not isinstance(result, list):
        raise PrometheusUnavailable(f"unexpected answer: {result!r:.100}")
    if len(result) == 2 and not isinstance(result[0], dict):
        return _number(result[1])  # resultType scalar: [time, "value"]
    if not result:
        return None
    if len(result) > 1:
        raise PrometheusUnavailable(
            f"query returned {len(result)} series; aggregate it to one (e.g. sum(...))"
        )
    sample = result[0]
    if not isinstance(sample, dict) or "value" not in sample:
        raise PrometheusUnavailable("query returned a range vector; use an instant vector")
    value = sample["value"]
    if not isinstance(value, list) or len(value) != 2:
        raise PrometheusUnavailable(f"unexpected sample: {value!r:.100}")
    return _number(value[1])


class PrometheusGateway:
    """Runs instant queries against one Prometheus; cheap to create per reconcile."""

    def __init__(self, url: str, *, timeout: float = 10.0, executor: Executor | None = None) -> None:
        if not (math.isfinite(timeout) and timeout > 0):
            raise ValueError(f"timeout must be > 0 seconds, got {timeout!r}")
        self.url = url
        self.timeout = timeout
        self._executor = executor or _EXECUTOR

    @classmethod
    def for_source(cls, source: PrometheusSource, executor: Executor | None = None) -> PrometheusGateway:
        return cls(source.url, timeout=duration_seconds(source.timeout), executor=executor)

    async def scalar(self, promql: str) -> float | None:
        """The query's single value, None for an empty result; PrometheusUnavailable otherwise."""
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self._executor, self._query, promql)
        try:
            return await asyncio.wait_for(future, self.timeout)
        except TimeoutError:
            raise PrometheusUnavailable(f"{self.url}: no answer within {self.timeout:g}s") from None

    def _query(self, promql: str) -> float | None:
        """Runs in a worker thread."""
        try:
            client = prometheus_client(self.url)
            # The client's `timeout` goes to requests as connect and read timeout.
            result = client.custom_query(promql, timeout=self.timeout)
        except (
            PrometheusApiClientException,
            requests.RequestException,
            ValueError,
            KeyError,
            TypeError,
        ) as error:
            raise PrometheusUnavailable(f"{self.url}: {_short(error)}") from error
        return parse_scalar(result)


async def _gather_all(awaitables: Iterable[Awaitable[T]]) -> list[T]:
    """Like gather, but lets every query finish before raising, so no task is left running."""
    results = await asyncio.gather(*awaitables, return_exceptions=True)
    for item in results:
        if isinstance(item, BaseException):
            raise item
    return results  # type: ignore[return-value]  # no exception left in the list


async def measure_gates(
    spec: AgentRolloutSpec, namespace: str, gateway: ScalarSource
) -> tuple[GateResult, ...]:
    """Render, query and evaluate every gate. Raises PrometheusUnavailable if any query fails.

    Identical queries are sent once: the request count is the sample count of most templates.
    A gate that cannot be rendered is Inconclusive with the reason, not an error for the others.
    """
    analysis = spec.analysis
    if analysis is None:
        return ()
    rendered: list[tuple[GateQueries, GateQueries | None] | TemplateError] = []
    for gate in analysis.gates:
        try:
            candidate = gate_queries(gate, spec, namespace, "candidate")
            legacy = gate_queries(gate, spec, namespace, "legacy") if gate.compare else None
            rendered.append((candidate, legacy))
        except TemplateError as error:
            rendered.append(error)

    wanted: dict[str, None] = {}  # ordered set
    for item in rendered:
        if not isinstance(item, TemplateError):
            for queries in item:
                if queries is not None:
                    wanted.update(dict.fromkeys(q for q in (queries.value, queries.samples) if q))
    values = dict(zip(wanted, await _gather_all(gateway.scalar(q) for q in wanted), strict=True))

    def get(query: str | None) -> float | None:
        return values[query] if query else None

    results: list[GateResult] = []
    for gate, item in zip(analysis.gates, rendered, strict=True):
        if isinstance(item, TemplateError):
            results.append(
                GateResult(
                    name=gate.name,
                    verdict=Verdict.INCONCLUSIVE,
                    bound=bound_text(gate),
                    message=f"cannot render query: {item}",
                    dry_run=gate.dry_run,
                )
            )
            continue
        candidate, legacy = item
        measurement = Measurement(
            value=get(candidate.value),
            samples=get(candidate.samples),
            legacy_value=get(legacy.value) if legacy else None,
            legacy_samples=get(legacy.samples) if legacy else None,
            query=candidate.value,
        )
        results.append(evaluate_gate(gate, analysis, measurement))
    return tuple(results)


async def candidate_requests(
    spec: AgentRolloutSpec, namespace: str, seconds: float, gateway: ScalarSource
) -> int | None:
    """Candidate requests over the last `seconds` (since the step began); None when unknown."""
    if seconds < 1:
        return 0  # the step has just begun; an [0s] range is not valid PromQL anyway
    value = await gateway.scalar(candidate_requests_query(spec, namespace, math.ceil(seconds)))
    if value is None or not math.isfinite(value):
        return None
    return max(0, round(value))
