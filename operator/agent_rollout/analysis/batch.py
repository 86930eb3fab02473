"""Shared reads of building-block vectors: one query per block and Prometheus, whatever the rollout count.

Every rollout that reads the same Prometheus with the same metric names, window (and quantile) needs
the same `sum by (namespace, version) (...)` vectors; each rollout picks its own two series out of
them. A BatchReader (one per Prometheus URL) makes that one HTTP query per block:

- a short TTL cache: an answer is reused for `ttl` seconds after its query was sent, so the values a
  gate judges are at most `ttl` (plus one query's duration) older than a per-rollout query's would
  be, and breach-to-rollback grows by at most `ttl`. ttl=0 shares only queries in flight;
- single flight: concurrent reads of one block share one in-flight query; a failed query is not
  cached, and raises (PrometheusUnavailable) for every rollout that waited on it, and only for them.

A block a few rollouts need (a window clamped to a young step) is read focused (`read_focused`): only
the series of the namespaces and versions that need it, one query for every reader that asks within
GATHER seconds, answers kept like the block's and reused by any reader whose pairs they cover.

A reader that must see what Prometheus holds now (`after`: the fast check confirming a suspicion, and
the evaluation it wakes) takes only answers of queries sent at or after that moment: never the cache
of an earlier query, nor a query in flight since before it (which may predate the breach it is to see).

Whole-fleet queries may go in two lanes (`urgent`, with a positive `quiet_wait`): the fast check's
value blocks (a breach is seen through them) are sent at once; every other one (the counts, the
evaluations' blocks) waits, at most quiet_wait, until no urgent query is in flight. On one Prometheus
a query shares its CPU with the others in flight: at 10,000 rollouts on 2 cores the latency shortfall
took a median 0.37 s beside the errors block alone, 0.54 s with every request's count too and 0.66 s
(up to 1.36 s) with the evaluations' p95 quantile as well (Prometheus' query log of run R,
2026-11-28). The lanes shortened the shortfall, but not the breaches: in six runs of the operator at
10,000 rollouts, breach -> weight 0 p99 was 1.7 / 4.8 / 1.9 s (errors) and 2.5 / 6.1 / 5.3 s
(latency) with them, 1.2 / 1.8 / 7.3 s and 1.1 / 2.5 / 2.1 s without, and the slow breaches waited
for sweeps seconds apart, not for Prometheus. Off by default (QUIET_WAIT: one mechanism less);
AGENT_ROLLOUT_LANE_WAIT turns them on.

The reader runs on the event loop and never blocks it: the query itself is the caller's `fetch`
(PrometheusGateway runs it in its thread pool, bounded by its timeout), and each caller waits at
most its own timeout, without cancelling a query others wait on.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from agent_rollout.analysis.templates import Block, BlockValues, Pair

T = TypeVar("T")

DEFAULT_TTL = 1.0  # seconds
# How long a focused read waits for others of the same block before its query is sent: the reconciles
# a sweep wakes, and those the workers run side by side, ask within milliseconds of each other.
GATHER = 0.02  # seconds
# The longest a query that is not urgent waits for the urgent ones in flight to answer (bounded: a
# Prometheus that never stops answering the fast check must not starve the evaluations, nor a stuck
# query). 0: no lanes, every query is sent as it is asked (the module's docstring says why).
QUIET_WAIT = 0.0  # seconds


@dataclass
class _Entry:
    sent: float  # when its query was sent: the answer is at least this old
    values: BlockValues


@dataclass
class _Focused:
    """One focused query of a block: gathering readers (not sent), in flight, or answered."""

    keys: set[Pair]  # the pairs it asks for: a reader of any of them may use its answer
    task: asyncio.Task[BlockValues]
    sent: float | None = None  # None while it gathers readers
    urgent: bool = False  # an urgent reader gathered into it (a breach is seen through it)
    values: BlockValues | None = None  # once answered


async def within(future: Awaitable[T], timeout: float) -> T:
    """`await future`, raising TimeoutError after `timeout` seconds, as asyncio.wait_for does in two
    turns of the event loop fewer: wait_for (3.11) waits on a future of its own that a done callback of
    the awaited one sets, a turn each. On a busy loop each turn is a wait: at 10,000 rollouts an
    answer took 1.06 s from its worker thread to the fast check, through three such layers."""
    async with asyncio.timeout(timeout):
        return await future


def retrieve_failure(task: asyncio.Task[BlockValues]) -> None:
    """A done callback: a failed query nobody waits for any more is not logged as never retrieved."""
    if not task.cancelled():
        task.exception()


class BatchReader:
    """Building-block vectors of one Prometheus, shared by every rollout that reads it."""

    def __init__(
        self,
        ttl: float = DEFAULT_TTL,
        clock: Callable[[], float] = time.monotonic,
        longest: float | None = None,
        gather: float = GATHER,
        quiet_wait: float = QUIET_WAIT,
    ) -> None:
        if not ttl >= 0:
            raise ValueError(f"ttl must be >= 0 seconds, got {ttl!r}")
        self.ttl = ttl
        self.gather = gather
        # The oldest answer a reader that asks for older ones (read's max_age) may get; by default
        # none older than ttl.
        self.longest = ttl if longest is None else max(ttl, longest)
        self._clock = clock
        self._cache: dict[Block, _Entry] = {}
        self._in_flight: dict[Block, asyncio.Task[BlockValues]] = {}
        self._in_flight_sent: dict[Block, float] = {}  # when each query in flight was sent (`after`)
        self._keep = ttl  # how long answers are kept: the oldest any reader accepts (max_age, stale_age)
        self._focused: dict[Block, list[_Focused]] = {}  # gathering, in flight and answered, newest last
        self.fetches = 0  # queries started, for tests and benchmarks
        self.quiet_wait = quiet_wait
        self._urgent: set[asyncio.Task[BlockValues]] = set()  # urgent queries in flight
        # Queries waiting for the urgent ones (QUIET_WAIT), each with what sends it now: an urgent
        # reader that joins it.
        self._waiting: dict[Block, tuple[asyncio.Task[BlockValues], asyncio.Future[None]]] = {}

    async def read(
        self,
        block: Block,
        fetch: Callable[[], Awaitable[BlockValues]],
        timeout: float,
        max_age: float | None = None,
        stale_age: float | None = None,
        after: float | None = None,
        urgent: bool = False,
    ) -> BlockValues:
        """The block's values, from the cache, from a query in flight, or from a new query `fetch()`.
        `max_age` (default: the reader's ttl) is how old an answer this reader accepts: the fast
        check wants its second-old answers, an evaluation at a 30 s interval is as right with older
        ones, and at 10,000 rollouts each answer a query saves is a vector of 20,000 series.

        With `stale_age`, an answer older than `max_age` but younger than `stale_age` (at most twice
        the reader's longest) is returned at once, while a fresh one is fetched for the readers after
        it (stale while revalidate): Prometheus is asked exactly as often, and nobody waits. At 10,000
        rollouts the latency histogram's query took about 3 s, and an evaluation that found the last
        answer too old waited for the next one, a breach's own among them.

        With `after` (the reader's clock), only an answer of a query sent at or after it will do, and
        none is taken stale.

        An `urgent` reader's query is sent at once (and so is a waiting one it joins); any other waits
        until no urgent query is in flight, at most the reader's quiet_wait (the module's docstring).

        Raises what the query raised, or TimeoutError after `timeout` seconds of waiting.
        """
        max_age = self.ttl if max_age is None else min(max_age, self.longest)
        stale = max_age if stale_age is None else max(max_age, min(stale_age, 2 * self.longest))
        self._keep = max(self._keep, stale)
        entry = self._cache.get(block)
        age = math.inf if entry is None else self._clock() - entry.sent
        if entry is not None and (age < max_age if after is None else entry.sent >= after):
            return entry.values
        task = self._in_flight.get(block)
        if (
            task is None
            or task.get_loop() is not asyncio.get_running_loop()
            or (after is not None and self._in_flight_sent[block] < after)
        ):
            task = self._start(block, fetch, urgent)
        elif urgent and task not in self._urgent:
            if (waiting := self._lane(block, task)) is not None:
                waiting.set_result(None)  # an urgent reader joined it: sent now
            self._mark_urgent(task)  # the queries sent after it wait for it too
        if entry is not None and age < stale and after is None:
            return entry.values  # the query just started, or in flight, answers the readers after it
        # shield: a caller that times out or is cancelled must not cancel the query others wait on.
        # The timeout is Prometheus' to answer in: a query waiting in the lane has not been sent yet.
        lane = self.quiet_wait if self._lane(block, task) is not None else 0.0
        return await within(asyncio.shield(task), timeout + lane)

    async def read_focused(
        self,
        block: Block,
        keys: frozenset[Pair],
        fetch: Callable[[frozenset[Pair], bool], Awaitable[BlockValues]],
        timeout: float,
        max_age: float | None = None,
        after: float | None = None,
        urgent: bool = False,
    ) -> BlockValues:
        """The block's values for at least the pairs `keys`: from an answer of the whole block or of a
        focused query that covers them, from a query in flight that does, or from a new query
        `fetch(pairs, urgent)` for these pairs and those of every other reader within GATHER seconds,
        urgent when any of them is. With `after`, only from queries sent at or after it (read)."""
        max_age = self.ttl if max_age is None else min(max_age, self.longest)
        self._keep = max(self._keep, max_age)
        now = self._clock()

        def usable(sent: float) -> bool:
            return now - sent < max_age if after is None else sent >= after

        whole = self._cache.get(block)
        if whole is not None and usable(whole.sent):
            return whole.values
        loop = asyncio.get_running_loop()
        focused = [
            q for q in self._focused.get(block, ()) if q.values is not None or q.task.get_loop() is loop
        ]
        # An answer in hand before any query in flight: at 10,000 rollouts the evaluation a confirmed
        # latency breach woke joined the fleet's quantile in flight (0.7 s) rather than take the
        # confirm's answer, and the rollback waited a second for it.
        for query in reversed(focused):  # newest first
            values, sent = query.values, query.sent
            if values is not None and sent is not None and keys <= query.keys and usable(sent):
                return values
        flying = self._in_flight.get(block)
        if (
            flying is not None
            and flying.get_loop() is loop
            and (after is None or self._in_flight_sent[block] >= after)
            # Not one waiting in the lane: a focused query is small, and sent at once (a confirm
            # joining the evaluations' fleet quantile waited for the lane, then for the fleet).
            and self._lane(block, flying) is None
        ):
            return await within(asyncio.shield(flying), timeout)
        for query in reversed(focused):  # newest first: a query in flight that covers them
            if query.sent is None or query.values is not None or not keys <= query.keys:
                continue
            if after is None or query.sent >= after:
                return await within(asyncio.shield(query.task), timeout)
        gathering = focused[-1] if focused and focused[-1].sent is None else None
        if gathering is None:
            task = loop.create_task(
                self._gather_and_query(block, fetch), name=f"prometheus focused {block.promql}"
            )
            task.add_done_callback(
                retrieve_failure
            )  # waiters that gave up must not leave it "never retrieved"
            gathering = _Focused(set(keys), task)
            focused.append(gathering)
        else:
            gathering.keys |= keys
        gathering.urgent |= urgent
        self._focused[block] = focused
        return await within(asyncio.shield(gathering.task), timeout)

    async def _gather_and_query(
        self, block: Block, fetch: Callable[[frozenset[Pair], bool], Awaitable[BlockValues]]
    ) -> BlockValues:
        await asyncio.sleep(self.gather)
        query = next(q for q in self._focused[block] if q.task is asyncio.current_task())
        query.sent = self._clock()
        self.fetches += 1
        try:
            query.values = await fetch(frozenset(query.keys), query.urgent)
            return query.values
        finally:
            now = self._clock()
            for each in list(self._focused):  # blocks nobody reads any more go with their answers
                kept = [
                    q
                    for q in self._focused[each]
                    if (q is not query or query.values is not None)  # a failed query is not kept
                    and (q.sent is None or q.values is None or now - q.sent < self._keep)
                ]
                if kept:
                    self._focused[each] = kept
                else:
                    del self._focused[each]

    def _start(
        self, block: Block, fetch: Callable[[], Awaitable[BlockValues]], urgent: bool = False
    ) -> asyncio.Task[BlockValues]:
        loop = asyncio.get_running_loop()
        sent = self._clock()  # from when the query is sent: the answer is that old at least
        self.fetches += 1
        # Held in the lane only while an urgent query is in flight: else it is sent as it is asked.
        held = not urgent and bool(self._urgent_in_flight(loop))
        waiting = loop.create_future() if held else None

        async def query() -> BlockValues:
            nonlocal sent
            if waiting is not None:
                await self._quiet(waiting)
                sent = self._clock()
                if self._in_flight.get(block) is task:
                    self._in_flight_sent[block] = sent
                if self._waiting.get(block, (None,))[0] is task:
                    del self._waiting[block]
            return await fetch()

        def done(task: asyncio.Task[BlockValues]) -> None:
            if self._in_flight.get(block) is task:
                del self._in_flight[block], self._in_flight_sent[block]
            if self._waiting.get(block, (None,))[0] is task:
                del self._waiting[block]  # cancelled while it waited
            if task.cancelled() or task.exception() is not None:  # retrieved, so never "unretrieved"
                return
            now = self._clock()
            # Blocks nobody reads any more (a deleted rollout's window) go once no reader accepts them.
            for stale in [b for b, e in self._cache.items() if now - e.sent >= self._keep]:
                del self._cache[stale]
            newer = self._cache.get(block)  # a query sent after this one (`after`) answered first
            if now - sent < self._keep and (newer is None or newer.sent < sent):
                self._cache[block] = _Entry(sent, task.result())

        task = loop.create_task(query(), name=f"prometheus block {block.promql}")
        task.add_done_callback(done)
        # A query still waiting is sent later than any reader that joins it meanwhile (`after`).
        self._in_flight[block], self._in_flight_sent[block] = task, math.inf if held else sent
        if waiting is not None:
            self._waiting[block] = (task, waiting)
        elif urgent:
            self._mark_urgent(task)
        return task

    def _mark_urgent(self, task: asyncio.Task[BlockValues]) -> None:
        self._urgent.add(task)
        task.add_done_callback(self._urgent.discard)

    def _urgent_in_flight(self, loop: asyncio.AbstractEventLoop) -> list[asyncio.Task[BlockValues]]:
        return [t for t in self._urgent if not t.done() and t.get_loop() is loop]

    def _lane(self, block: Block, task: asyncio.Task[BlockValues]) -> asyncio.Future[None] | None:
        """What sends `task` at once if it is still waiting in the lane (QUIET_WAIT), else None."""
        waiting = self._waiting.get(block)
        return waiting[1] if waiting is not None and waiting[0] is task and not waiting[1].done() else None

    async def _quiet(self, joined: asyncio.Future[None]) -> None:
        """Until no urgent query of this loop is in flight, an urgent reader joins (`joined`), or
        quiet_wait has passed."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.quiet_wait
        while not joined.done() and (left := deadline - loop.time()) > 0:
            flying = self._urgent_in_flight(loop)
            if not flying:
                return
            watched: list[asyncio.Future[Any]] = [*flying, joined]
            await asyncio.wait(watched, timeout=left, return_when=asyncio.FIRST_COMPLETED)
