"""heap.py: frozen objects are still freed when dropped, cycles that die frozen are freed by the thaw,
and the collector's pauses reach /metrics."""

from __future__ import annotations

import asyncio
import gc
import weakref
from collections.abc import Iterator

import pytest
from prometheus_client import generate_latest

from agent_rollout import heap, metrics


class Body:
    """Stands for what the operator keeps (weakref-able, unlike a dict)."""

    def __init__(self) -> None:
        self.spec: dict[str, object] = {"steps": [{"weight": 5}]}
        self.other: Body | None = None


@pytest.fixture(autouse=True)
def unfrozen() -> Iterator[None]:
    thresholds = gc.get_threshold()
    yield
    gc.unfreeze()  # the rest of the test process walks its objects as before
    gc.set_threshold(*thresholds)


def test_a_frozen_object_without_cycles_is_freed_when_dropped() -> None:
    body = Body()
    gone = weakref.ref(body)
    heap.freeze()
    frozen = gc.get_freeze_count()
    del body
    assert gone() is None  # reference counting, no collection needed
    assert gc.get_freeze_count() < frozen


def test_a_cycle_that_dies_frozen_waits_for_the_thaw() -> None:
    a, b = Body(), Body()
    a.other, b.other = b, a
    gone = weakref.ref(a)
    heap.freeze()
    del a, b
    gc.collect()
    assert gone() is not None  # frozen: no walk sees it
    heap.thaw()
    assert gone() is None


def test_a_cycle_made_after_the_freeze_is_collected_as_usual() -> None:
    heap.freeze()
    a, b = Body(), Body()
    a.other, b.other = b, a
    gone = weakref.ref(a)
    del a, b
    gc.collect()
    assert gone() is None


def test_keep_frozen_waits_for_the_lists_then_freezes_and_thaws() -> None:
    async def scenario() -> tuple[int, int, bool, bool, int]:
        listed = asyncio.Event()
        task = asyncio.get_running_loop().create_task(heap.keep_frozen(listed, refreeze=0.05, thaw_every=0.2))
        await asyncio.sleep(0.05)
        before_lists = gc.get_freeze_count()
        a, b = Body(), Body()
        a.other, b.other = b, a
        gone = weakref.ref(a)
        listed.set()
        await asyncio.sleep(0.02)
        after_lists = gc.get_freeze_count()
        full_after = gc.get_threshold()[2]
        del a, b
        gc.collect()
        frozen_cycle = gone() is not None  # not the object: a reference would keep it alive
        await asyncio.sleep(0.4)  # a thaw came
        task.cancel()
        return before_lists, after_lists, frozen_cycle, gone() is None, full_after

    before_lists, after_lists, frozen_cycle, freed_by_thaw, full_after = asyncio.run(scenario())
    assert before_lists == 0
    assert after_lists > 0
    assert frozen_cycle
    assert freed_by_thaw
    assert full_after == heap.FULL_AFTER  # full collections come a tenth as often


def test_pauses_reach_the_metrics_by_generation() -> None:
    pauses = heap.measure_pauses()
    assert heap.measure_pauses() is pauses  # one callback per process
    gc.collect()
    text = generate_latest(metrics.REGISTRY).decode()
    count = next(
        float(line.split()[-1])
        for line in text.splitlines()
        if line.startswith('agent_rollout_gc_pause_seconds_count{generation="2"}')
    )
    assert count >= 1
    assert 'agent_rollout_gc_pause_seconds_bucket{generation="2",le="+Inf"}' in text
    assert "agent_rollout_gc_frozen_objects" in text


def test_a_pause_longer_than_every_bucket_is_counted_above_them() -> None:
    pauses = heap.Pauses()
    pauses("start", {"generation": 2})
    pauses._started -= 10.0  # a 10 s walk
    pauses("stop", {"generation": 2})
    assert pauses.counts[2][-1] == 1
    assert sum(pauses.counts[2]) == 1
    assert pauses.seconds[2] >= 10.0
