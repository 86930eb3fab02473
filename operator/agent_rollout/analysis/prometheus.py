"""Prometheus adapter: PromQL in, numbers out, without blocking the event loop.

prometheus-api-client is synchronous (requests), so each query runs in a small shared thread pool.
Two timeouts bound it: batch.within bounds how long a reconcile waits, and the HTTP timeout on
the requests call bounds how long a worker thread stays busy after the reconcile gave up, so a hung
Prometheus cannot pile up threads. Queued (not yet started) queries are cancelled with the wait.

Failures come in two kinds, both PrometheusError:
- QueryRejected: Prometheus answered `bad_data` (HTTP 400): it cannot parse the query, and never
  will, so the candidate can never be measured by that gate. Carries the gate and Prometheus' text.
- PrometheusUnavailable: everything that may pass (connection refused, timeout, HTTP 5xx or 422,
  an unexpected answer), which the shell reports as Observations.prometheus_error.

`check_queries` asks Prometheus to parse every query of a spec without running it (format_query),
so a rollout whose queries Prometheus rejects can be stopped before any traffic moves.

Built-in templates are read from building blocks shared by all rollouts (analysis.batch); custom
queries and the candidate request count since the step began are per-rollout instant queries.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import math
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Collection, Iterable, Iterator, Mapping
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar, cast

import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from agent_rollout import metrics
from agent_rollout.analysis.batch import BatchReader, within
from agent_rollout.analysis.gates import Measurement, bound_text, evaluate_gate
from agent_rollout.analysis.templates import (
    Block,
    BlockValues,
    GateQueries,
    Pair,
    TemplateError,
    TemplateRead,
    candidate_requests_query,
    gate_queries,
    noise_floor_read,
    shadow_pairs_query,
    template_read,
    version_values,
)
from agent_rollout.api import (
    AgentRolloutSpec,
    Analysis,
    Gate,
    GateResult,
    MetricNames,
    Template,
    Verdict,
    duration_seconds,
)
from agent_rollout.domain import SpecProblem

T = TypeVar("T")

# Shared by every rollout: the number of Prometheus queries in flight is bounded process-wide.
SHARED_WORKERS = 8
_EXECUTOR = ThreadPoolExecutor(max_workers=SHARED_WORKERS, thread_name_prefix="prometheus-query")
# The urgent queries (a breach is seen through them: the fast check's value blocks, its confirms, and
# the reads of the evaluation a breach woke) have workers of their own. In the shared pool they waited
# in its first-in, first-out queue behind the evaluations' queries (at 10,000 rollouts, 0.4-1.4 s each
# at Prometheus, eight at a time). Four were enough at 10,000 rollouts (run Z9): 373 urgent queries in
# 120 s waited p99 <= 0.1 s for one of them; more would only share Prometheus' cores among more.
URGENT_WORKERS = 4
_URGENT_EXECUTOR = ThreadPoolExecutor(max_workers=URGENT_WORKERS, thread_name_prefix="prometheus-urgent")
_MESSAGE_LIMIT = 300
# Queries longer than this many characters are sent as a POST form, not in the URL.
LONG_QUERY = 2048
# A focused read names at most this many (namespace, version) pairs; more read the whole block, which
# every reader shares (a regex of thousands of versions costs Prometheus what the whole block does).
FOCUS_LIMIT = 2000


class PrometheusError(Exception):
    """A query got no usable answer."""


class PrometheusUnavailable(PrometheusError):
    """Prometheus could not answer a query with one number (or with nothing); it may next time."""


class QueryRejected(PrometheusError):
    """Prometheus refused the query as invalid (bad_data): it will refuse it every time.

    `gate` and `field` name the spec's gate and field (spec.analysis.gates[2].query) when the query
    belongs to one; `reason` is Prometheus' own error text.
    """

    def __init__(self, reason: str, *, query: str, gate: str | None = None, field: str | None = None):
        self.reason, self.query, self.gate, self.field = reason, query, gate, field
        whose = f"gate {gate!r}: " if gate else ""
        super().__init__(f"{whose}Prometheus rejected the query: {reason}")

    def for_gate(self, gate: str, field: str) -> QueryRejected:
        return QueryRejected(self.reason, query=self.query, gate=gate, field=field)


class MetricsSource(Protocol):
    async def scalar(self, promql: str) -> float | None: ...

    async def block(
        self,
        block: Block,
        max_age: float | None = None,
        keys: frozenset[Pair] | None = None,
        stale_age: float | None = None,
        after: float | None = None,
        urgent: bool = False,
    ) -> BlockValues: ...

    def answer_times(self, promql: str) -> AnswerTimes | None: ...


@dataclass(frozen=True)
class AnswerTimes:
    """Where the last answer to one query spent its time on the way to its asker, in seconds: waiting
    for a worker thread, at Prometheus (the HTTP round trip: its queue, evaluation and encoding, the
    transfer), waiting for a turn to decode (a large answer, _DecodeTurns) and decoding and parsing.
    `done` is the time.monotonic() moment the worker handed it over: from there to its asker is the
    event loop's part."""

    queued: float
    prometheus: float
    turn: float
    decode: float
    done: float

    def __str__(self) -> str:
        return (
            f"{self.queued:.2f} s for a worker, Prometheus {self.prometheus:.2f} s, "
            f"{self.turn:.2f} s for a turn to decode, {self.decode:.2f} s decoding"
        )


class QueryChecker(Protocol):
    async def check(self, promql: str) -> str | None: ...


@functools.lru_cache(maxsize=32)
def prometheus_session(url: str) -> requests.Session:
    """One HTTP session (and so one connection pool) per Prometheus URL.

    Requests are sent here rather than through prometheus-api-client's custom_query, which turns
    every non-200 answer into one exception with the body as text: telling a rejected query from an
    unavailable Prometheus needs the status and Prometheus' errorType.
    No retries inside a query: the operator evaluates again every interval and counts consecutive
    errors (analysis.consecutiveErrorLimit), and retries with backoff would outlive the timeout.
    The session is shared by the worker threads; its urllib3 pool is thread-safe.
    """
    session = requests.Session()
    # A connection for each worker thread: with urllib3's default of 10, the twelve workers' answers
    # were returned to a full pool and their connections closed ("connection pool is full").
    no_retries = HTTPAdapter(
        max_retries=Retry(total=0, raise_on_status=False), pool_maxsize=SHARED_WORKERS + URGENT_WORKERS
    )
    session.mount("http://", no_retries)
    session.mount("https://", no_retries)
    return session


class _NotFound(Exception):
    """HTTP 404: the endpoint does not exist on this server (format_query before Prometheus 2.38)."""


def api_get(url: str, endpoint: str, promql: str, timeout: float) -> Any:
    """`data` of a successful answer of the Prometheus HTTP API at `url` to GET `endpoint`?query=promql.

    Raises QueryRejected for `bad_data` (Prometheus' answer to a query it cannot parse, HTTP 400),
    PrometheusUnavailable for everything else. Blocking: call it from a worker thread.
    """
    return answer_data(url, endpoint, promql, api_send(url, endpoint, promql, timeout))


# An answer longer than this (a building block of a large fleet: 20,000 series are 2-2.5 MB) is decoded
# and parsed by one worker thread at a time. Decoding holds the GIL, so threads decoding side by side
# gain nothing, and each holds its answer's Python objects (about 16 MB for 20,000 series) at once: four
# concurrent decodes left a process 89 MiB larger, serialised 43 MiB (the four results included), and
# took 6.6 s against 9.6 s (in isolation: 4 threads decoding 20 answers of 20,000 series each).
LARGE_ANSWER = 256 * 1024  # bytes
# The longest a large answer that is not urgent steps aside for urgent ones (the fast check's value
# blocks, through which a breach is seen) waiting for their turn to decode: bounded, so a stream of
# urgent answers cannot hold an evaluation's answer past its query's timeout.
URGENT_FIRST = 1.0  # seconds


class _DecodeTurns:
    """One large answer decoded at a time, the urgent ones first.

    A plain lock served its waiters in no set order: the fast check's errors answer waited behind
    evaluations' fleet answers (each 50-60 ms of decoding at 10,000 rollouts, up to 8 threads of them)
    while a breach was in it. Urgent waiters now go before the others. One that is not urgent gives
    way for URGENT_FIRST seconds; then it is overdue and goes before the urgent ones (without that, an
    urgent thread that just finished took the next turn again before a waiter woke)."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._busy = False
        self._urgent_waiting = 0
        self._overdue_waiting = 0
        self.waiting = 0  # threads waiting for a turn

    @contextlib.contextmanager
    def turn(self, urgent: bool) -> Iterator[None]:
        with self._changed:
            overdue = False
            self._urgent_waiting += urgent
            self.waiting += 1
            try:
                give_way_until = time.monotonic() + URGENT_FIRST
                while not self._may_take(urgent, overdue):
                    left = give_way_until - time.monotonic()
                    if not (urgent or overdue) and left <= 0:
                        overdue = True
                        self._overdue_waiting += 1
                        continue
                    self._changed.wait(None if urgent or overdue else left)
            finally:
                self.waiting -= 1
                self._urgent_waiting -= urgent
                self._overdue_waiting -= overdue
            self._busy = True
        try:
            yield
        finally:
            with self._changed:
                self._busy = False
                self._changed.notify_all()

    def _may_take(self, urgent: bool, overdue: bool) -> bool:
        if self._busy:
            return False
        if urgent:
            return not self._overdue_waiting
        return overdue or not self._urgent_waiting


_DECODING = _DecodeTurns()


@contextlib.contextmanager
def _decoding_alone(urgent: bool = False) -> Iterator[None]:
    """A large answer decoded and parsed by one thread at a time, `urgent` ones first (_DecodeTurns),
    with no cyclic garbage collection meanwhile (so one thread at a time turns it off and on). Its
    hundreds of thousands of objects live until the parse is done and then die by reference counting:
    a collection meanwhile walks them for nothing, with the GIL held (nothing runs on the event loop).
    At 10,000 rollouts the operator's collector paused it 13.2 s in a 120 s window, 0.4-0.7 s of each
    slow fast-check cycle; in isolation (e2e/bench/gc_decode.py), decoding and parsing 40 answers of
    20,000 series paid 0.46 s of pauses with it on and 0.08 s with it paused. A cycle made meanwhile
    is collected after, as any other."""
    with _DECODING.turn(urgent):
        enabled = gc.isenabled()
        gc.disable()
        try:
            yield
        finally:
            if enabled:
                gc.enable()


def api_send(url: str, endpoint: str, promql: str, timeout: float) -> requests.Response:
    """The HTTP answer, its body read (waiting on the network releases the GIL). Blocking."""
    try:
        # `timeout` goes to requests as connect and read timeout. A long query (a focused block names
        # hundreds of versions) goes in a POST body: URLs that long are refused by many proxies.
        session, target = prometheus_session(url), f"{url.rstrip('/')}{endpoint}"
        if len(promql) > LONG_QUERY:
            response = session.post(target, data={"query": promql}, timeout=timeout)
        else:
            response = session.get(target, params={"query": promql}, timeout=timeout)
    except requests.RequestException as error:
        raise PrometheusUnavailable(f"{url}: {_short(error)}") from error
    return response


def answer_data(url: str, endpoint: str, promql: str, response: requests.Response) -> Any:
    """`data` of a successful answer; QueryRejected or PrometheusUnavailable as api_get says."""
    try:
        body = response.json()
    except ValueError:
        body = None
    status = response.status_code
    if not isinstance(body, dict):
        if status == 404:
            raise _NotFound(endpoint)
        raise PrometheusUnavailable(
            f"{url}: HTTP {status}, not a Prometheus API answer: {response.text:.100}"
        )
    if status == 200 and body.get("status") == "success" and "data" in body:
        return body["data"]
    text = str(body.get("error") or body)
    # Only Prometheus' own errorType counts as a verdict on the query: a proxy's 400, or an execution
    # error (422 `execution`: too many samples, duplicate series) may pass with other data or load.
    if status in (400, 422) and body.get("errorType") == "bad_data":
        raise QueryRejected(_short_text(text), query=promql)
    if status == 404:
        raise _NotFound(endpoint)
    raise PrometheusUnavailable(f"{url}: HTTP {status} {body.get('errorType', '')}: {_short_text(text)}")


def _short_text(text: str) -> str:
    return text if len(text) <= _MESSAGE_LIMIT else text[: _MESSAGE_LIMIT - 3] + "..."


def _short(error: BaseException) -> str:
    return _short_text(f"{type(error).__name__}: {error}")


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


# Every (namespace, version) key an answer was parsed into, one tuple each: the answers of every block
# share them. A new answer's keys were new tuples, 20,000 of them per fleet answer at 10,000 rollouts,
# each alive from its parse on: the garbage collector walked them all as young objects (the tuples made
# at parse_vector's line were the most numerous object in the young generation after json's, sampled
# by profiling.YoungSampler at 1,000 rollouts). Now the tuple made for a lookup dies at once. Emptied
# once it holds PAIRS_KEPT (pairs of deleted rollouts would otherwise stay for ever): it fills again.
_PAIRS: dict[tuple[str, str], tuple[str, str]] = {}
PAIRS_KEPT = 100_000


def parse_vector(result: Any, labels: tuple[str, str]) -> dict[tuple[str, str], float]:
    """An instant vector's series by the values of two labels (an absent label reads "", as in a
    PromQL matcher). NaN and Inf are kept as they are, like parse_scalar. A tight loop: a building
    block holds a series per version of every rollout on its Prometheus."""
    if not isinstance(result, list) or (len(result) == 2 and not isinstance(result[0], dict)):
        raise PrometheusUnavailable(f"expected an instant vector, got: {result!r:.100}")
    namespace, version = labels
    values: dict[tuple[str, str], float] = {}
    if len(_PAIRS) >= PAIRS_KEPT:
        _PAIRS.clear()
    known = _PAIRS.setdefault  # atomic under the GIL: parses run in several worker threads
    try:
        for sample in result:
            metric = sample["metric"]
            _, text = sample["value"]
            pair = (metric.get(namespace, ""), metric.get(version, ""))
            values[known(pair, pair)] = float(text)
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
        urgent_executor: Executor | None = None,
    ) -> None:
        if not (math.isfinite(timeout) and timeout > 0):
            raise ValueError(f"timeout must be > 0 seconds, got {timeout!r}")
        self.url = url
        self.timeout = timeout
        self.reader = reader or BatchReader()
        self._executor = executor or _EXECUTOR
        # Given one executor, a test's, it runs every query.
        self._urgent_executor = urgent_executor or executor or _URGENT_EXECUTOR
        # Shapes of queries this Prometheus parsed (query_shape): 10,000 rollouts from one template
        # send 10,000 queries that differ only in a matcher's value, and need one check between them.
        self._parsed: OrderedDict[str, None] = OrderedDict()
        # Where each query's last answer spent its time (answer_times), written by the worker threads.
        self._times: dict[str, AnswerTimes] = {}
        self._times_lock = threading.Lock()

    async def scalar(self, promql: str) -> float | None:
        """The query's single value, None for an empty result. Raises QueryRejected when Prometheus
        refuses the query, PrometheusUnavailable for any other failure."""
        return await self._run(promql, parse_scalar)

    async def block(
        self,
        block: Block,
        max_age: float | None = None,
        keys: frozenset[Pair] | None = None,
        stale_age: float | None = None,
        after: float | None = None,
        urgent: bool = False,
    ) -> BlockValues:
        """A building block's values by (namespace, version), shared through the reader; an answer
        up to `max_age` seconds old will do (default: the reader's ttl), one up to `stale_age` while
        a fresh one is fetched (BatchReader.read). With `keys`, only those pairs are needed
        (Block.focused): what a window shorter than the gate's asks of Prometheus, always fresh.
        With `after` (time.monotonic()), only an answer of a query sent at or after it. A whole
        block's query waits for the `urgent` ones in flight unless it is one (BatchReader.read), and
        an urgent answer is decoded before the others waiting (_DecodeTurns), and each has workers of
        its own (_URGENT_EXECUTOR). A read `after` a moment (a confirm, the evaluation a breach woke)
        is urgent too: it is on a breach's way to the route."""
        parse = functools.partial(parse_vector, labels=(block.namespace_label, block.version_label))
        urgent = urgent or after is not None
        try:
            if keys is not None and len(keys) <= FOCUS_LIMIT:

                async def focused(pairs: frozenset[Pair], urgent: bool) -> BlockValues:
                    try:
                        return await self._run(block.focused(pairs), parse, urgent)
                    except QueryRejected as e:  # named by the block's query, as the spec's gate knows it
                        raise QueryRejected(e.reason, query=block.promql) from e

                return await self.reader.read_focused(
                    block, keys, focused, self.timeout, max_age=max_age, after=after, urgent=urgent
                )
            return await self.reader.read(
                block,
                lambda: self._run(block.promql, parse, urgent),
                self.timeout,
                max_age,
                stale_age,
                after,
                urgent=urgent,
            )
        except TimeoutError:
            raise PrometheusUnavailable(f"{self.url}: no answer within {self.timeout:g}s") from None

    def answered_in(self, promql: str) -> float | None:
        """Seconds the last answer to this query took from its sending until its body was read:
        Prometheus' part (its queue, evaluation and encoding, the transfer), without the wait for a
        worker thread or for a turn to decode it here. None when no answer came yet."""
        times = self._times.get(promql)
        return None if times is None else times.prometheus

    def answer_times(self, promql: str) -> AnswerTimes | None:
        """Where the last answer to this query spent its time here and at Prometheus; None when no
        answer was decoded yet."""
        return self._times.get(promql)

    async def check(self, promql: str) -> str | None:
        """None when Prometheus parses the query, Prometheus' error text when it rejects it; raises
        PrometheusUnavailable when it cannot tell. The query is parsed, not run (format_query), on
        the very parser that will run it; a Prometheus older than 2.38 has no format_query and runs
        the query once instead, which costs what one evaluation costs. A query whose shape parsed
        before is not sent again."""
        shape = query_shape(promql)
        if shape in self._parsed:
            self._parsed.move_to_end(shape)
            return None
        reason = await self._in_thread(functools.partial(self._check, promql))
        if reason is None:
            self._parsed[shape] = None
            if len(self._parsed) > PARSED_SHAPES:
                self._parsed.popitem(last=False)
        return reason

    async def _run(self, promql: str, parse: Callable[[Any], T], urgent: bool = False) -> T:
        call = functools.partial(self._query, promql, parse, urgent, time.monotonic())
        return await self._in_thread(call, urgent)

    async def _in_thread(self, call: Callable[[], T], urgent: bool = False) -> T:
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self._urgent_executor if urgent else self._executor, call)
        started = time.monotonic()
        try:
            return await within(future, self.timeout)
        except TimeoutError:
            metrics.QUERY_ERRORS.labels(prometheus=self.url, kind="unavailable").inc()
            raise PrometheusUnavailable(f"{self.url}: no answer within {self.timeout:g}s") from None
        except PrometheusUnavailable:
            metrics.QUERY_ERRORS.labels(prometheus=self.url, kind="unavailable").inc()
            raise
        except QueryRejected:
            metrics.QUERY_ERRORS.labels(prometheus=self.url, kind="rejected").inc()
            raise
        finally:
            metrics.QUERY_SECONDS.labels(prometheus=self.url).observe(time.monotonic() - started)

    def _query(
        self, promql: str, parse: Callable[[Any], T], urgent: bool = False, submitted: float | None = None
    ) -> T:
        """Runs in a worker thread, parsing included: a block's thousands of series stay off the loop.
        A large `urgent` answer is decoded before the others waiting (_DecodeTurns). `submitted`: the
        time.monotonic() moment it was handed to the executor (answer_times)."""
        sent = time.monotonic()
        metrics.PROMETHEUS_QUEUE_SECONDS.labels(lane="urgent" if urgent else "shared").observe(
            0.0 if submitted is None else sent - submitted
        )
        response = api_send(self.url, "/api/v1/query", promql, self.timeout)
        read = time.monotonic()
        large = len(response.content) > LARGE_ANSWER
        with _decoding_alone(urgent) if large else contextlib.nullcontext():
            decoding = time.monotonic()
            try:
                data = answer_data(self.url, "/api/v1/query", promql, response)
            except _NotFound:
                raise PrometheusUnavailable(f"{self.url}: HTTP 404: no Prometheus query API here") from None
            if not isinstance(data, dict) or "result" not in data:
                raise PrometheusUnavailable(f"{self.url}: unexpected answer: {data!r:.100}")
            parsed = parse(data["result"])
            del data  # freed here, while the collector is still paused, not after it walked it
        done = time.monotonic()
        times = AnswerTimes(sent - (submitted or sent), read - sent, decoding - read, done - decoding, done)
        with self._times_lock:
            if len(self._times) >= ANSWER_TIMES and promql not in self._times:
                self._times.clear()  # focused queries differ by their pairs: forget, do not grow
            self._times[promql] = times
        return parsed

    def _check(self, promql: str) -> str | None:
        try:
            try:
                api_get(self.url, "/api/v1/format_query", promql, self.timeout)
            except _NotFound:
                api_get(self.url, "/api/v1/query", promql, self.timeout)
        except QueryRejected as rejected:
            return rejected.reason
        except _NotFound:
            raise PrometheusUnavailable(f"{self.url}: HTTP 404: no Prometheus query API here") from None
        return None


ANSWER_TIMES = 1024  # queries whose last answer's times are remembered (answer_times)
PARSED_SHAPES = 4096  # distinct query shapes remembered per Prometheus: a few per template and window

# A non-empty value of an equality matcher (`="..."`, `!="..."`): any such string parses alike, so it
# is replaced by one placeholder. An empty one stays (a selector of only empty matchers is refused), and
# a regex matcher's value (`=~`, `!~`) stays: Prometheus parses it as a regex.
_EQUALITY_VALUE = re.compile(r'(?<![=!~<>])(=|!=)(\s*)"(?:[^"\\]|\\.)+"')


def query_shape(promql: str) -> str:
    """The query with its equality matchers' non-empty values replaced by one placeholder: two
    queries of one shape parse alike."""
    return _EQUALITY_VALUE.sub(r'\1\2"_"', promql)


async def _gather_all(awaitables: Iterable[Awaitable[T]]) -> list[T]:
    """Like gather, but lets every query finish before raising, so no task is left running. A rejected
    query is raised before any other failure: it is the one that will not pass by itself."""
    results = await asyncio.gather(*awaitables, return_exceptions=True)
    errors = [item for item in results if isinstance(item, BaseException)]
    rejected = [e for e in errors if isinstance(e, QueryRejected)]
    if rejected or errors:
        raise (rejected or errors)[0]
    return results  # type: ignore[return-value]  # no exception left in the list


@dataclass(frozen=True)
class _Plan:
    """How one gate is measured: from building blocks (template) or by its own queries (custom)."""

    evidence: str  # the candidate value query, per rollout, as a human would paste it
    read: TemplateRead | None = None
    candidate: GateQueries | None = None
    legacy: GateQueries | None = None  # custom gates with `compare` only
    # shadowAgreement: the noise floor (legacy vs legacy), always measured as its legacy side, so the
    # evidence carries both rates and both sample counts whether or not the gate compares them.
    floor: TemplateRead | None = None

    @property
    def blocks(self) -> tuple[Block, ...]:
        reads = [r for r in (self.read, self.floor) if r is not None]
        return tuple(dict.fromkeys(b for r in reads for b in r.blocks))


def _plan(gate: Gate, spec: AgentRolloutSpec, namespace: str, metrics: MetricNames) -> _Plan:
    evidence = gate_queries(gate, spec, namespace, "candidate")
    if gate.template is not None:
        read = template_read(gate.template, metrics, window=gate.window, quantile=gate.quantile)
        floor = None
        if gate.template is Template.SHADOW_AGREEMENT:
            floor = noise_floor_read(metrics, window=gate.window)
        return _Plan(evidence.value, read=read, floor=floor)
    legacy = gate_queries(gate, spec, namespace, "legacy") if gate.compare else None
    return _Plan(evidence.value, candidate=evidence, legacy=legacy)


def _gate_fields(i: int, gate: Gate, plan: _Plan) -> dict[str, str]:
    """Each query the plan sends, with the spec field it comes from."""
    path = f"spec.analysis.gates[{i}]"
    if plan.read is not None:
        return {b.promql: f"{path}.template" for b in plan.blocks}
    fields: dict[str, str] = {}
    for side in (plan.candidate, plan.legacy):
        if side is not None:
            fields.setdefault(side.value, f"{path}.query")
            if side.samples:
                fields.setdefault(side.samples, f"{path}.samplesQuery")
    return fields


def _name_the_gate(
    rejected: QueryRejected, gates: list[Gate], plans: list[_Plan | TemplateError]
) -> QueryRejected:
    for i, (gate, plan) in enumerate(zip(gates, plans, strict=True)):
        if isinstance(plan, TemplateError):
            continue
        field = _gate_fields(i, gate, plan).get(rejected.query)
        if field is not None:
            return rejected.for_gate(gate.name, field)
    return rejected


def evaluation_ages(analysis: Analysis) -> tuple[float, float]:
    """How old a building block's answer an evaluation uses, in seconds: up to the first without
    waiting; up to the second at once while a fresh one is fetched, for gates whose window is whole
    that long back (planner.steady_gates). An evaluation every interval is as right with a block a
    few seconds old: breaches between evaluations are the fast check's, on fresh answers."""
    interval = duration_seconds(analysis.interval)
    return interval / 6, interval / 3


async def measure_gates(
    spec: AgentRolloutSpec,
    namespace: str,
    gateway: MetricsSource,
    clamped: Collection[str] = (),
    steady: Collection[str] = (),
    fresh: Mapping[str, float] = {},
) -> tuple[GateResult, ...]:
    """Measure and evaluate every gate. Raises QueryRejected (naming the first gate whose query it is)
    when Prometheus refuses a query, else PrometheusUnavailable if any query it needs fails.

    Template gates take their two series out of shared building blocks; custom gates send their own
    queries, identical ones once. Everything is awaited concurrently. A gate that cannot be rendered
    is Inconclusive with the reason, not an error for the others. The blocks of `clamped` gates (a
    window cut short by a young step, planner.gate_windows) are read focused on this rollout's series:
    few rollouts share such a window, and the whole fleet's series of it are not worth a query.
    The blocks only `steady` gates read (their window was whole evaluation_ages' second figure ago, so
    an answer that old holds no sample from before the step or the gate's last failure) are taken
    stale rather than waited for (BatchReader.read).
    The blocks of `fresh` gates (gate -> a time.monotonic() moment: a breach the fast check confirmed
    then, sentinel.fresh_reads) are read focused on this rollout's series from queries sent at or after
    it: the fleet's answer in the cache may predate the breach, the fast check's own exact read does not.
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

    legacy_version, candidate_version = version_values(spec)
    needed: dict[Block, set[Pair]] = {}  # ordered: each block with the pairs any gate reads it for
    whole: set[Block] = set()  # read by a gate whose window is not clamped
    stale_ok: dict[Block, bool] = {}  # only steady gates read it
    after: dict[Block, float] = {}  # read from queries sent at or after this (`fresh`)
    queries: dict[str, None] = {}
    for gate, plan in zip(analysis.gates, plans, strict=True):
        if isinstance(plan, TemplateError):
            continue
        if plan.read is not None:
            pairs = {(namespace, candidate_version)}
            if gate.compare is not None and plan.floor is None:
                pairs.add((namespace, legacy_version))
            for block in plan.blocks:
                needed.setdefault(block, set()).update(pairs)
                if gate.name in fresh:
                    after[block] = max(after.get(block, fresh[gate.name]), fresh[gate.name])
                steady_read = gate.name in steady and gate.name not in clamped
                stale_ok[block] = stale_ok.get(block, True) and steady_read
                if gate.name not in clamped:
                    whole.add(block)
        for side in (plan.candidate, plan.legacy):
            if side is not None:
                queries.update(dict.fromkeys(q for q in (side.value, side.samples) if q))
    # Each block with the pairs it is read for, None when it is read whole; a `fresh` one is read for
    # this rollout's series only: a focused query, or the fast check's own answer.
    blocks = {b: None if b in whole and b not in after else frozenset(p) for b, p in needed.items()}
    stale_ok.update(dict.fromkeys(after, False))
    # No older than the reader allows either (BatchReader.longest).
    max_age, stale_age = evaluation_ages(analysis)
    try:
        answers = await _gather_all(
            [
                *(
                    gateway.block(
                        b,
                        max_age=max_age,
                        keys=keys,
                        stale_age=stale_age if stale_ok[b] else None,
                        after=after.get(b),
                    )
                    for b, keys in blocks.items()
                ),
                *(gateway.scalar(q) for q in queries),
            ]
        )
    except QueryRejected as rejected:
        raise _name_the_gate(rejected, analysis.gates, plans) from rejected
    vectors = {b: cast(BlockValues, a) for b, a in zip(blocks, answers[: len(blocks)], strict=True)}
    values = {q: cast(float | None, a) for q, a in zip(queries, answers[len(blocks) :], strict=True)}

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
            if plan.floor is not None:
                legacy_value, legacy_samples = plan.floor.measure(vectors, namespace, candidate_version)
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


async def shadow_pairs(
    spec: AgentRolloutSpec, namespace: str, seconds: float, gateway: MetricsSource
) -> int | None:
    """Compared pairs the shadow comparator counted over the last `seconds` (since the step began)."""
    if seconds < 1:
        return 0
    value = await gateway.scalar(shadow_pairs_query(spec, namespace, math.floor(seconds)))
    if value is None or not math.isfinite(value):
        return None
    return max(0, round(value))


async def check_queries(spec: AgentRolloutSpec, namespace: str, gateway: QueryChecker) -> list[SpecProblem]:
    """Every query the spec will send, as it will send it, parsed by Prometheus: a problem naming the
    field (spec.analysis.gates[2].query) for each one it rejects or that cannot be rendered.

    Raises PrometheusUnavailable when Prometheus cannot tell; nothing is judged then. Meant to run
    before the first step, so that a rollout whose candidate could never be measured moves no traffic.
    Pure but for `gateway.check`; distinct queries are checked once and concurrently.
    """
    analysis = spec.analysis
    if analysis is None:
        return []
    problems: list[SpecProblem] = []
    fields: dict[str, list[tuple[str, str | None]]] = {}  # query -> (field, gate name)
    for i, gate in enumerate(analysis.gates):
        try:
            plan = _plan(gate, spec, namespace, analysis.metrics)
        except TemplateError as error:
            field = "query" if gate.template is None else "template"
            problems.append(SpecProblem(f"spec.analysis.gates[{i}].{field}", f"gate {gate.name!r}: {error}"))
            continue
        queries = _gate_fields(i, gate, plan)
        if plan.read is not None:
            # The per-rollout evidence query too: it is what a human pastes into Prometheus.
            queries.setdefault(plan.evidence, f"spec.analysis.gates[{i}].template")
        for query, field in queries.items():
            fields.setdefault(query, []).append((field, gate.name))
    for j, step in enumerate(spec.steps):
        if step.pause is not None and step.pause.min_requests:
            count = candidate_requests_query(spec, namespace, 60)
            fields.setdefault(count, []).append((f"spec.steps[{j}].pause.minRequests", None))
            break  # one window stands for all: only its length differs between steps

    verdicts = await _gather_all(gateway.check(q) for q in fields)
    rejected: dict[str, str] = {}  # field -> Prometheus' reason; the first rejected query per field
    names: dict[str, str | None] = {}
    for query, reason in zip(fields, verdicts, strict=True):
        if reason is None:
            continue
        for field, name in fields[query]:
            rejected.setdefault(field, reason)
            names[field] = name
    for field, reason in rejected.items():
        whose = f"gate {names[field]!r}: " if names[field] else ""
        problems.append(SpecProblem(field, f"{whose}Prometheus rejected the query: {reason}"))
    return sorted(problems, key=lambda p: _field_order(spec, p.field))


def _field_order(spec: AgentRolloutSpec, field: str) -> tuple[int, int, str]:
    """Gates in spec order, then steps: the order a human reads the spec in."""
    match = re.match(r"spec\.(analysis\.gates|steps)\[(\d+)\]", field)
    if match is None:
        return (2, 0, field)
    return (0 if match.group(1) == "analysis.gates" else 1, int(match.group(2)), field)
