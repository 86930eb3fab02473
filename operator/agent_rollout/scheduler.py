"""One queue for every rollout's next reconcile, and a fixed pool of workers that drain it.

A rollout between reconciles is a dict entry and at most one timer on the event loop, not a task: at
10,000 rollouts a task per rollout (kopf's daemons) cost more memory than everything else together.
Like client-go's work queue, a rollout is never reconciled by two workers at once; woken while it
is being reconciled, it is reconciled again right after. What is due first goes first, by urgency:
after a restart every rollout is due at once, and a human's abort, a pause that ends or a rollout
mid-step must not wait behind thousands of new or finished ones. A few workers take the
oldest queued run whatever its urgency (priority with aging): at 10,000 live rollouts the stream of
their analyses never ran dry, and new rollouts, then ranked after them, waited without end for a
strict-priority worker.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from agent_rollout.pacer import Pacer

log = logging.getLogger(__name__)

K = TypeVar("K")

# Urgency, lower first.
NOW = 0  # a human's verb, a spec edit, a breach: someone is waiting
DUE = 1  # a decision falls due on the rollout's own timer: a pause or shadow step ends, a deadline
# Mid-rollout: an analysis on its interval. Before new rollouts: ranked after them, at 10,000 rollouts
# created at once the live ones' interval runs waited for the start of every other, and a pause whose
# end is found by an interval run ended p50 272 s late. New rollouts still get workers: the
# oldest-first ones, and their first status (one write) is ranked early in the API budget.
LIVE = 2
NEW = 3  # never reconciled (or only acknowledged)
AT_REST = 4  # finished or failed: nothing moves unless something changes

# A failing reconcile is retried after 5 s, then after twice as long each time it fails again, up to
# a minute; a success resets it, and a wake (a watch event, a breach, a human's verb) runs it at once
# whatever the backoff. A rollout that keeps failing (its namespace gone while the apiserver still
# lists it, an apiserver away) was retried every 5 s with a traceback each time, for ever: at 10,000
# rollouts with the apiserver away that is 2,000 failing reconciles a second.
RETRY_AFTER_ERROR_S = 5.0
RETRY_AFTER_ERROR_MAX_S = 60.0


def retry_delay(failures: int) -> float:
    """Seconds before the retry of a reconcile that failed `failures` (>= 1) times in a row."""
    return min(RETRY_AFTER_ERROR_S * 2.0 ** min(failures - 1, 32), RETRY_AFTER_ERROR_MAX_S)


OLDEST_FIRST_SHARE = 8  # one worker in this many takes the oldest queued run, not the most urgent
# Workers that take only runs of decisions falling due (a pause's end), one per this many workers, on
# top of them. With the pause's own deadline (Scheduler.deadline), 60 s pauses at 10,000 rollouts
# entering step 1 still ended p99 12 s late: ranked after every NOW run (each route write's own echo
# among them), they waited for a worker among reconciles that waited on the saturated apiserver. With
# 64 of their own (on top of the 256) a DUE run waited at most 0.5 s for a worker there. They cost
# nothing while no decision falls due, and there are never more DUE runs than rollouts whose decision
# fell due, so they are added, not taken from the others.
DUE_ONLY_SHARE = 4
# Workers that take only runs ranked NOW (a human's verb, a spec edit, a breach, a change of what the
# rollout names), one per this many workers, on top of them too: however long every other worker waits
# (on a saturated apiserver, say), such a run is not queued behind them. At 10,000 new rollouts NOW
# runs waited p50 <= 60 s for a worker; with these, p50 <= 30 s (bucket bounds): most NOW runs then
# are the echoes of our own route writes, which hold workers of their own too (not investigated yet).
NOW_ONLY_SHARE = 8
ONLY_SHARES = {NOW: NOW_ONLY_SHARE, DUE: DUE_ONLY_SHARE}  # urgency -> one worker of its own per this many
URGENCY_NAMES = {NOW: "now", DUE: "due", LIVE: "live", NEW: "new", AT_REST: "at_rest"}
# A run less urgent than DUE (an interval analysis) taken by a worker this close before the rollout's
# deadline is dropped: the deadline's run comes in a moment and analyses too, and a run in progress
# holds it (one run per rollout at a time). At 10,000 rollouts entering step 1, interval runs waited
# about an interval for a worker, so the one queued halfway through a 60 s pause started near its end
# and held the pause's own run behind its writes (reconcile.py ranks such a run's refresh with the
# decisions: with both, those pauses ended p99 0 s late, 13-21 s before).
DEADLINE_SLACK_S = 10.0


@dataclass(slots=True)
class _Entry:
    urgency: int
    timer: asyncio.TimerHandle | None = None
    due: float | None = None  # loop time at which the timer fires
    queued: bool = False
    running: bool = False
    again: bool = False  # woken while running: run once more right after
    failures: int = 0  # reconciles failed in a row
    queued_at: float = 0.0  # time.monotonic() of the last (re)queue: how long a run waited for a worker
    # Fires when a decision falls due (a pause's end): whatever is queued or running then, a run ranked
    # DUE follows. Not the timer above: that one is replaced by every run and wake, this one only by
    # the next run's own deadline.
    deadline: asyncio.TimerHandle | None = None


class Scheduler(Generic[K]):
    """`work(key)` reconciles one rollout and returns seconds until its next reconcile (None: only
    when woken); `urgency_of(key)` ranks a run that falls due by its timer. Nothing runs until
    `start`; keys woken before wait in the queue, by urgency."""

    def __init__(
        self,
        work: Callable[[K], Awaitable[float | None]],
        workers: int,
        urgency_of: Callable[[K], int] = lambda key: LIVE,
        waited: Callable[[int, float], None] = lambda urgency, seconds: None,
        pacer: Pacer | None = None,
    ) -> None:
        """`waited(urgency, seconds)` hears how long each run waited in the queue for a worker;
        `pacer` spreads the routine runs (less urgent than DUE) over turns of the event loop."""
        if workers < 1:
            raise ValueError(f"need at least one worker, got {workers}")
        self._work = work
        self._pacer = pacer
        self._urgency_of = urgency_of
        self._waited = waited
        self._workers = workers
        self._entries: dict[K, _Entry] = {}
        self._queue: asyncio.PriorityQueue[tuple[int, int, K]] = asyncio.PriorityQueue()
        # The same runs in the order they were queued (a key requeued with more urgency appears twice;
        # whichever item a worker takes first runs it, the other is skipped as stale).
        self._oldest: asyncio.Queue[tuple[int, int, K]] = asyncio.Queue()
        # The runs ranked NOW or DUE once more, for the workers that take only those (ONLY_SHARES).
        self._only: dict[int, asyncio.Queue[tuple[int, int, K]]] = {u: asyncio.Queue() for u in ONLY_SHARES}
        self._order = itertools.count()  # first in, first out within one urgency
        self._tasks: list[asyncio.Task[None]] = []

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: K) -> bool:
        return key in self._entries

    def wake(self, key: K, urgency: int = NOW) -> None:
        """Reconcile `key` as soon as a worker is free (idempotent: one queued run per key)."""
        entry = self._entries.get(key)
        if entry is None:
            entry = self._entries[key] = _Entry(urgency)
        if entry.running:
            entry.again = True
            entry.urgency = min(entry.urgency, urgency)
            return
        if entry.queued and urgency >= entry.urgency:
            return
        # Not queued yet, or queued behind less urgent work: (re)queue; the older item is skipped.
        self._cancel_timer(entry)
        entry.urgency = min(entry.urgency, urgency) if entry.queued else urgency
        entry.queued = True
        entry.queued_at = time.monotonic()
        item = (entry.urgency, next(self._order), key)
        self._queue.put_nowait(item)
        if self._workers >= OLDEST_FIRST_SHARE:
            self._oldest.put_nowait(item)
        if entry.urgency in ONLY_SHARES and self._workers >= ONLY_SHARES[entry.urgency]:
            self._only[entry.urgency].put_nowait(item)

    def after(self, key: K, delay_s: float) -> None:
        """Reconcile `key` in `delay_s` seconds, unless it is due sooner anyway."""
        entry = self._entries.get(key)
        if entry is None or entry.queued or entry.running:
            return
        loop = asyncio.get_running_loop()
        due = loop.time() + max(0.0, delay_s)
        if entry.timer is not None and entry.due is not None and entry.due <= due:
            return
        self._cancel_timer(entry)
        entry.due = due
        entry.timer = loop.call_at(due, self._fire, key, entry)

    def deadline(self, key: K, delay_s: float | None) -> None:
        """A decision of `key` falls due in `delay_s` seconds (None: none): a run then, ranked DUE,
        even when an earlier run is still queued behind other work. Replaces the deadline set before.

        The run's own timer is not enough: a 60 s pause on a 30 s interval is ended by the interval run
        30 s later, and at 10,000 rollouts entering step 1 that run, ranked with every other live
        rollout's analysis, waited up to 35 s in the queue past the pause's end."""
        entry = self._entries.get(key)
        if entry is None:
            return
        self._cancel_deadline(entry)
        if delay_s is not None:
            loop = asyncio.get_running_loop()
            entry.deadline = loop.call_later(max(0.0, delay_s), self._deadline_passed, key, entry)

    def forget(self, key: K) -> None:
        """The rollout is gone: no more runs (one already running finishes, and is not repeated)."""
        entry = self._entries.pop(key, None)
        if entry is not None:
            self._cancel_timer(entry)
            self._cancel_deadline(entry)

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        oldest_first = self._workers // OLDEST_FIRST_SHARE
        queues = [self._oldest] * oldest_first + [self._queue] * (self._workers - oldest_first)
        for urgency, share in ONLY_SHARES.items():
            queues += [self._only[urgency]] * (self._workers // share)
        self._tasks = [
            loop.create_task(self._worker(queue), name=f"reconcile-worker-{i}")
            for i, queue in enumerate(queues)
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for entry in self._entries.values():
            self._cancel_timer(entry)
            self._cancel_deadline(entry)

    def failures(self, key: K) -> int:
        """How many reconciles of `key` failed in a row (0: the last one passed)."""
        entry = self._entries.get(key)
        return 0 if entry is None else entry.failures

    def pending(self) -> int:
        """Runs queued now (a gauge of how far behind the workers are)."""
        return sum(1 for e in self._entries.values() if e.queued)

    def _fire(self, key: K, entry: _Entry) -> None:
        if self._entries.get(key) is not entry:
            return
        entry.timer = entry.due = None
        self.wake(key, self._urgency_of(key))

    def _deadline_passed(self, key: K, entry: _Entry) -> None:
        if self._entries.get(key) is not entry:
            return
        entry.deadline = None
        self.wake(key, DUE)

    @staticmethod
    def _deadline_within(entry: _Entry, seconds: float) -> bool:
        deadline = entry.deadline
        return deadline is not None and deadline.when() - asyncio.get_running_loop().time() < seconds

    @staticmethod
    def _cancel_deadline(entry: _Entry) -> None:
        if entry.deadline is not None:
            entry.deadline.cancel()
        entry.deadline = None

    @staticmethod
    def _cancel_timer(entry: _Entry) -> None:
        if entry.timer is not None:
            entry.timer.cancel()
        entry.timer = entry.due = None

    async def _worker(self, queue: asyncio.Queue[tuple[int, int, K]]) -> None:
        # Every queued run is in the priority and the oldest-first queue (a DUE run in the DUE queue
        # too, a NOW run in the NOW queue): whichever worker takes it first runs it, and the other
        # copies are then stale (not queued any more) and skipped.
        while True:
            urgency, _, key = await queue.get()
            if urgency > DUE and self._pacer is not None:
                await self._pacer.start()  # the item may have gone stale meanwhile: checked below
            entry = self._entries.get(key)
            if entry is None or not entry.queued or urgency != entry.urgency:
                continue  # forgotten, run already, or requeued with another urgency: that item runs instead
            if urgency > DUE and self._deadline_within(entry, DEADLINE_SLACK_S):
                entry.queued = False  # the deadline's run follows (and re-arms the timer)
                continue
            entry.queued, entry.running = False, True
            self._waited(urgency, time.monotonic() - entry.queued_at)
            delay: float | None
            try:
                delay = await self._work(key)
                entry.failures = 0
            except asyncio.CancelledError:
                raise
            except Exception as e:
                entry.failures += 1
                delay = retry_delay(entry.failures)
                if entry.failures == 1:
                    log.exception("reconcile of %s failed; again in %.0f s", key, delay)
                else:  # the traceback was logged at the first failure
                    log.warning(
                        "reconcile of %s failed %d times in a row (%s: %s); again in %.0f s",
                        key,
                        entry.failures,
                        type(e).__name__,
                        e,
                        delay,
                    )
            finally:
                entry.running = False
            if self._entries.get(key) is entry:  # else forgotten while it ran
                if entry.again:
                    entry.again = False
                    self.wake(key, entry.urgency)
                elif delay is not None:
                    self.after(key, delay)
            # A get from a non-empty queue does not give the event loop back, nor does a run whose awaits
            # all complete at once (cached reads, nothing to write): a worker ran queued reconciles back
            # to back in one turn of the loop, and held it for seconds at 10,000 rollouts after a
            # restart (looplag's stall log, run Z11), every breach and abort waiting behind. Stale items
            # are skipped above without a turn each: they cost nothing.
            await asyncio.sleep(0)
