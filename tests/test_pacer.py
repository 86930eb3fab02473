"""The pacer: a turn of the event loop starts about one slice of routine runs, whatever fell due; the
rest start in later turns in their order, every one of them; urgent runs are not paced; and a callback
queued beside a batch of due runs waits for one slice of them, not for the batch."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from agent_rollout.pacer import Pacer
from agent_rollout.scheduler import LIVE, NOW, Scheduler

COST = 1 / 128  # seconds of (fake) CPU each run takes (exact in binary: 4 of them fill a slice of 0.03 s)
BUDGET = 0.03


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class PacedRuns:
    """Runs that each wait for the pacer, record their start and take COST seconds of fake CPU."""

    def __init__(self) -> None:
        self.clock = FakeClock()
        self.pacer = Pacer(BUDGET, clock=self.clock)
        self.started: list[object] = []

    async def run(self, name: object) -> None:
        await self.pacer.start()
        self.started.append(name)
        self.clock.now += COST


def _run(test: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(test())  # type: ignore[arg-type]


async def _until(condition: Callable[[], bool]) -> None:
    for _ in range(10_000):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("condition not reached")


def test_a_callback_queued_beside_a_batch_of_due_runs_waits_for_one_slice_of_them() -> None:
    """50 runs fall due in one turn, each 8 ms of CPU that never awaits (an interval analysis on
    cached reads); a callback queued with them (a worker thread's answer on its way to the fast
    check) runs after one slice of them (4) with the pacer, after all 50 without."""

    async def started_before_the_callback(pacer: Pacer | None, clock: FakeClock) -> int:
        started: list[int] = []
        seen: list[int] = []

        async def run(i: int) -> None:
            if pacer is not None:
                await pacer.start()
            started.append(i)
            clock.now += COST  # the run's CPU

        tasks = [asyncio.create_task(run(i)) for i in range(50)]
        asyncio.get_running_loop().call_soon(lambda: seen.append(len(started)))
        await asyncio.gather(*tasks)
        assert sorted(started) == list(range(50))  # every run started, none twice
        return seen[0]

    async def test() -> None:
        clock = FakeClock()
        assert await started_before_the_callback(None, clock) == 50
        paced = await started_before_the_callback(Pacer(BUDGET, clock=clock), clock)
        assert paced == 4

    _run(test)


def test_runs_put_off_start_in_their_order_and_newcomers_queue_behind_them() -> None:
    async def test() -> None:
        runs = PacedRuns()
        first = [asyncio.create_task(runs.run(f"a{i}")) for i in range(12)]
        await asyncio.sleep(0)  # the first turn: a0..a3 start, a4..a11 are put off
        assert runs.started == ["a0", "a1", "a2", "a3"]
        late = [asyncio.create_task(runs.run(f"b{i}")) for i in range(3)]  # fall due now: behind a4..a11
        await asyncio.gather(*first, *late)
        assert runs.started == [f"a{i}" for i in range(12)] + ["b0", "b1", "b2"]
        assert runs.pacer.put_off >= 8

    _run(test)


def test_a_slice_lasts_one_turn_an_idle_pacer_never_puts_off() -> None:
    async def test() -> None:
        clock = FakeClock()
        pacer = Pacer(BUDGET, clock=clock)
        for _ in range(20):  # one run a turn, each longer than the slice: none waits
            await pacer.start()
            clock.now += 0.05
            await asyncio.sleep(0)
            await asyncio.sleep(0)
        assert pacer.put_off == 0

    _run(test)


def test_a_waiter_cancelled_leaves_the_pacer_serving_the_others() -> None:
    async def test() -> None:
        runs = PacedRuns()
        tasks = [asyncio.create_task(runs.run(i)) for i in range(10)]
        await asyncio.sleep(0)
        tasks[6].cancel()  # put off, then cancelled (the scheduler stops)
        await asyncio.gather(*tasks, return_exceptions=True)
        assert runs.started == [0, 1, 2, 3, 4, 5, 7, 8, 9]
        later = asyncio.create_task(runs.run(10))
        await _until(later.done)
        assert runs.started[-1] == 10

    _run(test)


def test_a_run_cancelled_once_woken_leaves_no_newcomer_put_off() -> None:
    """A run put off, woken for the next turn and cancelled before it resumed (the scheduler stops
    then): the pacer forgets it, and a lone run in a quiet turn afterwards starts at once."""

    async def test() -> None:
        runs = PacedRuns()
        tasks = [asyncio.create_task(runs.run(i)) for i in range(6)]
        await asyncio.sleep(0)  # 0..3 start, 4 and 5 are put off; their turn's end is queued
        asyncio.get_running_loop().call_soon(tasks[5].cancel)  # after the turn's end woke it
        await asyncio.gather(*tasks, return_exceptions=True)
        assert runs.started == [0, 1, 2, 3, 4] and tasks[5].cancelled()
        for _ in range(3):
            await asyncio.sleep(0)
        put_off = runs.pacer.put_off
        await runs.run("lone")
        assert runs.pacer.put_off == put_off

    _run(test)


def test_the_scheduler_paces_routine_runs_but_never_an_urgent_one() -> None:
    """30 interval runs fall due, then a breach's run (NOW) while most of them wait for a turn: the
    interval runs start a slice a turn, every one of them; the breach's starts before those put off."""

    async def test() -> None:
        clock = FakeClock()
        order: list[str] = []

        async def work(key: str) -> float | None:
            order.append(key)
            clock.now += COST
            return None

        queue: Scheduler[str] = Scheduler(work, workers=64, pacer=Pacer(BUDGET, clock=clock))
        queue.start()
        await asyncio.sleep(0)  # the workers wait on their queues
        for i in range(30):
            queue.wake(f"live-{i}", LIVE)
        await _until(lambda: len(order) >= 4)
        queue.wake("breach", NOW)
        await _until(lambda: len(order) == 31)
        await queue.stop()
        assert order.index("breach") <= 8  # without the exemption: queued behind the 26 put off
        assert sorted(order) == sorted(["breach", *(f"live-{i}" for i in range(30))])

    _run(test)


def test_a_budget_must_be_positive() -> None:
    with pytest.raises(ValueError, match="budget"):
        Pacer(0)
