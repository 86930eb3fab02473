"""The scheduler: one run per rollout at a time, a wake during a run gives exactly one more, the most
urgent first, timers that an earlier wake replaces, and forgotten rollouts never run again."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Awaitable, Callable

import pytest

from agent_rollout import scheduler as scheduling
from agent_rollout.scheduler import AT_REST, DUE, LIVE, NEW, NOW, Scheduler


class Recorder:
    """A work function that records runs and can hold one open until released."""

    def __init__(self, delay: float | None = None) -> None:
        self.runs: list[str] = []
        self.running: set[str] = set()
        self.overlaps = 0
        self.delay = delay
        self.hold: dict[str, asyncio.Event] = {}

    async def __call__(self, key: str) -> float | None:
        if key in self.running:
            self.overlaps += 1
        self.running.add(key)
        self.runs.append(key)
        try:
            if key in self.hold:
                await self.hold.pop(key).wait()
            await asyncio.sleep(0)
        finally:
            self.running.discard(key)
        return self.delay


async def _until(condition: Callable[[], bool], timeout: float = 2.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached"
        await asyncio.sleep(0.001)


def _run(test: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(test())  # type: ignore[arg-type]


def test_most_urgent_first_after_a_restart() -> None:
    async def test() -> None:
        work = Recorder()
        queue: Scheduler[str] = Scheduler(work, workers=1)
        ranked = [("done", AT_REST), ("mid-step", LIVE), ("new", NEW), ("pause-ends", DUE), ("aborted", NOW)]
        for key, urgency in ranked:
            queue.wake(key, urgency)
        queue.start()
        await _until(lambda: len(work.runs) == 5)
        assert work.runs == ["aborted", "pause-ends", "mid-step", "new", "done"]
        await queue.stop()

    _run(test)


def test_a_wake_during_a_run_gives_exactly_one_more_run_never_two_at_once() -> None:
    async def test() -> None:
        work = Recorder()
        queue: Scheduler[str] = Scheduler(work, workers=4)
        release = work.hold["r"] = asyncio.Event()
        queue.start()
        queue.wake("r")
        await _until(lambda: "r" in work.running)
        for _ in range(5):  # e.g. the fast check waking it every second while it reconciles
            queue.wake("r")
        release.set()
        await _until(lambda: len(work.runs) == 2)
        await asyncio.sleep(0.05)
        assert work.runs == ["r", "r"] and work.overlaps == 0
        await queue.stop()

    _run(test)


def test_the_returned_delay_schedules_the_next_run_and_an_earlier_wake_replaces_it() -> None:
    async def test() -> None:
        work = Recorder(delay=0.05)
        queue: Scheduler[str] = Scheduler(work, workers=1)
        queue.start()
        queue.wake("r")
        await _until(lambda: len(work.runs) == 2 and not work.running, timeout=1.0)  # the timer ran it again

        work.delay = 3600.0  # a long interval (the run already timed at 0.05 s returns it)...
        await _until(lambda: len(work.runs) == 3 and not work.running, timeout=1.0)
        await asyncio.sleep(0.1)
        assert len(work.runs) == 3
        queue.wake("r")  # ...cut short by a verb
        await _until(lambda: len(work.runs) == 4, timeout=1.0)
        await queue.stop()

    _run(test)


def test_a_forgotten_rollout_never_runs_again() -> None:
    async def test() -> None:
        work = Recorder(delay=0.01)
        queue: Scheduler[str] = Scheduler(work, workers=1)
        queue.wake("queued")
        queue.forget("queued")
        release = work.hold["running"] = asyncio.Event()
        queue.start()
        queue.wake("running")
        await _until(lambda: "running" in work.running)
        queue.wake("running")  # would run again after...
        queue.forget("running")  # ...but it was deleted meanwhile
        release.set()
        await asyncio.sleep(0.1)
        assert work.runs == ["running"] and len(queue) == 0
        await queue.stop()

    _run(test)


def test_a_failing_reconcile_is_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(scheduling, "RETRY_AFTER_ERROR_S", 0.01)
    attempts: list[str] = []

    async def flaky(key: str) -> float | None:
        attempts.append(key)
        if len(attempts) < 3:
            raise RuntimeError("apiserver away")
        return None

    async def test() -> None:
        queue: Scheduler[str] = Scheduler(flaky, workers=1)
        queue.start()
        queue.wake("r")
        await _until(lambda: len(attempts) == 3)
        await asyncio.sleep(0.05)
        assert attempts == ["r", "r", "r"]  # retried until it passed, then only woken again
        await queue.stop()

    _run(test)


def test_a_reconcile_that_keeps_failing_is_retried_ever_more_slowly_until_it_passes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(scheduling, "RETRY_AFTER_ERROR_S", 0.02)
    monkeypatch.setattr(scheduling, "RETRY_AFTER_ERROR_MAX_S", 0.08)
    attempts: list[float] = []
    failing = 5

    async def gone(key: str) -> float | None:
        attempts.append(asyncio.get_running_loop().time())
        if len(attempts) <= failing:
            raise RuntimeError("namespace not found")
        return None

    async def test() -> None:
        queue: Scheduler[str] = Scheduler(gone, workers=1)
        queue.start()
        queue.wake("r")
        await _until(lambda: queue.failures("r") == failing)
        await _until(lambda: len(attempts) == failing + 1)
        gaps = [b - a for a, b in itertools.pairwise(attempts)]
        # Never sooner than the backoff: 0.02, 0.04, then twice as long each time up to the cap.
        for gap, least in zip(gaps, (0.02, 0.04, 0.08, 0.08, 0.08), strict=True):
            assert gap >= least - 0.002, (gaps, least)
        assert queue.failures("r") == 0  # it passed: the next failure starts at 0.02 again
        await asyncio.sleep(0.1)
        assert len(attempts) == failing + 1  # passed and not woken: no more runs
        await queue.stop()

    _run(test)


def test_a_wake_runs_a_failing_rollout_at_once_whatever_its_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(scheduling, "RETRY_AFTER_ERROR_S", 30.0)
    attempts: list[str] = []

    async def failing(key: str) -> float | None:
        attempts.append(key)
        raise RuntimeError("apiserver away")

    async def test() -> None:
        queue: Scheduler[str] = Scheduler(failing, workers=1)
        queue.start()
        queue.wake("r")
        await _until(lambda: queue.failures("r") == 1)
        queue.wake("r", NOW)  # a breach or a human's abort does not wait 30 s
        await _until(lambda: queue.failures("r") == 2)
        assert attempts == ["r", "r"]
        await queue.stop()

    _run(test)


def test_the_retry_delay_doubles_from_five_seconds_to_a_minute() -> None:
    assert [scheduling.retry_delay(n) for n in (1, 2, 3, 4, 5, 6, 1000)] == [5, 10, 20, 40, 60, 60, 60]


def test_a_timer_falls_due_with_the_urgency_the_rollout_has_then() -> None:
    async def test() -> None:
        urgency = {"idle": AT_REST, "live": LIVE}
        work = Recorder()
        queue: Scheduler[str] = Scheduler(work, workers=1, urgency_of=urgency.__getitem__)
        release = work.hold["blocker"] = asyncio.Event()
        queue.start()
        queue.wake("blocker")
        await _until(lambda: "blocker" in work.running)
        for key in ("idle", "live"):
            queue.wake(key, NEW)
        await asyncio.sleep(0)
        release.set()
        await _until(lambda: len(work.runs) == 3)
        work.runs.clear()
        # Both due at the same moment while the only worker is busy: the live one goes first.
        release = work.hold["blocker"] = asyncio.Event()
        queue.wake("blocker")
        await _until(lambda: "blocker" in work.running)
        queue.after("idle", 0.0)
        queue.after("live", 0.0)
        await asyncio.sleep(0.02)
        release.set()
        await _until(lambda: len(work.runs) == 3)
        assert work.runs == ["blocker", "live", "idle"]
        await queue.stop()

    _run(test)


def test_an_endless_stream_of_urgent_runs_does_not_starve_a_new_rollout() -> None:
    # 10,000 live rollouts' analyses never run dry; a new rollout, ranked after them, must still start.
    async def test() -> None:
        work = Recorder(delay=0.0)  # each live rollout is due again at once: the queue never empties
        live = [f"live-{i}" for i in range(40)]
        queue: Scheduler[str] = Scheduler(
            work, workers=scheduling.OLDEST_FIRST_SHARE, urgency_of=lambda key: NEW if key == "new" else LIVE
        )
        for key in live:
            queue.wake(key, LIVE)
        queue.wake("new", NEW)
        queue.start()
        await _until(lambda: len(work.runs) >= 400)
        assert "new" in work.runs[:200], work.runs[:200]
        assert work.overlaps == 0
        await queue.stop()

    _run(test)


def test_a_deadline_moves_a_run_queued_behind_routine_work_to_the_front() -> None:
    """A 60 s pause on a 30 s interval: its interval run is queued with every other live rollout's
    analysis when the pause ends; the pause's deadline ranks it DUE, ahead of them."""

    async def test() -> None:
        work = Recorder()
        queue: Scheduler[str] = Scheduler(work, workers=1)
        release = work.hold["blocker"] = asyncio.Event()
        queue.start()
        queue.wake("blocker")
        await _until(lambda: "blocker" in work.running)
        for key in ("a", "b", "pausing", "c"):
            queue.wake(key, LIVE)  # routine analyses, queued behind the busy worker
        queue.deadline("pausing", 0.0)
        await asyncio.sleep(0.02)
        release.set()
        await _until(lambda: len(work.runs) == 5)
        assert work.runs == ["blocker", "pausing", "a", "b", "c"]
        await queue.stop()

    _run(test)


def test_a_deadline_runs_an_idle_rollout_whose_timer_is_later_and_the_next_deadline_replaces_it() -> None:
    async def test() -> None:
        work = Recorder(delay=3600.0)  # each run asks for the next in an hour
        queue: Scheduler[str] = Scheduler(work, workers=2)
        queue.start()
        queue.wake("r")
        await _until(lambda: work.runs == ["r"])
        queue.deadline("r", 0.05)
        await _until(lambda: work.runs == ["r", "r"])
        queue.deadline("r", 0.05)
        queue.deadline("r", None)  # the next run planned no decision: the deadline set before is gone
        queue.deadline("gone", 0.0)  # a rollout the scheduler does not know: nothing
        await asyncio.sleep(0.2)
        assert work.runs == ["r", "r"]
        queue.deadline("r", 0.05)
        queue.forget("r")
        await asyncio.sleep(0.2)
        assert work.runs == ["r", "r"] and "gone" not in queue
        await queue.stop()

    _run(test)


def _held_workers(
    urgencies: list[int],
) -> tuple[Recorder, list[tuple[int, float]], Scheduler[str], list[str], list[asyncio.Event]]:
    """A started 16-worker scheduler with one held run woken per urgency given (in that order), and
    the queue waits it reports; set the releases to let the held runs end."""
    work = Recorder()
    waits: list[tuple[int, float]] = []
    queue: Scheduler[str] = Scheduler(work, workers=16, waited=lambda u, s: waits.append((u, s)))
    held = [f"busy-{i}" for i in range(len(urgencies))]
    releases = [work.hold.setdefault(key, asyncio.Event()) for key in held]
    queue.start()
    for key, urgency in zip(held, urgencies, strict=True):
        queue.wake(key, urgency)
    return work, waits, queue, held, releases


def test_a_decision_falling_due_has_workers_of_its_own_when_every_other_worker_is_held() -> None:
    """At 10,000 rollouts entering step 1, every worker waited on the saturated apiserver and a
    pause's end waited behind NOW runs (each route write's own echo among them)."""

    async def test() -> None:
        work, waits, queue, held, releases = _held_workers([NOW] * 20)
        await _until(lambda: len(work.running) == 18)  # 16, and the 2 that take only NOW runs
        queue.wake("pausing", DUE)
        await _until(lambda: "pausing" in work.runs)
        assert len(work.running) == 18 and not any(w in work.runs for w in held[18:])  # still held
        assert (DUE, waits[-1][1]) == waits[-1] and waits[-1][1] < 1.0
        for release in releases:
            release.set()
        await _until(lambda: len(work.runs) == 21)
        assert {u for u, _ in waits} == {NOW, DUE} and len(waits) == 21
        await queue.stop()

    _run(test)


def test_a_human_or_a_breach_has_workers_of_its_own_when_every_other_worker_is_held() -> None:
    """At 10,000 new rollouts every general worker waited on the saturated apiserver, and runs ranked
    NOW (an abort, a breach's wake) waited p50 <= 60 s for one."""

    async def test() -> None:
        work, waits, queue, _, releases = _held_workers([LIVE] * 20 + [NEW] * 20)
        await _until(lambda: len(work.running) == 16)
        queue.wake("aborted", NOW)
        await _until(lambda: "aborted" in work.runs)
        assert len(work.running) == 16 and (NOW, waits[-1][1]) == waits[-1] and waits[-1][1] < 1.0
        queue.wake("breached", NOW)
        await _until(lambda: "breached" in work.runs)
        for release in releases:
            release.set()
        await _until(lambda: len(work.runs) == 42)
        await queue.stop()

    _run(test)


def test_an_interval_run_taken_just_before_a_deadline_does_not_hold_the_decision() -> None:
    """At 10,000 rollouts an interval run, after waiting about an interval for a worker, started at a
    60 s pause's end and held the pause's own run behind its writes (p99 13 s late)."""

    async def test() -> None:
        work = Recorder()
        waits: list[tuple[int, float]] = []
        queue: Scheduler[str] = Scheduler(work, workers=16, waited=lambda u, s: waits.append((u, s)))
        queue.start()
        queue.wake("r", LIVE)
        await _until(lambda: work.runs == ["r"] and not work.running)
        release = work.hold.setdefault("r", asyncio.Event())  # the next run of r takes long
        queue.deadline("r", 0.3)
        queue.wake("r", LIVE)  # the interval run, taken at once, 0.3 s before the deadline
        await _until(lambda: len(work.runs) == 2)
        assert [u for u, _ in waits] == [LIVE, DUE]  # the run in progress is the deadline's
        release.set()
        await _until(lambda: not work.running)
        await queue.stop()

    _run(test)


def test_workers_give_the_event_loop_back_between_runs_that_never_wait() -> None:
    """Runs whose awaits all complete at once (a reconcile on cached reads) still let the loop turn
    between two of them: a get from a non-empty queue does not yield, and a worker drained the whole
    queue in one turn (after a restart at 10,000 rollouts, seconds)."""

    async def busy(key: str) -> float | None:
        until = time.monotonic() + 0.002
        while time.monotonic() < until:
            pass
        return None

    async def test() -> None:
        queue: Scheduler[str] = Scheduler(busy, workers=2)
        for i in range(300):
            queue.wake(f"r{i}", LIVE)
        ticks: list[float] = []

        async def ticker() -> None:
            while True:
                ticks.append(time.monotonic())
                await asyncio.sleep(0)

        ticking = asyncio.create_task(ticker())
        await asyncio.sleep(0)
        queue.start()
        await _until(lambda: not queue.pending(), timeout=10.0)
        ticking.cancel()
        await queue.stop()
        longest = max(b - a for a, b in itertools.pairwise(ticks))
        assert longest < 0.1, longest  # a run or two (2 ms each), not the queue (0.6 s)

    _run(test)
