"""The cyclic garbage collector at 10,000 rollouts: what the operator keeps is frozen, pauses are measured.

Every full collection of CPython's cyclic collector walks every container object alive, with the GIL
held: no reconcile, fast check or route write runs meanwhile. With CPython's default thresholds a
full collection comes after every 10 collections of the middle generation, once the objects promoted
since the last one reach a quarter of those it kept; the fast check's whole-fleet answers (a few
hundred thousand objects each, decoded in a worker thread) get there in about a second. Measured on
the real operator at 10,000 rollouts (`make bench-scale`, steady window of 120 s): 99 full
collections took 41.3 s, a third of the time (0.42 s each).

What the operator keeps has no reference cycles (JSON bodies, pydantic models, frozen dataclasses), so
reference counting frees it when it is dropped, frozen or not. `gc.freeze()` moves every object alive
into a generation the collector never walks: done once the informers' first lists are in, and again
every REFREEZE seconds for what was kept since; a full collection then walks only what was made since
the last freeze, and comes after 100 collections of the middle generation instead of 10
(FULL_AFTER), since all it could free is a cycle, which the operator rarely makes. Measured in the
same window: 19 full collections in 2.9 s. The one thing freezing can keep is a cycle that was alive
at a freeze and became garbage later (a task that failed, say); every THAW seconds everything is
unfrozen and collected once (one full walk an hour, not one a second) and frozen again.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Iterator
from typing import Any

from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from agent_rollout import metrics

log = logging.getLogger(__name__)

REFREEZE = 60.0  # seconds between two freezes of what the operator kept since the last one (O(1) each)
THAW = 3600.0  # seconds between two collections of everything (cycles that died frozen)
FULL_AFTER = 100  # collections of the middle generation before a full one may come (CPython: 10)

BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
GENERATIONS = 3


class Pauses(Collector):
    """The collector's pauses by generation, as the histogram agent_rollout_gc_pause_seconds.

    Recorded by a gc callback, which may run in any thread in the middle of any allocation: it takes
    no lock (prometheus_client's metrics do, and one taken twice by the same thread would hang it)
    and only adds to lists; the histogram is made at scrape time."""

    def __init__(self) -> None:
        self._started = 0.0
        self.counts = [[0] * (len(BUCKETS) + 1) for _ in range(GENERATIONS)]  # the last: above all
        self.seconds = [0.0] * GENERATIONS

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            return
        took = time.perf_counter() - self._started
        generation = info["generation"]
        self.seconds[generation] += took
        counts = self.counts[generation]
        for i, bound in enumerate(BUCKETS):
            if took <= bound:
                counts[i] += 1
                return
        counts[-1] += 1

    def collect(self) -> Iterator[Any]:
        pauses = HistogramMetricFamily(
            f"{metrics.PREFIX}_gc_pause_seconds",
            "Pauses of the cyclic garbage collector by generation (the GIL held: nothing else runs).",
            labels=["generation"],
        )
        for generation in range(GENERATIONS):
            cumulative, buckets = 0, []
            for bound, n in zip((*BUCKETS, float("inf")), self.counts[generation], strict=True):
                cumulative += n
                buckets.append(("+Inf" if bound == float("inf") else f"{bound:g}", cumulative))
            pauses.add_metric([str(generation)], buckets, self.seconds[generation])
        yield pauses
        frozen = GaugeMetricFamily(
            f"{metrics.PREFIX}_gc_frozen_objects", "Objects frozen out of the collector's walks (heap.py)."
        )
        frozen.add_metric([], gc.get_freeze_count())
        yield frozen


_pauses: Pauses | None = None


def measure_pauses() -> Pauses:
    """Record the collector's pauses from now on, once per process, and expose them in /metrics."""
    global _pauses
    if _pauses is None:
        _pauses = Pauses()
        gc.callbacks.append(_pauses)
        metrics.REGISTRY.register(_pauses)
    return _pauses


def paused() -> float:
    """Seconds the collector has paused the process since measure_pauses (0 before it)."""
    return sum(_pauses.seconds) if _pauses is not None else 0.0


def freeze() -> None:
    """Freeze what is alive now; young cycles that are garbage already are collected first (cheap:
    the young generations only)."""
    gc.collect(1)
    gc.freeze()


def thaw() -> None:
    """Collect everything once, cycles that died frozen included, and freeze what is left."""
    gc.unfreeze()
    gc.collect()
    gc.freeze()


async def keep_frozen(listed: asyncio.Event, refreeze: float = REFREEZE, thaw_every: float = THAW) -> None:
    """Freeze once `listed` (the informers' first lists are in), then every `refreeze` seconds, and
    thaw (collect everything) every `thaw_every` seconds."""
    await listed.wait()
    young, middle, _ = gc.get_threshold()
    gc.set_threshold(young, middle, FULL_AFTER)
    freeze()
    log.info("froze %d objects out of the garbage collector's walks", gc.get_freeze_count())
    loop = asyncio.get_running_loop()
    thawed = loop.time()
    while True:
        await asyncio.sleep(refreeze)
        if loop.time() - thawed >= thaw_every:
            started = time.perf_counter()
            thaw()
            thawed = loop.time()
            log.info(
                "collected everything in %.2f s; froze %d objects",
                time.perf_counter() - started,
                gc.get_freeze_count(),
            )
        else:
            freeze()
