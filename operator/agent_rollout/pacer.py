"""Routine reconciles started per turn of the event loop, bounded by time, so urgent work is not queued
behind a batch of them.

asyncio runs, in one turn, every callback that was ready when the turn began; what falls ready meanwhile
waits for the next turn. At 10,000 rollouts about 330 interval analyses fall due a second, each a few
milliseconds of CPU that completes in one step (its reads are cached, nothing to write): the timers
that fired during one turn woke that many workers for the next, and every callback queued in a turn
waited for all of them. The way of a fast-check answer from its worker thread to the sweep is four
turns (looplag.py), a confirmed latency breach's about twice that: at 10,000 rollouts a latency breach
spent 0.40 s reaching the sweep and 0.55 s more before it was measured (run Z15), with the loop's lag
p50 <= 0.05 s and p99 <= 1 s.

A Pacer lets a routine run start only while the turn's slice lasts (`budget` seconds from the first
start in it); the runs that come later wait for a later turn, first come first served, and the ones
that waited go before any newcomer. A turn then holds about one slice of routine reconciles, however
many fell due, and everything else ready waits for that much at most. It paces starts, not work: a run
that awaits (a status write) resumes unpaced, and nothing is lost but one turn's wait per put-off run,
so the reconciles a second stay what the CPU allows. Runs someone waits for (a breach, a human's verb,
a pause's end: scheduler.NOW and DUE) are never paced.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable

from agent_rollout import metrics

BUDGET = 0.02  # seconds of routine reconciles a turn of the event loop starts (the fast check's SLICE)


class Pacer:
    def __init__(self, budget: float = BUDGET, clock: Callable[[], float] = time.monotonic) -> None:
        if not budget > 0:
            raise ValueError(f"budget must be > 0 seconds, got {budget!r}")
        self.budget = budget
        self._clock = clock
        self._opened: float | None = None  # when this turn's slice opened (its first start); None: not yet
        self._waiting: deque[asyncio.Future[None]] = deque()  # newcomers, first come first
        self._again: list[asyncio.Future[None]] = []  # woken, found the slice spent: they go first
        self._woken = 0  # woken by the last turn's end, not resumed yet: newcomers queue behind them
        self._armed = False  # a turn's end is scheduled
        self.put_off = 0  # starts put off to a later turn (tests, benchmarks)

    async def start(self) -> None:
        """Return when a routine run may start: at once while this turn's slice lasts and nobody
        waits, else in a later turn, in order."""
        if not self._waiting and not self._again and not self._woken and self._room():
            return
        again = False
        while True:
            future = asyncio.get_running_loop().create_future()
            (self._again if again else self._waiting).append(future)
            self.put_off += 1
            metrics.RECONCILES_PUT_OFF.inc()
            self._arm()
            try:
                await future
            except asyncio.CancelledError:
                # Woken, then cancelled before it resumed. One cancelled while waiting stays in its list
                # until the turn's end (armed above), which skips it.
                if not future.cancelled():
                    self._woken -= 1
                raise
            self._woken -= 1
            if self._room():
                return
            again = True

    def _room(self) -> bool:
        now = self._clock()
        if self._opened is None:
            self._opened = now
            self._arm()  # the slice ends with this turn
            return True
        return now - self._opened < self.budget

    def _arm(self) -> None:
        if not self._armed:
            self._armed = True
            asyncio.get_running_loop().call_soon(self._turn_over)

    def _turn_over(self) -> None:
        """Runs one turn after it was armed: the slice is over; every waiter is woken (for the next
        turn), those that were put off twice first, in their order."""
        self._armed = False
        self._opened = None
        woken = [*self._again, *self._waiting]
        self._again.clear()
        self._waiting.clear()
        for future in woken:
            if not future.done():
                future.set_result(None)
                self._woken += 1
