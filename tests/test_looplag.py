"""The event loop's lag, as the operator measures it (looplag)."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import pytest

from agent_rollout import looplag
from agent_rollout.main import LOG_FORMAT
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


def _holds_the_loop(seconds: float) -> None:
    time.sleep(seconds)


def _stalled(caplog: pytest.LogCaptureFixture, hold: float, stall: float) -> None:
    """Measures the loop (a beat every 0.05 s) while one turn holds it `hold` seconds."""

    async def scenario() -> None:
        measuring = asyncio.create_task(looplag.measure(every=0.05, stall=stall))
        await asyncio.sleep(0.1)
        _holds_the_loop(hold)
        await asyncio.sleep(0.2)
        measuring.cancel()

    with caplog.at_level("WARNING", logger="agent_rollout.looplag"):
        asyncio.run(scenario())


def test_a_held_loop_is_logged_with_where_it_is_once_a_stall(caplog: pytest.LogCaptureFixture) -> None:
    _stalled(caplog, hold=0.9, stall=0.3)
    held = [r.getMessage() for r in caplog.records if "event loop held" in r.getMessage()]
    # Once for the held turn, however long it lasts (another slow turn of a busy machine is another stall).
    assert len([m for m in held if "_holds_the_loop" in m]) == 1, held


def test_the_scale_benchmark_reads_the_stalls_back_from_the_operator_log(
    caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    from e2e.bench.operator_scale import stalls

    _stalled(caplog, hold=0.9, stall=0.3)
    log = tmp_path / "operator.log"
    log.write_text("".join(logging.Formatter(LOG_FORMAT).format(r) + "\n" for r in caplog.records))
    # Only the held turn's: on a busy machine another turn may be slow enough to be logged too.
    [(held, where)] = [s for s in stalls(log, 0, log.stat().st_size) if "_holds_the_loop" in s[1]]
    assert held >= 0.3 and where.startswith("test_looplag.py:"), where
