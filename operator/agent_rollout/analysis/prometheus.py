"""Prometheus adapter: PromQL in, numbers out, without blocking the event loop.

prometheus-api-client is synchronous (requests), so each query runs in a small shared thread pool.
Two timeouts bound it: asyncio.wait_for bounds how long a reconcile waits, and the HTTP timeout on
the requests call bounds how long a worker thread stays busy after the reconcile gave up, so a hung
Prometheus cannot pile up threads. Queued (not yet started) queries are cancelled with the wait.

Every failure (connection refused, HTTP error, timeout, bad query, unexpected answer) surfaces as
one exception type, PrometheusUnavailable, which the shell reports as Observations.prometheus_error.

Built-in templates are read from building blocks shared by all rollouts (analysis.batch); custom
queries and the candidate request count since the step began are per-rollout instant queries.
"""

from __future__ import annotations

import asyncio
import functools
import math
from collections.abc import Awaitable, Callable, Iterable
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar, cast

import requests
from prometheus_api_client import PrometheusConnect
from prometheus_api_client.exceptions import PrometheusApiClientException
from urllib3.util.retry import Retry

from agent_rollout.analysis.batch import BatchReader
from agent_rollout.analysis.gates import Measurement, bound_text, evaluate_gate
from agent_rollout.analysis.templates import (
    Block,
    BlockValues,
    GateQueries,
    TemplateError,
    TemplateRead,
    candidate_requests_query,
    gate_queries,
    template_read,
    version_values,
)
from agent_rollout.api import (
    AgentRolloutSpec,
    Gate,
    GateResult,
    MetricNames,
    Verdict,
)

T = TypeVar("T")

# Shared by every rollout: the number of Prometheus queries in flight is bounded process-wide.
_EXECUTOR = ThreadPoolExecutor(max_workers=8, thread_name_prefix="prometheus-query")
_MESSAGE_LIMIT = 300


class PrometheusUnavailable(Exception):
    """Prometheus could not answer a query with one number (or with nothing)."""


class MetricsSource(Protocol):
    async def scalar(self, promql: str) -> float | None: ...

    async def block(self, block: Block) -> BlockValues: ...


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


def parse_vector(result: Any, labels: tuple[str, str]) -> dict[tuple[str, str], float]:
    """An instant vector's series by the values of two labels (an absent label reads "", as in a
    PromQL matcher). NaN and Inf are kept as they are, like parse_scalar. A tight loop: a building
    block holds a series per version of every rollout on its Prometheus."""
    if not isinstance(result, list) or (len(result) == 2 and not isinstance(result[0], dict)):
        raise PrometheusUnavailable(f"expected an instant vector, got: {result!r:.100}")
    namespace, version = labels
    values: dict[tuple[str, str], float] = {}
    try:
        for sample in result:
            metric = sample["metric"]
            _, text = sample["value"]
            values[(metric.get(namespace, ""), metric.get(version, ""))] = float(text)
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise PrometheusUnavailable(f"unexpected series (not an instant vector?): {_short(error)}") from error
    return values


class PrometheusGateway:
    """Runs instant queries against one Prometheus; building blocks go through `reader`, which all
    gateways of one Prometheus URL should share (handlers._gateway_for does)."""

    def __init__(
        self,
        url: str,
        *,
        timeout: float = 10.0,
        executor: Executor | None = None,
        reader: BatchReader | None = None,
    ) -> None:
        if not (math.isfinite(timeout) and timeout > 0):
            raise ValueError(f"timeout must be > 0 seconds, got {timeout!r}")
        self.url = url
        self.timeout = timeout
        self.reader = reader or BatchReader()
        self._executor = executor or _EXECUTOR

    async def scalar(self, promql: str) -> float | None:
        """The query's single value, None for an empty result; PrometheusUnavailable otherwise."""
        return await self._run(promql, parse_scalar)

    async def block(self, block: Block) -> BlockValues:
        """A building block's values by (namespace, version), shared through the reader."""
        parse = functools.partial(parse_vector, labels=(block.namespace_label, block.version_label))
        try:
            return await self.reader.read(block, lambda: self._run(block.promql, parse), self.timeout)
        except TimeoutError:
            raise PrometheusUnavailable(f"{self.url}: no answer within {self.timeout:g}s") from None

    async def _run(self, promql: str, parse: Callable[[Any], T]) -> T:
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self._executor, self._query, promql, parse)
        try:
            return await asyncio.wait_for(future, self.timeout)
        except TimeoutError:
            raise PrometheusUnavailable(f"{self.url}: no answer within {self.timeout:g}s") from None

    def _query(self, promql: str, parse: Callable[[Any], T]) -> T:
        """Runs in a worker thread, parsing included: a block's thousands of series stay off the loop."""
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
        return parse(result)


async def _gather_all(awaitables: Iterable[Awaitable[T]]) -> list[T]:
    """Like gather, but lets every query finish before raising, so no task is left running."""
    results = await asyncio.gather(*awaitables, return_exceptions=True)
    for item in results:
        if isinstance(item, BaseException):
            raise item
    return results  # type: ignore[return-value]  # no exception left in the list


@dataclass(frozen=True)
class _Plan:
    """How one gate is measured: from building blocks (template) or by its own queries (custom)."""

    evidence: str  # the candidate value query, per rollout, as a human would paste it
    read: TemplateRead | None = None
    candidate: GateQueries | None = None
    legacy: GateQueries | None = None  # custom gates with `compare` only


def _plan(gate: Gate, spec: AgentRolloutSpec, namespace: str, metrics: MetricNames) -> _Plan:
    evidence = gate_queries(gate, spec, namespace, "candidate")
    if gate.template is not None:
        read = template_read(gate.template, metrics, window=gate.window, quantile=gate.quantile)
        return _Plan(evidence.value, read=read)
    legacy = gate_queries(gate, spec, namespace, "legacy") if gate.compare else None
    return _Plan(evidence.value, candidate=evidence, legacy=legacy)


async def measure_gates(
    spec: AgentRolloutSpec, namespace: str, gateway: MetricsSource
) -> tuple[GateResult, ...]:
    """Measure and evaluate every gate. Raises PrometheusUnavailable if any query it needs fails.

    Template gates take their two series out of shared building blocks; custom gates send their own
    queries, identical ones once. Everything is awaited concurrently. A gate that cannot be rendered
    is Inconclusive with the reason, not an error for the others.
    """
    analysis = spec.analysis
    if analysis is None:
        return ()
    plans: list[_Plan | TemplateError] = []
    for gate in analysis.gates:
        try:
            plans.append(_plan(gate, spec, namespace, analysis.metrics))
        except TemplateError as error:
            plans.append(error)

    blocks: dict[Block, None] = {}  # ordered sets
    queries: dict[str, None] = {}
    for plan in plans:
        if isinstance(plan, TemplateError):
            continue
        if plan.read is not None:
            blocks.update(dict.fromkeys(plan.read.blocks))
        for side in (plan.candidate, plan.legacy):
            if side is not None:
                queries.update(dict.fromkeys(q for q in (side.value, side.samples) if q))
    answers = await _gather_all([*(gateway.block(b) for b in blocks), *(gateway.scalar(q) for q in queries)])
    vectors = {b: cast(BlockValues, a) for b, a in zip(blocks, answers[: len(blocks)], strict=True)}
    values = {q: cast(float | None, a) for q, a in zip(queries, answers[len(blocks) :], strict=True)}
    legacy_version, candidate_version = version_values(spec)

    def get(query: str | None) -> float | None:
        return values[query] if query else None

    results: list[GateResult] = []
    for gate, plan in zip(analysis.gates, plans, strict=True):
        if isinstance(plan, TemplateError):
            results.append(
                GateResult(
                    name=gate.name,
                    verdict=Verdict.INCONCLUSIVE,
                    bound=bound_text(gate),
                    message=f"cannot render query: {plan}",
                    dry_run=gate.dry_run,
                )
            )
            continue
        if plan.read is not None:
            value, samples = plan.read.measure(vectors, namespace, candidate_version)
            legacy_value, legacy_samples = (
                plan.read.measure(vectors, namespace, legacy_version) if gate.compare else (None, None)
            )
        else:
            assert plan.candidate is not None
            value, samples = get(plan.candidate.value), get(plan.candidate.samples)
            legacy_value = get(plan.legacy.value) if plan.legacy else None
            legacy_samples = get(plan.legacy.samples) if plan.legacy else None
        measurement = Measurement(value, samples, legacy_value, legacy_samples, query=plan.evidence)
        results.append(evaluate_gate(gate, analysis, measurement))
    return tuple(results)


async def candidate_requests(
    spec: AgentRolloutSpec, namespace: str, seconds: float, gateway: MetricsSource
) -> int | None:
    """Candidate requests over the last `seconds` (since the step began); None when unknown. The window
    is rounded down, so it never reaches back before the step began."""
    if seconds < 1:
        return 0  # the step has just begun; an [0s] range is not valid PromQL anyway
    value = await gateway.scalar(candidate_requests_query(spec, namespace, math.floor(seconds)))
    if value is None or not math.isfinite(value):
        return None
    return max(0, round(value))
