"""The event loop's lag, as the operator measures it (looplag)."""

from __future__ import annotations

import asyncio
import time

from agent_rollout import looplag
from agent_rollout.metrics import REGISTRY

METRIC = "agent_rollout_event_loop_lag_seconds"


def _observed(le: str) -> float:
    return REGISTRY.get_sample_value(f"{METRIC}_bucket", {"le": le}) or 0.0


def test_a_turn_that_holds_the_loop_is_measured_as_its_lag() -> None:
    """A callback holding the loop 0.3 s makes the next measurement at least that late."""
    late_before, all_before = _observed("0.25"), _observed("+Inf")

    async def scenario() -> None:
        measuring = asyncio.create_task(looplag.measure(every=0.05))
        await asyncio.sleep(0.12)
        time.sleep(0.3)  # one long turn
        await asyncio.sleep(0.12)
        measuring.cancel()

    asyncio.run(scenario())
    measured = _observed("+Inf") - all_before
    on_time = _observed("0.25") - late_before
    assert measured >= 3 and measured - on_time == 1, (measured, on_time)  # exactly one was late


def test_the_scale_benchmark_reads_the_lag_from_the_operator_metrics() -> None:
    from prometheus_client import generate_latest

    from e2e.bench.operator_scale import LOOP_LAG_METRIC, window_summaries

    before = generate_latest(REGISTRY).decode()
    asyncio.run(_measured_twice())
    summary = window_summaries(before, generate_latest(REGISTRY).decode(), LOOP_LAG_METRIC, "")[""]
    measured = int(summary.split(",")[0].removeprefix("n="))
    assert measured >= 1 and ", p99 <= " in summary, summary


async def _measured_twice() -> None:
    measuring = asyncio.create_task(looplag.measure(every=0.02))
    await asyncio.sleep(0.05)
    measuring.cancel()
