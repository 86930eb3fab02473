"""The fast check between evaluations: which rollouts it watches, and that it wakes exactly those
whose hard bound is breached, from the shared building blocks (one read per block, not per rollout)."""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from agent_rollout import api
from agent_rollout.analysis.batch import BatchReader
from agent_rollout.analysis.prometheus import AnswerTimes
from agent_rollout.analysis.templates import SHARE_TOLERANCE, Block, BlockValues, Pair
from agent_rollout.api import Phase, Verdict, Weights
from agent_rollout.domain import iso
from agent_rollout.main import LOG_FORMAT
from agent_rollout.metrics import REGISTRY
from agent_rollout.planner import gate_windows
from agent_rollout.reconcile import measure_over
from agent_rollout.sentinel import Sentinel, SharedAnalyses, next_pause, rest_after
from e2e.bench.operator_scale import slow_cycles, wakes
from tests.fakes import FakeClock, FakePrometheus, unfocused
from tests.specs import CANDIDATE
from tests.test_reconcile import Metrics, rollout_body

STEPS = [{"setWeight": 5}, {"pause": {"duration": "1h"}}]


def _spec() -> api.AgentRolloutSpec:
    return api.parse_spec(rollout_body(STEPS)["spec"])


def _status(clock: FakeClock, candidate: int = 5, started_ago: float = 600) -> api.AgentRolloutStatus:
    return api.AgentRolloutStatus(
        phase=Phase.PROGRESSING,
        current_step=1,
        step_started_at=iso(clock.now - timedelta(seconds=started_ago)),
        weights=Weights(legacy=100 - candidate, candidate=candidate),
    )


def _sweep(sentinel: Sentinel) -> int:
    return asyncio.run(sentinel.sweep())


def test_breached_bound_wakes_the_rollout_and_a_healthy_one_sleeps() -> None:
    clock, metrics = FakeClock(), Metrics()
    prometheus = FakePrometheus(metrics)
    woken: list[tuple[str, str]] = []
    sentinel = Sentinel(clock=clock, wake=woken.append)
    sentinel.update(("support", "a"), _spec(), _status(clock), prometheus)
    sentinel.update(("support", "b"), _spec(), _status(clock), prometheus)

    assert _sweep(sentinel) == 0 and woken == []

    metrics.error_rate = 0.2
    sentinel.update(("support", "a"), _spec(), _status(clock, candidate=10), prometheus)
    sentinel.update(("support", "b"), _spec(), _status(clock, candidate=0), prometheus)
    assert _sweep(sentinel) == 1
    assert woken == [("support", "a")]  # b sends the candidate no traffic: nothing to cut


def test_one_read_per_block_whatever_the_number_of_rollouts() -> None:
    clock, metrics = FakeClock(), Metrics()
    prometheus = FakePrometheus(metrics)
    sentinel = Sentinel(clock=clock)
    for i in range(50):
        sentinel.update(("support", f"r{i}"), _spec(), _status(clock), prometheus)

    _sweep(sentinel)

    assert len(prometheus.queries) == 2  # the error-rate template's two blocks, shared by all 50


def test_each_sweep_reads_answers_newer_than_the_last_sweep_even_within_the_readers_ttl() -> None:
    clock, metrics = FakeClock(), Metrics()
    prometheus = FakePrometheus(metrics)
    seconds = [100.0]
    prometheus.reader = BatchReader(ttl=1.0, clock=lambda: seconds[0])  # as the operator's gateways
    sentinel = Sentinel(clock=clock, period=1.0, count_every=0.0)  # every block, every sweep
    sentinel.update(("support", "a"), _spec(), _status(clock), prometheus)
    _sweep(sentinel)
    assert len(prometheus.queries) == 2

    seconds[0] += 0.6  # the next sweep, a little early: the last answers are still within the TTL
    _sweep(sentinel)

    assert len(prometheus.queries) == 4


def test_a_rollout_known_to_have_full_windows_gets_short_ones_again_when_its_next_step_begins() -> None:
    clock, metrics = FakeClock(), Metrics(error_rate=0.5)
    prometheus = FakePrometheus(metrics)
    sentinel = Sentinel(clock=clock)
    sentinel.update(("support", "a"), _spec(), _status(clock, started_ago=600), prometheus)
    assert _sweep(sentinel) == 1
    assert _sweep(sentinel) == 1  # planned as one of the rollouts whose windows are all full
    assert all("[120s]" in q for q in prometheus.queries)

    sentinel.update(("support", "a"), _spec(), _status(clock, started_ago=2), prometheus)  # next step
    assert _sweep(sentinel) == 0  # 2 s of it: no window of its own yet
    clock.advance(10)
    prometheus.queries.clear()
    assert _sweep(sentinel) == 1
    assert prometheus.queries and not any("[120s]" in q for q in prometheus.queries)


def test_only_live_rollouts_with_candidate_traffic_and_a_window_of_their_own_are_checked() -> None:
    clock, metrics = FakeClock(), Metrics(error_rate=0.5)
    prometheus = FakePrometheus(metrics)
    woken: list[tuple[str, str]] = []
    sentinel = Sentinel(clock=clock, wake=woken.append)
    sentinel.update(("support", "a"), _spec(), _status(clock, candidate=0), prometheus)
    done = _status(clock).model_copy(update={"phase": Phase.ROLLED_BACK})
    sentinel.update(("support", "b"), _spec(), done, prometheus)
    sentinel.update(("support", "c"), _spec(), _status(clock, started_ago=2), prometheus)

    assert len(sentinel) == 1  # only "c" is watched, and its step is 2 s old: no window of its own yet
    assert _sweep(sentinel) == 0
    assert woken == []
    clock.advance(10)
    assert _sweep(sentinel) == 1 and woken == [("support", "c")]


def test_prometheus_down_wakes_nobody() -> None:
    clock, metrics = FakeClock(), Metrics(error_rate=0.5)
    prometheus = FakePrometheus(metrics)
    prometheus.down = "connection refused"
    woken: list[tuple[str, str]] = []
    sentinel = Sentinel(clock=clock, wake=woken.append)
    sentinel.update(("support", "a"), _spec(), _status(clock), prometheus)

    assert _sweep(sentinel) == 0 and woken == []


def test_sweeps_keep_their_period_while_cheap_and_stretch_when_expensive() -> None:
    assert next_pause(1.0, 0.1, busy=0.1) == pytest.approx(0.9)  # a second apart
    assert next_pause(1.0, 0.5, busy=0.5) == pytest.approx(1.5)  # never more than a quarter of the time busy
    assert next_pause(1.0, 2.0, busy=2.0) == pytest.approx(6.0)


def test_only_time_busy_on_the_event_loop_stretches_the_period_by_its_share() -> None:
    # Waiting on Prometheus costs the loop nothing: a sweep that waited its whole period for a slow
    # block is followed at once (the slow block is joined, not asked again).
    assert next_pause(1.0, 1.0, busy=0.2) == pytest.approx(0.0)
    assert next_pause(1.0, 0.3, busy=0.1) == pytest.approx(0.7)
    assert next_pause(1.0, 0.9, busy=0.1) == pytest.approx(0.1)


def test_a_block_slower_than_the_period_rests_so_prometheus_is_busy_with_it_two_thirds_of_the_time() -> None:
    # 9 s queries (a saturated Prometheus at 10,000 rollouts on 2 cores): not back to back.
    assert rest_after(1.0, 9.0) == pytest.approx(4.5)
    assert rest_after(1.0, 3.0) == pytest.approx(1.5)
    assert rest_after(1.0, 0.8) == 0.0


class SlowPrometheus(FakePrometheus):
    """Every block answers after `delay` seconds, or once `release` is set for blocks it `holds` (that
    start with it: answered empty) or that are `held` (answered)."""

    def __init__(self, metrics: Metrics, delay: float = 0.0, holds: str = "\0") -> None:
        super().__init__(metrics)
        self.delay, self.holds = delay, holds
        self.held: Callable[[str], bool] = lambda promql: promql.startswith(self.holds)
        self.release: asyncio.Event | None = None
        self.asked: list[str] = []  # every block read asked of it, held ones included

    async def block(
        self,
        block: Block,
        max_age: float | None = None,
        keys: frozenset[Pair] | None = None,
        stale_age: float | None = None,
        after: float | None = None,
        urgent: bool = False,
    ) -> BlockValues:
        self.asked.append(block.promql)
        if self.held(block.promql):
            assert self.release is not None
            await self.release.wait()
            if block.promql.startswith(self.holds):
                return {}
        await asyncio.sleep(self.delay)
        return await super().block(block, max_age, keys)


def test_waiting_on_prometheus_is_not_time_the_sweep_keeps_the_event_loop_busy() -> None:
    clock = FakeClock()
    sentinel = Sentinel(clock=clock)
    sentinel.update(("support", "a"), _spec(), _status(clock), SlowPrometheus(Metrics(), delay=0.3))
    started = time.monotonic()
    _sweep(sentinel)
    took = time.monotonic() - started

    assert took >= 0.3
    assert sentinel.busy < 0.1  # one rollout measured: a fraction of a millisecond of CPU


def test_a_sweep_lasts_its_period_with_its_planning_in_it_not_after_it() -> None:
    """The wait for slow blocks ends a period after the sweep began, not a period after its planning:
    at 10,000 rollouts planning took up to a quarter of a second, and the sweep's cycle (so the errors
    block's: a breach waited for it) was that much longer than the period."""
    plan, period = 0.5, 0.5
    clock = FakeClock()

    def slow_clock() -> datetime:
        time.sleep(plan)  # the sweep reads the clock once, as it starts planning
        return clock()

    prometheus = SlowPrometheus(Metrics(), holds="sum by")  # every block is held: the sweep waits it out
    sentinel = Sentinel(clock=slow_clock, period=period)
    sentinel.update(("support", "a"), _spec(), _status(clock), prometheus)

    async def timed() -> float:
        prometheus.release = asyncio.Event()
        started = time.monotonic()
        await sentinel.sweep()
        took = time.monotonic() - started
        sentinel._stop_asking()
        return took

    took = asyncio.run(timed())
    assert plan <= took < plan + period * 0.8  # planned, then the rest of the period (nothing of it)


def test_planning_longer_than_the_period_still_measures_what_has_answered() -> None:
    """A sweep past its deadline once planned still takes the answers that are in: on a loop busy
    enough that planning outlasts the period, the fast check slows down but never goes blind."""
    clock, metrics = FakeClock(), Metrics(error_rate=0.5)

    def slow_clock() -> datetime:
        time.sleep(0.05)
        return clock()

    woken: list[tuple[str, str]] = []
    sentinel = Sentinel(clock=slow_clock, period=0.01, wake=woken.append)
    sentinel.update(("support", "a"), _spec(), _status(clock), FakePrometheus(metrics))

    async def sweeps() -> None:
        for _ in range(3):
            await sentinel.sweep()
            if woken:
                return
        sentinel._stop_asking()

    asyncio.run(sweeps())
    assert woken == [("support", "a")]


def test_a_breach_wakes_its_rollout_before_the_blocks_of_its_other_gates_arrive() -> None:
    spec = rollout_body(STEPS)["spec"]
    latency = {"name": "p95", "template": "latencyQuantile", "max": 8, "window": "2m"}
    spec["analysis"]["gates"].append(latency)
    prometheus = SlowPrometheus(Metrics(error_rate=0.5), holds="histogram_quantile")
    clock = FakeClock()

    async def scenario() -> None:
        prometheus.release = asyncio.Event()
        woke = asyncio.Event()
        sentinel = Sentinel(clock=clock, wake=lambda key: woke.set())
        sentinel.update(("support", "a"), api.parse_spec(spec), _status(clock), prometheus)
        assert sentinel._watched[("support", "a")].gates == ("error-rate", "p95")
        sweep = asyncio.create_task(sentinel.sweep())
        await asyncio.wait_for(woke.wait(), timeout=10)  # the latency histogram is still held back

        assert not sweep.done()
        prometheus.release.set()
        assert await sweep == 1

    asyncio.run(scenario())


def test_rollouts_with_equal_analyses_share_one_and_the_last_to_leave_takes_it_along() -> None:
    shared = SharedAnalyses()
    first = shared.share(_spec().analysis)  # type: ignore[arg-type]
    for _ in range(99):
        assert shared.share(_spec().analysis) is first  # type: ignore[arg-type]
    other = _spec().analysis.model_copy(update={"min_samples": 7})  # type: ignore[union-attr]
    assert shared.share(other) is other
    assert len(shared) == 2
    for _ in range(100):
        shared.release(_spec().analysis)  # type: ignore[arg-type]
    assert len(shared) == 1  # only the other one is still watched
    shared.release(other)
    assert len(shared) == 0


def test_a_watched_rollout_still_wakes_after_the_others_with_its_analysis_left() -> None:
    clock, metrics = FakeClock(), Metrics()
    prometheus = FakePrometheus(metrics)
    sentinel = Sentinel(clock)
    for name in ("a", "b", "c"):
        sentinel.update(("support", name), _spec(), _status(clock), prometheus)
    sentinel.forget(("support", "a"))
    sentinel.update(("support", "b"), _spec(), _status(clock, candidate=0), prometheus)  # not watched now
    metrics.error_rate = 0.5
    assert _sweep(sentinel) == 1  # c, on the analysis it shared with a and b


def test_young_steps_are_read_focused_and_the_evaluation_they_wake_reuses_the_answer() -> None:
    """A step younger than the gate's window is judged on a shorter one (planner.gate_windows): only the
    rollouts in such steps need that window, so the sweep reads it for their series only; the woken
    rollout's evaluation, a moment later, finds its series in that answer and asks Prometheus nothing."""
    clock = FakeClock()
    young, breached = {f"team-{i}" for i in range(0, 20, 2)}, "team-4"

    def answer(promql: str) -> list[tuple[dict[str, str], float]]:
        errors = "error_type" in promql
        return [
            (
                {"namespace": f"team-{i}", "version": f"agent-{i}"},
                (500.0 if f"team-{i}" == breached else 1.0) if errors else 1000.0,
            )
            for i in range(20)
        ]

    prometheus = FakePrometheus(answer)
    prometheus.reader = BatchReader(ttl=1.0, longest=5.0, gather=0, clock=lambda: 100.0)
    woken: list[tuple[str, str]] = []
    sentinel = Sentinel(clock=clock, wake=woken.append)
    specs = {}
    for i in range(20):
        body = rollout_body(STEPS)
        body["spec"]["candidate"]["deployment"] = f"agent-{i}"
        specs[f"team-{i}"] = spec = api.parse_spec(body["spec"])
        started_ago = 30 if f"team-{i}" in young else 600
        sentinel.update((f"team-{i}", "r"), spec, _status(clock, started_ago=started_ago), prometheus)

    assert _sweep(sentinel) == 1 and woken == [(breached, "r")]
    whole = [q for q in prometheus.queries if "[120s]" in q]
    focused = [q for q in prometheus.queries if "[30s]" in q]
    assert len(whole) == 2 and len(focused) == 2 and len(prometheus.queries) == 4
    assert all("namespace=~" not in q for q in whole)
    for query in focused:
        _, selects = unfocused(query)
        chosen = {
            f"team-{i}" for i in range(20) if selects({"namespace": f"team-{i}", "version": f"agent-{i}"})
        }
        assert chosen == young

    async def evaluate() -> tuple[api.GateResult, ...]:
        spec = specs[breached]
        windows = gate_windows(spec, _status(clock, started_ago=30), clock.now)
        return await measure_over(spec, windows, breached, prometheus)

    results = asyncio.run(evaluate())
    assert len(prometheus.queries) == 4  # the sweep's answers: no query of its own
    assert results[0].verdict is api.Verdict.FAIL and results[0].value == 0.5


def test_a_slow_block_is_waited_for_by_the_next_sweeps_while_the_fast_ones_are_asked_every_period() -> None:
    """At 10,000 rollouts the latency histogram took ~3 s, the counters ~1 s: an error-rate breach
    must not wait for the histogram's query to end before the next sweep asks for the counters."""
    spec = rollout_body(STEPS)["spec"]
    spec["analysis"]["gates"].append({"name": "p95", "template": "latencyQuantile", "max": 8, "window": "2m"})
    metrics = Metrics()
    prometheus = SlowPrometheus(metrics, holds="histogram_quantile")
    clock = FakeClock()

    async def scenario() -> None:
        prometheus.release = asyncio.Event()
        woken: list[tuple[str, str]] = []
        sentinel = Sentinel(clock=clock, period=0.05, wake=woken.append, count_every=0.0)
        sentinel.update(("support", "a"), api.parse_spec(spec), _status(clock), prometheus)
        for _ in range(3):
            assert await asyncio.wait_for(sentinel.sweep(), timeout=5) == 0  # each ends at its period
        latency = [q for q in prometheus.asked if q.startswith("histogram_quantile")]
        assert len(latency) == 1  # asked once, waited for by the sweeps that followed
        counters = [q for q in prometheus.asked if q.startswith("sum by")]
        assert len(counters) == 3 * 2  # both counter blocks, every sweep

        metrics.error_rate = 0.5  # a breach while the histogram is still held
        assert await asyncio.wait_for(sentinel.sweep(), timeout=5) == 1 and woken == [("support", "a")]

        prometheus.release.set()  # the held query answers; a later sweep measures it (nothing breached)
        await asyncio.wait_for(sentinel.sweep(), timeout=5)
        assert not sentinel._flying  # its answer was taken

    asyncio.run(scenario())


async def _both_blocks_rested(count_every: float) -> tuple[Sentinel, SlowPrometheus]:
    """A sentinel whose two blocks (errors, every request's count) answered in 0.15 s, more than its
    period of 0.1 s, and whose rests (0.075 s) are over, with no sweep since."""
    prometheus, clock = SlowPrometheus(Metrics(), delay=0.15), FakeClock()
    sentinel = Sentinel(clock=clock, period=0.1, count_every=count_every)
    sentinel.update(("support", "a"), _spec(), _status(clock), prometheus)
    await asyncio.wait_for(sentinel.sweep(), timeout=5)  # sends both blocks, waits a period
    await asyncio.wait_for(sentinel.sweep(), timeout=5)  # takes their answers
    assert len(prometheus.asked) == 2
    await asyncio.sleep(0.3)
    return sentinel, prometheus


class DecodedSlowly(FakePrometheus):
    """Prometheus answers in `round_trip` seconds (answered_in, as the gateway records it), but each
    answer reaches the sweep `delay` seconds after it was asked: the rest waited for a worker thread
    and a turn to be decoded, as fleet answers do at 10,000 rollouts."""

    def __init__(self, metrics: Metrics, delay: float, round_trip: float | None) -> None:
        super().__init__(metrics)
        self.delay, self.round_trip = delay, round_trip
        self.sent: list[float] = []
        self.sent_queries: list[tuple[str, float]] = []
        self.answered: list[float] = []  # when each answer reached the sweep

    async def _run(self, promql: str, parse: Callable[[Any], Any], urgent: bool = False) -> Any:
        self.sent.append(time.monotonic())
        self.sent_queries.append((promql, self.sent[-1]))
        await asyncio.sleep(self.delay)
        self.answered.append(time.monotonic())
        if self.round_trip is not None:  # the rest of the delay waiting for a worker
            queued = self.delay - self.round_trip
            self._times[promql] = AnswerTimes(queued, self.round_trip, 0.0, 0.0, time.monotonic())
        return await super()._run(promql, parse, urgent)


@pytest.mark.parametrize(("round_trip", "rests"), [(0.02, False), (None, True)])
def test_a_block_rests_for_prometheus_time_not_for_the_wait_to_decode_its_answer(
    round_trip: float | None, rests: bool
) -> None:
    """A block whose answer took longer than the period rests (MAX_WAIT_SHARE) to spare Prometheus:
    when Prometheus answered at once and the time went to decoding here, it is asked again by the
    next sweep; with no round trip known, the whole wait counts, as before."""
    prometheus, clock = DecodedSlowly(Metrics(), delay=1.0, round_trip=round_trip), FakeClock()

    async def scenario() -> float:
        sentinel = Sentinel(clock=clock, period=0.2, count_every=0.0)
        sentinel.update(("support", "a"), _spec(), _status(clock), prometheus)
        for _ in range(8):  # sends both blocks, waits for them; the next ones take their answers
            await asyncio.wait_for(sentinel.sweep(), timeout=5)
            if len(prometheus.sent) > 2:
                break
        await asyncio.sleep(0.8)  # a rest of 0.5 s is over
        assert len(prometheus.sent) >= 3
        return prometheus.sent[2] - prometheus.answered[0]  # the errors block: answered -> asked again

    again = asyncio.run(scenario())  # about a period (0.2 s) at most, or the rest (0.5 s)
    assert (again > 0.4) is rests, again


def test_a_value_block_slower_than_the_period_is_asked_again_once_its_answer_is_taken() -> None:
    """An answer that took longer than the period to come back (here 0.3 s against 0.2, Prometheus'
    part 0.02 s: no rest) is followed by the next query as soon as a sweep takes it, not by the next
    sweep's (0.4 s apart without: two periods, the sweep that took it asking nothing more)."""
    prometheus, clock = DecodedSlowly(Metrics(), delay=0.3, round_trip=0.02), FakeClock()

    async def scenario() -> list[float]:
        sentinel = Sentinel(clock=clock, period=0.2, count_every=60.0)
        sentinel.update(("support", "a"), _spec(), _status(clock), prometheus)
        running = asyncio.create_task(sentinel.run())
        await asyncio.sleep(2.0)
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
        errors = next(q for q, _ in prometheus.sent_queries if 'error_type!=""' in q)
        sent = [at for q, at in prometheus.sent_queries if q == errors]
        return [b - a for a, b in itertools.pairwise(sent)]

    gaps = asyncio.run(scenario())
    assert len(gaps) >= 4, gaps
    # The answer's 0.3 s and the sweep taking it (0.30 s here), not two periods (0.40-0.42 s without).
    assert sorted(gaps[1:])[len(gaps) // 2 - 1] < 0.37, gaps


def test_a_resting_block_is_asked_again_when_its_rest_ends_not_at_a_later_sweep() -> None:
    """A block slower than the period rests half its duration, then is asked at once: at 10,000
    rollouts a 1.5 s counter query waited for the next sweep after its rest too, one every 3 s."""

    async def scenario() -> None:
        sentinel, prometheus = await _both_blocks_rested(count_every=0.0)
        assert len(prometheus.asked) == 4  # both asked again once rested, for the next sweep to take
        assert await asyncio.wait_for(sentinel.sweep(), timeout=5) == 0
        # That sweep took those answers; only the value block may be asked again as it took it (its
        # query a period old and its rest over: _ask_again_if_due), never the count.
        again = prometheus.asked[4:]
        assert len(again) <= 1 and all('error_type!=""' in q for q in again), again
        sentinel.forget(("support", "a"))
        await asyncio.sleep(0.3)
        await asyncio.wait_for(sentinel.sweep(), timeout=5)  # nobody reads the blocks any more
        await asyncio.sleep(0.3)
        asked = len(prometheus.asked)
        assert asked <= 7  # at most the rests and the query already under way
        await asyncio.sleep(0.3)
        assert len(prometheus.asked) == asked  # then nothing

    asyncio.run(scenario())


def test_a_stopped_fast_check_asks_prometheus_nothing_more() -> None:
    prometheus = SlowPrometheus(Metrics(), delay=0.08)
    clock = FakeClock()

    async def scenario() -> None:
        sentinel = Sentinel(clock=clock, period=0.05)
        sentinel.update(("support", "a"), _spec(), _status(clock), prometheus)
        running = asyncio.create_task(sentinel.run())
        while not sentinel._relaunch:  # a block rests, to be asked again when its rest ends
            await asyncio.sleep(0.01)
        running.cancel()
        with pytest.raises(asyncio.CancelledError):
            await running
        asked = len(prometheus.asked)
        await asyncio.sleep(0.3)
        assert len(prometheus.asked) == asked

    asyncio.run(scenario())


def _requests_only(promql: str) -> bool:
    """The error rate's denominator (every request), not its errors block."""
    return "_count" in promql and "error_type" not in promql


@pytest.mark.parametrize("kept_age, woken_while_held", [(10.0, True), (0.0, False)])
def test_a_breach_in_the_errors_is_seen_without_waiting_for_a_slow_denominator(
    kept_age: float, woken_while_held: bool
) -> None:
    """At 10,000 rollouts the query of every request took 1.5-3 s and rested after it, the errors'
    query took milliseconds: the error rate is measured with the last answer of every request while
    it is young (Sentinel.kept_age), and a breach waits for neither the query nor its rest."""
    metrics = Metrics()
    prometheus = SlowPrometheus(metrics)
    clock = FakeClock()

    async def scenario() -> None:
        woken: list[tuple[str, str]] = []
        sentinel = Sentinel(clock=clock, period=0.05, wake=woken.append, kept_age=kept_age)
        sentinel.update(("support", "a"), _spec(), _status(clock), prometheus)
        assert await asyncio.wait_for(sentinel.sweep(), timeout=5) == 0  # both blocks answered, kept
        prometheus.release, prometheus.held = asyncio.Event(), _requests_only
        assert await asyncio.wait_for(sentinel.sweep(), timeout=5) == 0  # asks it: held from now on
        held = [q for q in prometheus.asked if _requests_only(q)]

        metrics.error_rate = 0.5
        woke = await asyncio.wait_for(sentinel.sweep(), timeout=5)

        assert [q for q in prometheus.asked if _requests_only(q)] == held  # still the one in flight
        assert (woke, woken) == ((1, [("support", "a")]) if woken_while_held else (0, []))
        prometheus.release.set()
        assert await asyncio.wait_for(sentinel.sweep(), timeout=5) == 1  # with every request's fresh answer
        assert woken[-1:] == [("support", "a")]

    asyncio.run(scenario())


def _watching_one(
    prometheus: FakePrometheus, clock: FakeClock, **settings: float
) -> tuple[Sentinel, list[tuple[str, str]]]:
    """A sentinel watching support/a (the error-rate spec), and the rollouts it wakes."""
    woken: list[tuple[str, str]] = []
    sentinel = Sentinel(clock=clock, wake=woken.append, **settings)
    sentinel.update(("support", "a"), _spec(), _status(clock), prometheus)
    return sentinel, woken


def test_every_requests_count_is_asked_once_per_count_period_and_a_breach_is_seen_every_sweep() -> None:
    """The count of every request (the error rate's denominator, every read's samples) is asked at
    most once per count_every; the sweeps between measure on its last answer, so an error breach
    is still seen at the first sweep after it, and the count is asked again once that period is over."""
    metrics = Metrics()
    prometheus = SlowPrometheus(metrics)
    clock = FakeClock()

    async def scenario() -> None:
        sentinel, woken = _watching_one(prometheus, clock, period=0.02, count_every=0.3)
        for _ in range(5):
            assert await asyncio.wait_for(sentinel.sweep(), timeout=5) == 0
        asked = prometheus.asked
        assert len([q for q in asked if _requests_only(q)]) == 1  # five sweeps, one count
        assert len([q for q in asked if "error_type" in q]) == 5  # the errors, every sweep

        metrics.error_rate = 0.5
        assert await asyncio.wait_for(sentinel.sweep(), timeout=5) == 1 and woken == [("support", "a")]
        assert len([q for q in asked if _requests_only(q)]) == 1  # seen on the count asked before

        await asyncio.sleep(0.3)
        await asyncio.wait_for(sentinel.sweep(), timeout=5)
        assert len([q for q in asked if _requests_only(q)]) == 2  # its period over: asked again

    asyncio.run(scenario())


def test_a_breach_is_seen_in_the_sweep_that_asks_the_count_again_without_waiting_for_it() -> None:
    """The count's turn comes every count_every: the sweep that asks it again measures the errors'
    news on the count's last answer, not after the new one. At 10,000 rollouts the count took 0.5-1.1
    s, the errors 0.2 s: waiting held every read it is in, past the sweep's deadline at times."""
    metrics = Metrics()
    prometheus = SlowPrometheus(metrics)
    clock = FakeClock()

    async def scenario() -> None:
        sentinel, woken = _watching_one(prometheus, clock, period=0.05, count_every=0.3)
        assert await asyncio.wait_for(sentinel.sweep(), timeout=5) == 0  # both answered, kept
        prometheus.release, prometheus.held = asyncio.Event(), _requests_only
        await asyncio.sleep(0.3)  # the count's period is over: the next sweep asks it again

        metrics.error_rate = 0.5
        woke = await asyncio.wait_for(sentinel.sweep(), timeout=5)

        assert sum(map(_requests_only, prometheus.asked)) == 2  # asked again, held
        assert (woke, woken) == (1, [("support", "a")])
        prometheus.release.set()

    asyncio.run(scenario())


def test_a_rollout_whose_young_window_joins_a_count_asked_for_others_is_measured_at_once() -> None:
    """A young window's count is asked for the rollouts in such a step: one whose step begins after it
    is not in that answer, so the count is asked again for it rather than waiting out COUNT_EVERY with
    that rollout unmeasured (its samples would read as none, and its breach as nothing)."""
    clock = FakeClock()
    breached: set[str] = set()

    def answer(promql: str) -> list[tuple[dict[str, str], float]]:
        errors = "error_type" in promql
        return [
            (
                {"namespace": f"team-{i}", "version": f"agent-{i}"},
                (500.0 if f"team-{i}" in breached else 1.0) if errors else 1000.0,
            )
            for i in range(2)
        ]

    prometheus = FakePrometheus(answer)
    woken: list[tuple[str, str]] = []
    sentinel = Sentinel(clock=clock, wake=woken.append, count_every=10.0)
    specs = {}
    for i in range(2):
        body = rollout_body(STEPS)
        body["spec"]["candidate"]["deployment"] = f"agent-{i}"
        specs[i] = api.parse_spec(body["spec"])
    sentinel.update(("team-0", "r"), specs[0], _status(clock, started_ago=30), prometheus)
    sentinel.update(("team-1", "r"), specs[1], _status(clock, started_ago=600), prometheus)
    assert _sweep(sentinel) == 0
    counts = [q for q in prometheus.queries if "[30s]" in q and "error_type" not in q]
    assert len(counts) == 1  # the young window's count, for team-0

    breached.add("team-1")  # team-1's next step begins, and its candidate fails at once
    sentinel.update(("team-1", "r"), specs[1], _status(clock, started_ago=30), prometheus)
    assert _sweep(sentinel) == 1 and woken == [("team-1", "r")]
    counts = [q for q in prometheus.queries if "[30s]" in q and "error_type" not in q]
    assert len(counts) == 2  # asked again, for both: not one count period later


def test_a_resting_count_is_not_asked_before_its_count_period_is_over() -> None:
    """A count slower than the period rests, and its rest ends before its count period: the sweep
    after the count period asks it, not the rest's end (which asks other blocks at once)."""

    async def scenario() -> None:
        sentinel, prometheus = await _both_blocks_rested(count_every=1.0)
        assert [_requests_only(q) for q in prometheus.asked] == [False, True, False]  # the errors again
        await asyncio.sleep(0.8)
        assert await asyncio.wait_for(sentinel.sweep(), timeout=5) == 0
        assert sum(map(_requests_only, prometheus.asked)) == 2  # the count period is over: asked

    asyncio.run(scenario())


def _phase_count(phase: str) -> float:
    value = REGISTRY.get_sample_value("agent_rollout_fast_check_sweep_seconds_count", {"phase": phase})
    return value or 0.0


def test_the_sweeps_own_time_reaches_the_metrics_by_phase() -> None:
    clock, metrics = FakeClock(), Metrics()
    prometheus = FakePrometheus(metrics)
    # A period long enough for the fake's answers to be in before it ends, so each sweep measures.
    sentinel = Sentinel(clock=clock, period=0.2)
    sentinel.update(("support", "a"), _spec(), _status(clock), prometheus)
    before = {phase: _phase_count(phase) for phase in ("plan", "query", "measure", "cycle")}

    async def three_sweeps() -> None:
        task = asyncio.create_task(sentinel.run())
        while _phase_count("cycle") < before["cycle"] + 3:  # the fourth sweep began: three ended
            await asyncio.sleep(0.005)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(asyncio.wait_for(three_sweeps(), timeout=10))

    assert _phase_count("plan") >= before["plan"] + 3
    assert _phase_count("query") >= before["query"] + 3  # at least the errors, every sweep
    assert _phase_count("measure") >= before["measure"] + 3  # the error-rate read, once a sweep
    assert _phase_count("cycle") >= before["cycle"] + 2


class LatencyMetrics(Metrics):
    """Metrics with a latency histogram: bucket bounds 1, 5 and 10 s as Prometheus 3 spells them
    ("5.0"), the candidate's p95 and its share of requests at or under 5 s."""

    def __init__(self, p95: float, under_5s: float) -> None:
        super().__init__()
        self.p95, self.under_5s = p95, under_5s

    def __call__(self, promql: str) -> Any:
        candidate = {"namespace": "support", "version": CANDIDATE}
        if promql.startswith("count by (le) "):
            self.asked.append(promql)
            return [({"le": le}, 3.0) for le in ("1.0", "5.0", "10.0", "+Inf")]
        if promql.startswith("histogram_quantile"):
            self.asked.append(promql)
            return [(candidate, self.p95)]
        if "group_left" in promql and "5\\\\.0" in promql:  # the 5 s bucket's shortfall
            self.asked.append(promql)
            shortfall = 0.95 + SHARE_TOLERANCE - self.under_5s  # of one request: only its sign matters
            return [(candidate, shortfall)] if shortfall > 0 else []  # `> 0`: only the suspects
        return super().__call__(promql)


def _latency_spec() -> api.AgentRolloutSpec:
    spec = rollout_body(STEPS)["spec"]
    spec["analysis"]["gates"].append({"name": "p95", "template": "latencyQuantile", "max": 8, "window": "2m"})
    return api.parse_spec(spec)


def _sweeps_with_bounds(sentinel: Sentinel, sweeps: int) -> list[int]:
    """Sweeps once the bucket bounds are known (the first sweep asks them, for later ones)."""

    async def run() -> list[int]:
        await sentinel.sweep()
        while not sentinel._bounds:
            await asyncio.sleep(0.01)
        return [await sentinel.sweep() for _ in range(sweeps)]

    return asyncio.run(asyncio.wait_for(run(), timeout=10))


@pytest.mark.parametrize(
    "p95, under_5s, woken",
    [
        (2.0, 0.99, False),  # healthy: 99% at or under 5 s, so the p95 is too; the quantile is not asked
        (12.0, 0.5, True),  # a breach: the share makes it a suspect, its quantile confirms
        (7.0, 0.9, False),  # a suspect (p95 above 5 s) whose quantile is under the max of 8 s
    ],
)
def test_a_latency_max_is_read_from_one_bucket_and_only_suspects_ask_the_quantile(
    p95: float, under_5s: float, woken: bool
) -> None:
    """At 10,000 rollouts the quantile over every bucket was half of Prometheus' query time: the
    fast check reads the share of requests at or under the highest bucket bound under the max, and
    asks the quantile only when that share cannot rule a breach out, in the same sweep."""
    clock, metrics = FakeClock(), LatencyMetrics(p95, under_5s)
    rollouts: list[tuple[str, str]] = []
    sentinel = Sentinel(clock=clock, period=0.2, wake=rollouts.append)
    sentinel.update(("support", "a"), _latency_spec(), _status(clock), FakePrometheus(metrics))

    first = len(metrics.asked)
    results = _sweeps_with_bounds(sentinel, 2)
    asked = metrics.asked[first:]

    quantiles = [q for q in asked if q.startswith("histogram_quantile")]
    after_bounds = asked[asked.index(next(q for q in asked if q.startswith("count by (le)"))) + 1 :]
    assert any("group_left" in q for q in after_bounds)
    if under_5s >= 0.95:
        assert not [q for q in after_bounds if q.startswith("histogram_quantile")]
    else:
        assert len([q for q in after_bounds if q.startswith("histogram_quantile")]) >= 1
    assert quantiles  # before the bounds were known, the quantile itself
    assert (
        (results[-1] == 1) is woken
        and (rollouts == [("support", "a")] * len(rollouts))
        and bool(rollouts) is woken
    )


def test_a_latency_max_under_every_bucket_bound_is_read_from_the_quantile_itself() -> None:
    clock, metrics = FakeClock(), LatencyMetrics(p95=0.9, under_5s=1.0)
    spec = rollout_body(STEPS)["spec"]
    spec["analysis"]["gates"].append({"name": "p95", "template": "latencyQuantile", "max": 0.5})
    sentinel = Sentinel(clock=clock, period=0.2, wake=lambda key: None)
    sentinel.update(("support", "a"), api.parse_spec(spec), _status(clock), FakePrometheus(metrics))

    assert _sweeps_with_bounds(sentinel, 1) == [1]  # p95 0.9 s > 0.5 s: no bucket can tell
    assert not [q for q in metrics.asked if "group_left" in q]


def test_a_suspect_is_confirmed_by_a_quantile_another_rollout_already_read_in_the_sweep() -> None:
    """One rollout's gate has a `min` too, so its quantile is read itself; another's is read from a
    bucket. Both breach: the second one's exact read finds the quantile already in and is measured
    at once, not left waiting for an answer that is not coming."""
    clock, metrics = FakeClock(), LatencyMetrics(p95=12.0, under_5s=0.5)
    both = rollout_body(STEPS)["spec"]
    both["analysis"]["gates"].append(
        {"name": "p95", "template": "latencyQuantile", "min": 0.001, "max": 8, "window": "2m"}
    )
    woken: list[tuple[str, str]] = []
    sentinel = Sentinel(clock=clock, period=0.2, wake=woken.append)
    prometheus = FakePrometheus(metrics)
    sentinel.update(("support", "exact"), api.parse_spec(both), _status(clock), prometheus)
    sentinel.update(("support", "bucket"), _latency_spec(), _status(clock), prometheus)

    assert _sweeps_with_bounds(sentinel, 1) == [2]
    assert sorted(woken[-2:]) == [("support", "bucket"), ("support", "exact")]


def test_a_confirmed_latency_breach_is_judged_by_its_evaluation_on_an_answer_sent_after_it() -> None:
    """The evaluation a confirmed breach wakes reads that gate from queries sent after the suspicion:
    the fleet's quantile in the reader's cache (up to the evaluation's max age old) predates the
    breach, and judged on it the woken evaluation passes and no traffic moves. The confirmation's own
    answer is sent after the suspicion, never one sent before it."""
    clock, metrics = FakeClock(), LatencyMetrics(p95=2.0, under_5s=0.99)
    prometheus = FakePrometheus(metrics)
    prometheus.reader = BatchReader(ttl=1.0, longest=5.0, gather=0)  # as the operator's gateways
    woken: list[tuple[str, str]] = []
    sentinel = Sentinel(clock=clock, period=0.2, wake=woken.append)
    key, spec, status = ("support", "a"), _latency_spec(), _status(clock)
    sentinel.update(key, spec, status, prometheus)
    windows = gate_windows(spec, status, clock.now)

    async def scenario() -> None:
        def p95(results: tuple[api.GateResult, ...]) -> api.GateResult:
            return next(r for r in results if r.name == "p95")

        assert p95(await measure_over(spec, windows, "support", prometheus)).verdict is Verdict.PASS
        await sentinel.sweep()
        while not sentinel._bounds:
            await asyncio.sleep(0.01)
        metrics.p95, metrics.under_5s = 12.0, 0.5  # the breach reaches Prometheus
        assert await sentinel.sweep() == 1 and woken == [key]

        fresh = sentinel.fresh_reads(key)
        assert set(fresh) == {"p95"}
        stale = p95(await measure_over(spec, windows, "support", prometheus))
        assert stale.verdict is Verdict.PASS  # the fleet's cached answer, sent before the breach
        asked = len(metrics.asked)
        judged = p95(await measure_over(spec, windows, "support", prometheus, fresh=fresh))
        assert judged.verdict is Verdict.FAIL and judged.value == 12.0
        assert not [q for q in metrics.asked[asked:] if "_bucket" in q]  # the confirmation's answer
        assert sentinel.fresh_reads(key) == {}  # taken once

    asyncio.run(asyncio.wait_for(scenario(), timeout=10))


def test_a_confirmation_that_fails_with_a_bug_is_logged_and_the_sweep_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The fast check only speeds things up: a suspect's exact read failing with something that is not
    Prometheus' (a bug) wakes nobody, is logged, and does not fail the sweep (the interval's evaluation
    still judges the gate)."""
    clock, metrics = FakeClock(), LatencyMetrics(p95=12.0, under_5s=0.5)
    prometheus = FakePrometheus(metrics)
    read = prometheus.block

    async def block(b: Block, *args: Any, keys: frozenset[Pair] | None = None, **kwargs: Any) -> BlockValues:
        if keys is not None and b.promql.startswith("histogram_quantile"):
            raise RuntimeError("a bug in the exact read")
        return await read(b, *args, keys=keys, **kwargs)

    prometheus.block = block  # type: ignore[method-assign]
    woken: list[tuple[str, str]] = []
    sentinel = Sentinel(clock=clock, period=0.2, wake=woken.append)
    sentinel.update(("support", "a"), _latency_spec(), _status(clock), prometheus)

    assert _sweeps_with_bounds(sentinel, 2) == [0, 0]
    assert woken == [("support", "a")]  # by the first sweep, which read the quantile before the bounds
    assert "confirming a latency breach failed" in caplog.text


def test_a_sweep_asks_the_requests_count_once_its_value_block_has_answered_not_beside_it() -> None:
    """With the lanes on (AGENT_ROLLOUT_LANE_WAIT > 0; off by default): the errors block (a breach is
    seen through it) goes alone, and every request's count (the ratio's denominator, taken from its
    last answer by the reads) is sent after it."""
    clock = FakeClock()
    order: list[str] = []

    class OneAtATime(FakePrometheus):
        async def _run(self, promql: str, parse: Callable[[Any], Any], urgent: bool = False) -> Any:
            name = "errors" if 'error_type!=""' in promql else "count"
            order.append(f"{name} sent")
            if name == "errors":
                await asyncio.sleep(0.05)
            answer = await super()._run(promql, parse, urgent)
            order.append(f"{name} answered")
            return answer

    prometheus = OneAtATime(Metrics())
    prometheus.reader = BatchReader(ttl=0, gather=0, quiet_wait=1.0)
    sentinel = Sentinel(clock=clock)
    sentinel.update(("support", "a"), _spec(), _status(clock), prometheus)
    _sweep(sentinel)

    assert order == ["errors sent", "errors answered", "count sent", "count answered"]


def test_a_slow_cycle_is_logged_with_where_its_time_went(
    caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    # Nothing to watch: each sweep is a few microseconds, so the cycle is the pause (0.05 s) unless
    # the event loop is too busy to resume the fast check when its pause ends, as here once.
    sentinel = Sentinel(clock=FakeClock(), period=0.05)

    async def main() -> None:
        task = asyncio.get_running_loop().create_task(sentinel.run())
        await asyncio.sleep(0.12)  # two cycles on time: nothing logged
        assert not [r for r in caplog.records if "fast check" in r.getMessage()]
        time.sleep(0.3)  # another task holds the event loop
        await asyncio.sleep(0.12)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    with caplog.at_level("INFO", logger="agent_rollout.sentinel"):
        asyncio.run(main())
    # As the operator logs it and the scale benchmark reads it back.
    log = tmp_path / "operator.log"
    log.write_text("".join(logging.Formatter(LOG_FORMAT).format(r) + "\n" for r in caplog.records))
    slow = slow_cycles(log, 0)
    assert len(slow) == 1, slow
    _, cycle, text = slow[0]
    late = float(text.split("resumed ")[1].split(" s")[0])
    assert cycle >= 0.3 and late >= 0.25 and cycle - late < 0.1, slow
    assert abs(slow[0][0] - caplog.records[-1].created) < 1.0  # read back as the wall time it was logged


def test_a_wake_says_how_old_the_answer_its_breach_was_seen_in_is(
    caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    """The wake's log line carries the age of the value block's answer: from its query's sending,
    Prometheus' part of that, and from its arrival. Read back by the scale benchmark (wakes)."""
    metrics = Metrics()
    metrics.error_rate = 0.5
    prometheus, clock = DecodedSlowly(metrics, delay=0.3, round_trip=0.02), FakeClock()
    woken: list[tuple[str, str]] = []

    async def scenario() -> None:
        sentinel = Sentinel(clock=clock, period=0.5, wake=woken.append, count_every=0.0)
        sentinel.update(("support", "a"), _spec(), _status(clock), prometheus)
        await asyncio.wait_for(sentinel.sweep(), timeout=5)

    with caplog.at_level("INFO", logger="agent_rollout.sentinel"):
        asyncio.run(scenario())
    assert woken == [("support", "a")]
    log = tmp_path / "operator.log"
    log.write_text("".join(logging.Formatter(LOG_FORMAT).format(r) + "\n" for r in caplog.records))
    said = wakes(log, 0, {("support", "a")})[("support", "a")][1]
    numbers = [float(word) for word in said.replace("(", " ").split() if word[0].isdigit()]
    sent, queued, prometheus_part, turn, decode, to_sweep, here = numbers
    assert sent - here >= 0.29, said  # the answer came 0.3 s after its query
    # Where those 0.3 s went: 0.28 s waiting for a worker, 0.02 s at Prometheus, nearly none after.
    assert (queued, prometheus_part, turn, decode) == (0.28, 0.02, 0.0, 0.0) and to_sweep < 0.05, said


def test_a_latency_wake_says_how_old_its_confirm_and_the_suspicion_before_it_are(
    caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    """A latency breach is woken by its exact read (the confirm), sent after the bucket share made
    the rollout a suspect: the wake's line says how long ago the confirm was sent and how old the
    share's answer was at the suspicion, the two parts of its delay (at 10,000 rollouts the slowest
    latency breach was woken 3.1 s after it was visible, and the line said neither)."""
    clock, metrics = FakeClock(), LatencyMetrics(12.0, 0.5)
    woken: list[tuple[str, str]] = []
    sentinel = Sentinel(clock=clock, period=0.2, wake=woken.append)
    sentinel.update(("support", "a"), _latency_spec(), _status(clock), FakePrometheus(metrics))

    with caplog.at_level("INFO", logger="agent_rollout.sentinel"):
        _sweeps_with_bounds(sentinel, 1)
    assert set(woken) == {("support", "a")}
    # The first sweep, before the bucket bounds are known, read the quantile itself and woke it too.
    confirmed = [r for r in caplog.records if "(its exact read)" in r.getMessage()]
    log = tmp_path / "operator.log"
    log.write_text("".join(logging.Formatter(LOG_FORMAT).format(r) + "\n" for r in confirmed))
    said = wakes(log, 0, {("support", "a")})[("support", "a")][1]
    assert (
        said.startswith("its exact read sent ") and "; at the suspicion, its value's query sent " in said
    ), said
    numbers = [float(word.rstrip(",:;")) for word in said.split() if word[0].isdigit()]
    confirm_sent, share_sent = numbers[0], numbers[1]
    assert 0 <= confirm_sent < 1.0 and 0 <= share_sent < 1.0, said
