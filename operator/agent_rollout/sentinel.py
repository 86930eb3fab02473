"""The fast check: every live rollout's hard bounds, about once a second, whatever its interval.

Steps advance on the analysis interval, but a breach must not wait for it: at a 30s interval a
breach used to take 0..30 s to reach the route. One process-wide loop reads the building blocks every
rollout already shares (analysis.batch: one query per block per TTL, not per rollout), computes each
watched rollout's gate values in Python, and wakes the rollouts whose `min`/`max` is breached. The
woken rollout's reconcile evaluates its gates on the same blocks and decides with every rule of the
planner (failureLimit, windows, dry runs), so the sentinel never decides anything itself.

A latency quantile's `max` is read from one bucket rather than from every one (_bucket_read): a share
of requests at or under the highest bucket bound under the max that reaches the quantile rules a
breach out, and Prometheus answers only the versions whose share falls short (a few series rather
than the fleet's). Only those rollouts have their exact quantile asked (_confirm), focused on them and
sent after the suspicion, never an answer of a query sent before it. A breach it shows wakes the
rollout, whose evaluation reads that gate from the same answer (fresh_reads), not from the fleet's
cached one.

Which gates are watched is the planner's rule (planner.fast_gates); what they are measured over is
too (planner.analysis_windows: the analysis and two status fields). The cost per pass is one shared
read per block and a few microseconds of arithmetic per watched gate; the loop yields to the event
loop between slices, so it never blocks it.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import cast

from agent_rollout import api, heap, metrics
from agent_rollout.analysis.batch import retrieve_failure
from agent_rollout.analysis.gates import BoundCheck, hard_bound_check, may_breach_quantile_max
from agent_rollout.analysis.prometheus import MetricsSource, PrometheusError
from agent_rollout.analysis.templates import (
    Block,
    BlockValues,
    Pair,
    TemplateError,
    TemplateRead,
    bucket_bounds_block,
    bucket_under,
    quantile_bucket_read,
    template_read,
    version_values,
)
from agent_rollout.planner import analysis_windows, fast_gates

log = logging.getLogger(__name__)

PERIOD = 1.0  # seconds between passes
# Seconds of measuring between two yields to the event loop. Counted in rollouts (500), a read of
# 10,000 rollouts yielded 20 times to a loop busy with 330 reconciles a second, and measuring one read
# took up to 2 s of wall time there (p99 <= 1 s): a breach waited behind every one of those turns.
SLICE = 0.02

Key = tuple[str, str]


@dataclass(frozen=True, slots=True)
class Watched:
    """What the sentinel needs of one rollout, refreshed after each of its reconciles: not the parsed
    spec (about 12 KiB a rollout, most of the operator's memory per rollout once it was measured),
    only the analysis (one object shared by every rollout with the same one) and two status fields."""

    key: Key
    analysis: api.Analysis
    pair: Pair  # (namespace, the candidate's value of the version label): its series in each block
    step_started_at: str | None  # what the gates' windows depend on (planner.gate_windows)
    last_failure_at: dict[str, str]
    gates: tuple[str, ...]
    source: MetricsSource


# Of the time between two sweeps, at most this share goes to sweeping on the event loop: with 10,000
# rollouts a sweep measures 10,000 rollouts, and the fast check must not starve the reconciles it wakes.
MAX_BUSY_SHARE = 0.25

# A cycle (one sweep's start to the next's) longer than this many periods is logged with where its time
# went: the sweep's wait for its blocks, its CPU on the event loop (next_pause stretches the pause by
# it), the collector's pauses, or a loop too busy to resume it when its pause ended. At 10,000 rollouts
# a latency breach waited 3.7 s between two sweeps while the histogram said nothing of that phase.
SLOW_CYCLE = 2.0

_CHUNK = 200  # rollouts measured between two looks at the clock (SLICE)


# A block whose query took Prometheus longer than the period (its HTTP round trip, answer_times: not the
# wait here for a thread or a turn to decode it) was waiting on a busy Prometheus: it is not asked
# again for half as long, so the fast check keeps Prometheus busy with it at most two thirds of the
# time. With the whole operator at 10,000 rollouts on 2 cores, back-to-back queries of the latency
# histogram (~3 s each there) kept Prometheus saturated, and every evaluation waited on it.
MAX_WAIT_SHARE = 2 / 3

# A read is measured without waiting for a block that is resting or still in flight from an earlier
# sweep, on that block's last answer, if one of its other blocks brought news and that answer is at
# most this old. An error-rate breach shows in its errors block: its denominator (every request
# of the fleet, at 10,000 rollouts the costlier query, resting between answers) changes slowly, and
# waiting for it kept a breach unseen for its whole cycle (p50 4.7 s, p99 12 s there). The bound is
# the age a woken evaluation of a steady gate accepts at the defaults (twice
# AGENT_ROLLOUT_EVALUATION_MAX_AGE), so the evaluation it wakes judges the same answers at once.
MAX_KEPT_AGE = 10.0  # seconds

# A count block (a read's samples or denominator, no read's value: every request of the fleet) is asked
# at most this often while its last answer is kept; the reads between take that answer. Traffic moves
# slowly against a window of minutes, and a bound breach shows in the value (errors, flagged answers,
# the latency histogram): asked every period, every request's count took 27-32% of Prometheus' query
# time at 10,000 rollouts, on the 2 cores the errors block and the apiserver share with it. A breach
# carried by the count alone (accuracy falling as wrong answers add to the total) is seen up to this
# much later. Half the evaluation's max age by default (handlers), so the evaluation a breach wakes
# takes that answer rather than asking again.
COUNT_EVERY = 2.5  # seconds


def rest_after(period: float, took: float) -> float:
    """Seconds a block whose query `took` that long is not asked again (MAX_WAIT_SHARE)."""
    return took * (1 - MAX_WAIT_SHARE) / MAX_WAIT_SHARE if took > period else 0.0


def next_pause(period: float, took: float, busy: float) -> float:
    """Seconds to wait before the next sweep: the period, stretched when the sweep's own CPU time on
    the event loop (`busy`) would exceed MAX_BUSY_SHARE of a cycle. A sweep waits at most a period
    for its blocks (a slower one is left in flight for the next sweeps, Sentinel._flying), and that
    waiting costs the loop nothing but the GIL that decoding and parsing the answers hold in the
    gateway's worker threads (about 0.05 s of CPU a sweep at 10,000 rollouts,
    e2e/bench/fast_check.py): counting the wait as busy stretched a 1.2 s sweep into a 4.8 s cycle."""
    return max(period - took, busy / MAX_BUSY_SHARE - took, 0.0)


class _LoopTime:
    """CPU seconds of the event loop's thread spent by one sweep: counted only inside `with` blocks,
    between its awaits, so the time other tasks run while it waits is theirs."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self._since = 0.0

    def __enter__(self) -> _LoopTime:
        self._since = time.thread_time()
        return self

    def __exit__(self, *_: object) -> None:
        self.seconds += time.thread_time() - self._since


@dataclass(frozen=True)
class _Cycle:
    """One sweep as Sentinel.run saw it (monotonic seconds), to say where a slow cycle's time went."""

    started: float
    took: float  # the sweep, start to end: planning, waiting for blocks and confirms, measuring
    busy: float  # of it, CPU seconds on the event loop
    measuring: float  # of it, wall seconds measuring reads (their yields to a busy loop included)
    pause: float  # the pause asked for after it (next_pause)
    paused: float  # heap.paused() when it started

    def slow(self, next_started: float, paused: float) -> str:
        late = next_started - self.started - self.took - self.pause
        return (
            f"a cycle of {next_started - self.started:.2f} s: sweep {self.took:.2f} s, "
            f"{self.busy:.2f} s of it CPU on the event loop, {self.measuring:.2f} s measuring (yields "
            f"included); pause {self.pause:.2f} s; resumed "
            f"{late:.2f} s late; the garbage collector paused the process {paused - self.paused:.2f} s"
        )


_Failures = tuple[tuple[str, str], ...]  # status.lastFailureAt's items: gate -> time

# A sweep's reads of one TemplateRead from one source: (source id, read) -> (source, [(rollouts, gate,
# exact)]), each list of rollouts a group planned alike: 200 groups rather than 20,000 (rollout, gate)
# pairs built a sweep at 10,000 rollouts (a third of the fast check's time on the event loop there).
# `exact` is the gate's own read where the read is its latency quantile's bucket share (_bucket_read).
_Member = tuple[list[Watched], api.Gate, TemplateRead | None]
_Readers = dict[tuple[int, TemplateRead], tuple[MetricsSource, list[_Member]]]
_Suspect = tuple[Watched, api.Gate]  # a rollout whose gate's bucket share cannot rule a breach out

# How long a histogram's bucket bounds (which `le` a latency bound is read from) are taken as known:
# the bounds of every histogram (count by (le)) took 2.6 s a query at 10,000 rollouts. A rollout whose
# histogram lacks the bound meanwhile counts nothing at it (its shortfall is its whole quantile x
# total), so it is a suspect: read exactly, never missed.
BOUNDS_AGE = 300.0  # seconds


class SharedAnalyses:
    """One Analysis object for every watched rollout whose analysis is equal (rollouts made from one
    template usually are), counted so that the last rollout to leave takes it along."""

    def __init__(self) -> None:
        self._shared: dict[str, tuple[api.Analysis, int]] = {}
        # id of a shared object -> its key: a release (one per reconcile of a watched rollout) need not
        # serialise the analysis again; the object is alive while it is in _shared, so its id is stable.
        self._keys: dict[int, str] = {}

    def __len__(self) -> int:
        return len(self._shared)

    def share(self, analysis: api.Analysis) -> api.Analysis:
        key = analysis.model_dump_json()
        shared, users = self._shared.get(key, (analysis, 0))
        self._shared[key] = (shared, users + 1)
        self._keys[id(shared)] = key
        return shared

    def release(self, analysis: api.Analysis) -> None:
        """One user less of `analysis` (the object `share` returned: no serialising; an equal one will do)."""
        key = self._keys.get(id(analysis)) or analysis.model_dump_json()
        if key not in self._shared:
            return
        shared, users = self._shared[key]
        if users <= 1:
            del self._shared[key], self._keys[id(shared)]
        else:
            self._shared[key] = (shared, users - 1)


class Sentinel:
    def __init__(
        self,
        clock: Callable[[], datetime],
        period: float = PERIOD,
        wake: Callable[[Key], None] = lambda key: None,
        kept_age: float = MAX_KEPT_AGE,
        count_every: float = COUNT_EVERY,
    ) -> None:
        self._watched: dict[Key, Watched] = {}
        self._analyses = SharedAnalyses()
        self._clock = clock
        self.wake = wake  # reconcile that rollout now (the scheduler drops a wake already queued)
        self.period = period
        self.breaches = 0  # rollouts woken by a breach since start: for the operator's metrics and tests
        self.busy = 0.0  # CPU seconds the last sweep spent on the event loop (next_pause)
        self.measuring = 0.0  # wall seconds the last sweep spent measuring its reads
        # Anchors (_anchors) whose windows were all full at the last sweep, with their analysis object
        # (an id may be reused once its object is gone; the object itself tells).
        self._full: dict[tuple[object, ...], api.Analysis] = {}
        # Block queries a sweep stopped waiting for (slower than a period): the next sweeps wait for
        # them rather than asking again, while the faster blocks are asked every period. An error-rate
        # breach at 10,000 rollouts waited for the latency histogram's 3 s queries before.
        self._flying: dict[tuple[int, Block], asyncio.Task[BlockValues]] = {}
        self._resting: dict[tuple[int, Block], float] = {}  # loop time before which it is not asked
        # A resting block is asked again the moment its rest ends, not at the next sweep after it: at
        # 10,000 rollouts a 1.5 s counter query rested 0.75 s and then waited for the sweep a second
        # later, so one was sent every 3 s and a breach waited up to 4.5 s to be seen.
        self._relaunch: dict[tuple[int, Block], asyncio.TimerHandle] = {}
        self._wanted: set[tuple[int, Block]] = set()  # the blocks the last sweep read
        self._counts: set[tuple[int, Block]] = set()  # which of them are count blocks (COUNT_EVERY)
        self._last_sent: dict[tuple[int, Block], float] = {}  # loop time the last answer's query was sent
        self._stopped = False  # cancelled: a query cancelled with it must not ask again after its rest
        # Each block's last answer, the loop time its query was sent, the pairs it was asked for
        # (None: every pair) and the loop time it got here: what a read takes of a block it does not
        # wait for (MAX_KEPT_AGE), and how old a wake's answer is (_seen).
        self._kept: dict[tuple[int, Block], tuple[float, BlockValues, frozenset[Pair] | None, float]] = {}
        self.kept_age = kept_age
        self.count_every = min(count_every, kept_age)  # a count's answer is taken only while kept
        # Each histogram's bucket bounds (bucket_bounds_block) and when they were answered (monotonic):
        # which bucket a latency bound is read from (_bucket_read).
        self._bounds: dict[tuple[int, Block], tuple[float, BlockValues]] = {}
        self._bounds_due: dict[tuple[int, Block], MetricsSource] = {}  # found unknown or old by planning
        self._bounds_asking: dict[tuple[int, Block], asyncio.Task[None]] = {}
        # The suspects' exact reads in flight, one per read and source (_confirm).
        self._confirming: dict[tuple[int, TemplateRead], asyncio.Task[int]] = {}
        # Gates a confirmed breach woke each rollout for, with the moment (time.monotonic()) the exact
        # read that showed it was sent: its evaluation reads them from that answer on (fresh_reads).
        self._fresh: dict[Key, dict[str, float]] = {}

    def __len__(self) -> int:
        return len(self._watched)

    def update(
        self,
        key: Key,
        spec: api.AgentRolloutSpec | None,
        status: api.AgentRolloutStatus,
        source: MetricsSource | None,
    ) -> None:
        """After a reconcile: watch the rollout's fast gates, or stop watching it."""
        gates = fast_gates(spec, status) if spec is not None and source is not None else ()
        if not gates or spec is None or spec.analysis is None or source is None:
            self.forget(key)
            return
        before = self._watched.get(key)
        self._watched[key] = Watched(
            key,
            self._analyses.share(spec.analysis),
            (key[0], version_values(spec)[1]),
            status.step_started_at,
            dict(status.last_failure_at),
            gates,
            source,
        )
        if before is not None:
            self._analyses.release(before.analysis)

    def forget(self, key: Key) -> None:
        self._fresh.pop(key, None)
        before = self._watched.pop(key, None)
        if before is not None:
            self._analyses.release(before.analysis)

    async def run(self) -> None:
        self._stopped = False
        last: _Cycle | None = None
        try:
            while True:
                started, paused = time.monotonic(), heap.paused()
                if last is not None:
                    metrics.FAST_CHECK_SWEEP_SECONDS.labels(phase="cycle").observe(started - last.started)
                    if started - last.started > SLOW_CYCLE * self.period:
                        log.info("fast check: %s", last.slow(started, paused))
                try:
                    await self.sweep()
                except Exception:  # the sentinel only speeds things up: never let it die
                    log.exception("fast bound check failed; the analysis interval still applies")
                took = time.monotonic() - started
                pause = next_pause(self.period, took, self.busy)
                last = _Cycle(started, took, self.busy, self.measuring, pause, paused)
                await asyncio.sleep(pause)
        finally:  # the operator stops: no block is asked after it, and none is left in flight
            self._stop_asking()

    def _stop_asking(self) -> None:
        self._stopped = True
        for handle in self._relaunch.values():
            handle.cancel()
        for task in [*self._flying.values(), *self._bounds_asking.values(), *self._confirming.values()]:
            task.cancel()

    async def sweep(self) -> int:
        """One pass; returns how many rollouts it woke. Each gate read is measured as soon as its
        blocks have arrived: an error-rate breach does not wait for the slowest block (at 10,000
        rollouts the latency histogram's, several times slower than the counters')."""
        busy = _LoopTime()
        self.measuring = 0.0
        try:
            return await self._sweep(busy)
        finally:
            self.busy = busy.seconds

    async def _sweep(self, busy: _LoopTime) -> int:
        readers: _Readers = {}
        begun = time.monotonic()
        loop = asyncio.get_running_loop()
        # Counted from the sweep's start, planning included: counted from the queries' launch, a sweep
        # lasted its planning longer than the period, and so did the cycle of every block it asks.
        deadline = loop.time() + self.period
        with busy:
            now = self._clock()
            # Rollouts made from one template share one analysis object, and the same windows once
            # every window is full: planned once per sweep for all of them, not once per rollout.
            full: dict[tuple[object, ...], api.Analysis] = {}
            alike: dict[tuple[object, ...], tuple[str | None, _Failures, list[Watched]]] = {}
            for watched in list(self._watched.values()):
                started, failures = watched.step_started_at, tuple(watched.last_failure_at.items())
                anchors = _anchors(watched, started, failures)
                if self._full.get(anchors) is watched.analysis:
                    full[anchors] = watched.analysis
                    started, failures = None, ()
                    anchors = _anchors(watched, started, failures)
                alike.setdefault(anchors, (started, failures, []))[2].append(watched)
            # The pairs each read is needed for when every reader's window is clamped (a young step:
            # read focused, Block.focused); None once any reader needs it whole.
            focus: dict[tuple[int, TemplateRead], set[Pair] | None] = {}
            for anchors, (started, failures, group) in alike.items():
                first = group[0]
                reads, all_full = self._reads(first, started, failures, now)
                if all_full and (started, failures) != (None, ()):
                    full[anchors] = first.analysis
                for gate, read, clamped, exact in reads:
                    at = (id(first.source), read)
                    readers.setdefault(at, (first.source, []))[1].append((group, gate, exact))
                    pairs = focus.setdefault(at, set()) if clamped else None
                    if pairs is None:
                        focus[at] = None
                    else:
                        pairs.update(w.pair for w in group)
            # Full stays full as time passes (a new step or failure comes with new anchors); only the
            # anchors of rollouts still watched are kept.
            self._full = full
            # Ordered: blocks in plan order, each with its source and the pairs it is read for.
            wanted: dict[tuple[int, Block], tuple[MetricsSource, set[Pair] | None]] = {}
            for (source_id, read), (source, _) in readers.items():
                pairs = focus[(source_id, read)]
                for block in read.blocks:
                    _, before = wanted.setdefault((source_id, block), (source, pairs and set(pairs)))
                    if before is not None and pairs is not None:
                        before.update(pairs)
                    elif before is not None:
                        wanted[(source_id, block)] = (source, None)
            # Answers from before the last sweep would make this one see nothing new: half a period
            # old at most (the reader's TTL, 1 s, let a sweep started a hair under a second after the
            # last one reuse its answers, and see a breach a period late).
            fresh = self.period / 2
            tasks: dict[asyncio.Task[BlockValues], tuple[int, Block]] = {}
            # Blocks this sweep does not wait for where their last answer is young (MAX_KEPT_AGE):
            # resting, or asked before this sweep and not answered yet.
            late: dict[tuple[int, Block], BlockValues] = {}
            counts = _counts(readers)
            for key, (source, pairs) in wanted.items():
                task = self._flying.get(key)
                kept = self._kept.get(key)
                if (
                    task is None
                    and key in counts
                    and kept is not None
                    and loop.time() - kept[0] < self.count_every
                    # A young window's count is asked for the pairs that need it: a rollout whose step
                    # began since is not in that answer, and would go unmeasured until the next one.
                    and _covers(kept[2], pairs)
                ):
                    late[key] = kept[1]  # asked a moment ago: the reads take that answer (COUNT_EVERY)
                    continue
                resting = task is None and self._resting.get(key, 0.0) > loop.time()
                waiting = resting or (task is not None and not task.done())
                if (
                    kept is not None
                    and loop.time() - kept[0] <= self.kept_age
                    and (waiting or (key in counts and _covers(kept[2], pairs)))
                ):
                    # A count asked again now is not waited for either: its last answer is a moment
                    # old (COUNT_EVERY) and counts move slowly. Waited for, every count's turn held
                    # the reads it is in until its answer (0.5-1.1 s at 10,000 rollouts, past the
                    # sweep's deadline at times), a breach in the value block with them.
                    late[key] = kept[1]
                if resting:
                    continue  # slow the last time: Prometheus gets a break; its reads wait for the next
                if task is None:
                    query = self._query(key, source, pairs, fresh, urgent=key not in counts)
                    task = self._flying[key] = loop.create_task(query)
                    # A failure nobody waits for any more is not news.
                    task.add_done_callback(retrieve_failure)
                tasks[task] = key
            self._resting = {key: until for key, until in self._resting.items() if until > loop.time()}
            self._wanted, self._counts = set(wanted), counts
            self._last_sent = {key: sent for key, sent in self._last_sent.items() if key in wanted}
            self._kept = {key: kept for key, kept in self._kept.items() if key in wanted}
            for key in [k for k, t in self._flying.items() if t.done() and k not in wanted]:
                del self._flying[key]  # an answer no watched rollout reads any more
            self._ask_bounds()
        metrics.FAST_CHECK_SWEEP_SECONDS.labels(phase="plan").observe(time.monotonic() - begun)
        vectors: dict[int, dict[Block, BlockValues]] = {}
        failed: set[tuple[int, Block]] = set()
        woken: set[Key] = set()
        confirms: list[asyncio.Task[int]] = []
        confirmed = 0  # rollouts the confirms woke within this sweep (they count their own breaches)
        pending = set(tasks)
        try:
            while pending:
                # Past the deadline (planning took the period), what has answered is still taken.
                left = max(deadline - loop.time(), 0.0)
                done, pending = await asyncio.wait(pending, timeout=left, return_when=asyncio.FIRST_COMPLETED)
                if not done:
                    break
                for task in done:
                    if self._flying.get(key := tasks[task]) is task:
                        del self._flying[key]
                        if key not in counts and task.exception() is None:
                            self._ask_again_if_due(key, *wanted[key], fresh)
                with busy:
                    # Every answer is taken, so no failed query is left "never retrieved".
                    unexpected = [e for t in done if (e := self._answered(t, tasks[t], vectors, failed))]
                    if unexpected:
                        raise unexpected[0]
                    ready = [key for key in readers if _ready(key, vectors, failed, late)]
                for source_id, read in ready:
                    source, members = readers.pop((source_id, read))
                    if any((source_id, b) in failed for b in read.blocks):
                        continue  # a block Prometheus cannot answer: the evaluation reports that
                    answered = vectors[source_id]
                    values = {b: answered[b] if b in answered else late[(source_id, b)] for b in read.blocks}
                    measuring = time.monotonic()
                    seen = functools.partial(self._seen, source, (source_id, read.value))
                    suspects = await self._measure(read, members, values, woken, busy, seen)
                    took = time.monotonic() - measuring
                    self.measuring += took
                    metrics.FAST_CHECK_SWEEP_SECONDS.labels(phase="measure").observe(took)
                    for exact, suspected in suspects.items():
                        confirm = self._start_confirm(source, exact, suspected, seen())
                        if confirm is not None:
                            confirms.append(confirm)
            # The suspects' exact reads are waited for until the sweep's deadline; those still out wake
            # their rollouts when they answer, and keep their suspects' next ones waiting until then.
            if confirms:
                await asyncio.wait(confirms, timeout=max(deadline - loop.time(), 0.0))
                # A confirm that failed (a bug, logged by _log_failure) woke nobody: the sweep goes on.
                confirmed = sum(
                    c.result() for c in confirms if c.done() and not c.cancelled() and c.exception() is None
                )
        except asyncio.CancelledError:
            self._stop_asking()  # the operator stops: so does every query the sweeps left in flight
            raise
        finally:
            self.breaches += len(woken)
        return len(woken) + confirmed

    def fresh_reads(self, key: Key) -> dict[str, float]:
        """The gates the rollout's next evaluation must read from answers sent at or after the given
        time.monotonic() moment (the breach its fast check confirmed: the fleet's cached quantile,
        up to the evaluation's max age old, may predate it), taken once; none once older than the
        kept age (the wake was lost, or the rollout reconciled since)."""
        gates = self._fresh.pop(key, {})
        oldest = time.monotonic() - self.kept_age
        return {gate: after for gate, after in gates.items() if after >= oldest}

    def _start_confirm(
        self, source: MetricsSource, exact: TemplateRead, suspects: list[_Suspect], suspicion: str
    ) -> asyncio.Task[int] | None:
        """The suspects' exact read, unless one of this read is still out (its suspects are suspected
        again by the next sweep that finds it done: a confirm is small, but a slow Prometheus must not
        pile them up)."""
        at = (id(source), exact)
        if (running := self._confirming.get(at)) is not None and not running.done():
            return None
        if self._stopped:
            return None
        task = asyncio.get_running_loop().create_task(self._confirm(source, exact, suspects, suspicion))
        task.add_done_callback(_log_failure)
        self._confirming[at] = task
        return task

    async def _confirm(
        self, source: MetricsSource, exact: TemplateRead, suspects: list[_Suspect], suspicion: str
    ) -> int:
        """Ask the suspects' exact read focused on them, from queries sent now (never an answer, or a
        query in flight, from before: it may predate the breach), and wake those whose hard bound it
        shows breached; returns how many it woke. `suspicion`: how old the share's answer that made
        them suspects was then (_seen), for the wake's log line."""
        after = time.monotonic()
        pairs = frozenset(watched.pair for watched, _ in suspects)
        answers = await asyncio.gather(
            *(source.block(b, keys=pairs, after=after) for b in exact.blocks), return_exceptions=True
        )
        metrics.FAST_CHECK_SWEEP_SECONDS.labels(phase="confirm").observe(time.monotonic() - after)
        for answer in answers:
            if isinstance(answer, PrometheusError):
                return 0  # Prometheus cannot answer now: the evaluations report that
            if isinstance(answer, BaseException):
                raise answer
        measure = exact.measurer(dict(zip(exact.blocks, cast(list[BlockValues], answers), strict=True)))
        checks: dict[tuple[int, int], BoundCheck] = {}
        woke: set[Key] = set()
        for watched, gate in suspects:
            check = checks.get((id(gate), id(watched.analysis)))
            if check is None:
                check = checks[(id(gate), id(watched.analysis))] = hard_bound_check(gate, watched.analysis)
            if not check(*measure(watched.pair)):
                continue
            self._fresh.setdefault(watched.key, {})[gate.name] = after
            if watched.key not in woke:
                # The wake's age in two parts: the confirm's own round trip, and before it the share's.
                log.info(
                    "%s/%s: gate %s breached between evaluations (its exact read): waking the rollout "
                    "(its exact read sent %.2f s ago; at the suspicion, %s)",
                    *watched.key,
                    gate.name,
                    time.monotonic() - after,
                    suspicion,
                )
                self.wake(watched.key)
                woke.add(watched.key)
        self.breaches += len(woke)
        return len(woke)

    def _bucket_read(
        self, gate: api.Gate, analysis: api.Analysis, source: MetricsSource, window: str
    ) -> TemplateRead | None:
        """What the sweep reads for a latency quantile's `max` instead of the quantile: the share of
        requests at or under the highest bucket bound under the max, one bucket's series rather than
        every bucket's (at 10,000 rollouts the quantile was half of Prometheus' query time). A share
        under the quantile only makes the rollout a suspect: its exact quantile is asked then
        (_confirm), fresh, and its breach wakes it. None: read the quantile (no bucket bound known
        under the max, or a `min` too)."""
        if gate.template is not api.Template.LATENCY_QUANTILE or gate.max is None or gate.min is not None:
            return None
        key = (id(source), bucket_bounds_block(analysis.metrics))
        known = self._bounds.get(key)
        if known is None or time.monotonic() - known[0] > BOUNDS_AGE:
            self._bounds_due[key] = source
        spellings = None if known is None else bucket_under(known[1], gate.max)
        if spellings is None:
            return None
        return quantile_bucket_read(
            analysis.metrics, window=window, spellings=spellings, quantile=gate.quantile
        )

    def _ask_bounds(self) -> None:
        """Ask the bucket bounds the planning found unknown or old, once at a time per histogram."""
        due, self._bounds_due = self._bounds_due, {}
        for key, source in due.items():
            if key not in self._bounds_asking and not self._stopped:
                task = asyncio.get_running_loop().create_task(self._fetch_bounds(key, source))
                self._bounds_asking[key] = task

    async def _fetch_bounds(self, key: tuple[int, Block], source: MetricsSource) -> None:
        try:
            values = await source.block(key[1], max_age=BOUNDS_AGE)
        except PrometheusError:
            values = {}  # unknown for BOUNDS_AGE: the quantile itself is read meanwhile
        except Exception:  # the sentinel only speeds things up: never let it die
            log.exception("reading the bucket bounds failed; latency quantiles are read themselves")
            values = {}
        finally:
            self._bounds_asking.pop(key, None)
        self._bounds[key] = (time.monotonic(), values)

    async def _query(
        self,
        key: tuple[int, Block],
        source: MetricsSource,
        pairs: set[Pair] | None,
        fresh: float,
        urgent: bool = True,
    ) -> BlockValues:
        """One block's query for this and, while it lasts, the next sweeps. A value block's is
        `urgent` (a breach is seen through it); a count's waits for those in flight (BatchReader)."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        answered = False
        try:
            keys = None if pairs is None else frozenset(pairs)
            values = await source.block(key[1], max_age=fresh, keys=keys, urgent=urgent)
            answered = True
            metrics.FAST_CHECK_SWEEP_SECONDS.labels(phase="query").observe(loop.time() - started)
            if (sent := self._last_sent.get(key)) is not None:
                metrics.FAST_CHECK_BLIND_SECONDS.labels(block=key[1].promql).observe(loop.time() - sent)
            self._last_sent[key] = started
            self._kept[key] = (started, values, keys, loop.time())
            return values
        finally:  # it stays in _flying until a sweep takes its answer: none is lost between two sweeps
            took = loop.time() - started
            if answered and pairs is None and (times := source.answer_times(key[1].promql)) is not None:
                # The rest spares Prometheus: its part only. At 10,000 rollouts the errors block took
                # Prometheus 0.23 s (median, its query log), the fast check's queries up to 3 s here.
                took = min(took, times.prometheus)
            rest = rest_after(self.period, took)
            if rest:
                until = self._resting[key] = loop.time() + rest
                if (handle := self._relaunch.pop(key, None)) is not None:
                    handle.cancel()
                if not self._stopped:
                    self._relaunch[key] = loop.call_at(until, self._rested, key, source, pairs, fresh)
            else:
                self._resting.pop(key, None)

    def _ask_again_if_due(
        self, key: tuple[int, Block], source: MetricsSource, pairs: set[Pair] | None, fresh: float
    ) -> None:
        """A value block's answer was just taken: when its query went out a period ago or more, ask it
        again now, for the next sweep to take, rather than at the next sweep. At 10,000 rollouts an
        answer took up to 2.2 s to come back (Prometheus 0.93 s of it); the sweep that took it asked
        nothing more, and the next one asked again up to a period later: the errors block went 3.5 s
        between two queries, a breach unseen meanwhile. Never sooner than a period after the last one,
        nor while the block rests (Prometheus' own part was slow) or after a failure."""
        loop = asyncio.get_running_loop()
        sent = self._last_sent.get(key)
        if (
            self._stopped
            or sent is None
            or loop.time() - sent < self.period
            or self._resting.get(key, 0.0) > loop.time()
        ):
            return
        query = self._query(key, source, pairs, fresh, urgent=True)
        task = self._flying[key] = loop.create_task(query)
        task.add_done_callback(retrieve_failure)

    def _rested(
        self, key: tuple[int, Block], source: MetricsSource, pairs: set[Pair] | None, fresh: float
    ) -> None:
        """A block's rest ended: ask it now, for the next sweep to take, if a sweep still reads it and
        its last answer was taken (a sweep deletes a task from _flying once it has its answer)."""
        self._relaunch.pop(key, None)
        self._resting.pop(key, None)
        loop = asyncio.get_running_loop()
        kept = self._kept.get(key)
        if key in self._counts and kept is not None and loop.time() - kept[0] < self.count_every:
            return  # a count: the first sweep after COUNT_EVERY asks it
        if key in self._wanted and key not in self._flying and not self._stopped:
            query = self._query(key, source, pairs, fresh, urgent=key not in self._counts)
            task = self._flying[key] = loop.create_task(query)
            task.add_done_callback(retrieve_failure)

    @staticmethod
    def _answered(
        task: asyncio.Task[BlockValues],
        key: tuple[int, Block],
        vectors: dict[int, dict[Block, BlockValues]],
        failed: set[tuple[int, Block]],
    ) -> BaseException | None:
        """Files one block's answer; returns an error that is not Prometheus' (a bug: the sweep fails)."""
        error = task.exception()
        if error is None:
            vectors.setdefault(key[0], {})[key[1]] = task.result()
        elif isinstance(error, PrometheusError):
            failed.add(key)
        else:
            return error
        return None

    async def _measure(
        self,
        read: TemplateRead,
        members: list[_Member],
        vectors: dict[Block, BlockValues],
        woken: set[Key],
        busy: _LoopTime,
        seen: Callable[[], str],
    ) -> dict[TemplateRead, list[_Suspect]]:
        """Wake each member whose gate, read from `vectors`, breaches its hard bound (once a sweep),
        yielding to the event loop after every SLICE seconds of it. Returns, by exact read, the
        members a bucket share makes suspects (_bucket_read): they are not woken on it (_confirm)."""
        measure = read.measurer(vectors)
        suspects: dict[TemplateRead, list[_Suspect]] = {}
        since = time.monotonic()
        for group, gate, exact in members:
            analysis = group[0].analysis  # a group shares its analysis
            breached: BoundCheck = (
                hard_bound_check(gate, analysis)
                if exact is None
                else functools.partial(may_breach_quantile_max, gate, analysis)
            )
            for start in range(0, len(group), _CHUNK):
                if time.monotonic() - since > SLICE:
                    await asyncio.sleep(0)
                    since = time.monotonic()
                with busy:
                    for watched in group[start : start + _CHUNK]:
                        if watched.key in woken or not breached(*measure(watched.pair)):
                            continue
                        if exact is not None:
                            suspects.setdefault(exact, []).append((watched, gate))
                            continue
                        log.info(
                            "%s/%s: gate %s breached between evaluations: waking the rollout (%s)",
                            *watched.key,
                            gate.name,
                            seen(),
                        )
                        self.wake(watched.key)
                        woken.add(watched.key)
        return suspects

    def _seen(self, source: MetricsSource, key: tuple[int, Block]) -> str:
        """How old the answer a breach was seen in is, for the wake's log line: from the query's
        sending (and Prometheus' part of it) and from its arrival here. At 10,000 rollouts a breach
        was woken 2.1 s after Prometheus answered the query that showed it, with no slow cycle."""
        kept = self._kept.get(key)
        if kept is None:
            return "its answer's age unknown"
        now = asyncio.get_running_loop().time()  # time.monotonic(), as the gateway's times
        times = source.answer_times(key[1].promql)
        spent = ""
        if times is not None and times.done <= kept[3]:  # of this answer, not of one in flight since
            spent = f": {times}, {kept[3] - times.done:.2f} s to reach the sweep"
        sent, here = now - kept[0], now - kept[3]
        return f"its value's query sent {sent:.2f} s ago{spent}; answered here {here:.2f} s ago"

    def _reads(
        self,
        watched: Watched,
        step_started_at: str | None,
        last_failure_at: _Failures,
        now: datetime,
    ) -> tuple[list[tuple[api.Gate, TemplateRead, bool, TemplateRead | None]], bool]:
        """The watched gates' reads at `now` from these anchors, each with whether its window is
        clamped (shorter than the gate's) and, for a bucket share read instead of the gate's own
        (_bucket_read: whole windows only; a young step's is read focused), the gate's own read; and
        whether every window is full."""
        analysis = watched.analysis
        windows = analysis_windows(analysis, step_started_at, dict(last_failure_at), now)
        whole = analysis_windows(analysis, None, {}, now)
        all_full = windows == whole
        reads: list[tuple[api.Gate, TemplateRead, bool, TemplateRead | None]] = []
        for gate in analysis.gates:
            seconds = windows.get(gate.name)
            if gate.name not in watched.gates or gate.template is None or seconds is None:
                continue
            try:
                window = f"{seconds}s"
                read = template_read(gate.template, analysis.metrics, window=window, quantile=gate.quantile)
                clamped = seconds != whole.get(gate.name)
                bucketed = None if clamped else self._bucket_read(gate, analysis, watched.source, window)
                if bucketed is None:
                    reads.append((gate, read, clamped, None))
                else:
                    reads.append((gate, bucketed, clamped, read))
            except TemplateError:
                continue
        return reads, all_full


def _log_failure(task: asyncio.Task[int]) -> None:
    """A confirm's failure that is not Prometheus' (a bug) is logged, never lost nor fatal."""
    if not task.cancelled() and (error := task.exception()) is not None:
        log.error("confirming a latency breach failed; the analysis interval still applies", exc_info=error)


def _ready(
    key: tuple[int, TemplateRead],
    vectors: dict[int, dict[Block, BlockValues]],
    failed: set[tuple[int, Block]],
    late: dict[tuple[int, Block], BlockValues],
) -> bool:
    """Whether a read can be measured now: every block answered in this sweep (or failed), or at
    least one answered and each other one late with a young last answer (MAX_KEPT_AGE). A read with
    nothing new is not measured again: it was, when its answers were new."""
    source_id, read = key
    answered = vectors.get(source_id, {})
    if all((source_id, b) in failed or b in answered for b in read.blocks):
        return True
    return any(b in answered for b in read.blocks) and all(
        b in answered or (source_id, b) in late for b in read.blocks
    )


def _covers(asked: frozenset[Pair] | None, pairs: set[Pair] | None) -> bool:
    """Whether an answer asked for `asked` (None: every pair) holds every pair a read needs (None:
    every pair)."""
    return asked is None or (pairs is not None and pairs <= asked)


def _counts(readers: _Readers) -> set[tuple[int, Block]]:
    """The count blocks of a sweep's reads: some read's samples or denominator, no read's value."""
    counts = {(sid, b) for sid, read in readers for b in (read.samples, read.denominator) if b is not None}
    return counts - {(sid, read.value) for sid, read in readers}


def _anchors(watched: Watched, step_started_at: str | None, last_failure_at: _Failures) -> tuple[object, ...]:
    """What a watched rollout's reads depend on: (analysis, source, the two status anchors, gates)."""
    return (id(watched.analysis), id(watched.source), step_started_at, last_failure_at, watched.gates)
