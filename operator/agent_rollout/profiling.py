"""Memory profile of the running operator, for finding what grows with the number of rollouts.

With AGENT_ROLLOUT_TRACEMALLOC=1 the process traces its allocations from the start, and SIGUSR2 logs
the 25 lines of code holding the most memory. With a larger number N, each allocation keeps N frames
and the log groups by those call paths (who holds what json.loads made, not only that it did). Off by
default: tracing costs CPU and memory itself.

With AGENT_ROLLOUT_GC_SAMPLE=N, every N-th collection of the garbage collector's young generation
tallies what that generation holds as it starts (by type, and by allocating line when tracemalloc
traces too), and SIGUSR2 logs the top of the tally: what keeps the collector busy. At 10,000 rollouts
it collected the young generation 126 times a second (15,140 in a 120 s window, 5.8 s of pauses, run
Z15), so some code keeps about 90,000 new container objects a second alive long enough to be walked.
"""

from __future__ import annotations

import gc
import logging
import os
import signal
import tracemalloc
from collections import Counter
from types import FrameType
from typing import Any

log = logging.getLogger(__name__)
ENV = "AGENT_ROLLOUT_TRACEMALLOC"
GC_ENV = "AGENT_ROLLOUT_GC_SAMPLE"
TOP = 25


class YoungSampler:
    """A gc callback: every `every`-th collection of the young generation, what it holds as it starts.
    It may run in any thread in the middle of any allocation: it takes no lock and only counts."""

    def __init__(self, every: int) -> None:
        self.every = every
        self.collections = 0
        self.sampled = 0
        self.tally: Counter[str] = Counter()

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase != "start" or info["generation"] != 0:
            return
        self.collections += 1
        if self.collections % self.every:
            return
        self.sampled += 1
        tracing = tracemalloc.is_tracing()
        for obj in gc.get_objects(0):
            where = ""
            if tracing and (traceback := tracemalloc.get_object_traceback(obj)) is not None:
                frame = traceback[-1]  # the most recent: the allocating line
                where = f" {frame.filename}:{frame.lineno}"
            self.tally[f"{type(obj).__name__}{where}"] += 1

    def report(self) -> str:
        lines = [
            f"young generation: {self.sampled} of {self.collections} collections sampled; "
            f"objects in it as one started, per sampled collection, top {TOP}:"
        ]
        for what, n in self.tally.most_common(TOP):
            lines.append(f"  {n / max(self.sampled, 1):10.1f}  {what}")
        return "\n".join(lines)


_sampler: YoungSampler | None = None


def install() -> None:
    global _sampler
    every = os.environ.get(GC_ENV, "")
    if every.isdigit() and int(every) >= 1 and _sampler is None:
        _sampler = YoungSampler(int(every))
        gc.callbacks.append(_sampler)
        signal.signal(signal.SIGUSR2, _report)
        log.info(
            "sampling the young generation every %s collections: `kill -USR2 %d` logs it", every, os.getpid()
        )
    frames = os.environ.get(ENV, "")
    if not frames.isdigit() or int(frames) < 1:
        return
    if int(frames) > 1:
        # Imported before tracing: tracing the kubernetes client's import (tens of thousands of
        # objects, each with its frames) took minutes, and what it allocates does not grow with rollouts.
        import kubernetes.client

        for name in ("CoreV1Api", "CustomObjectsApi", "AppsV1Api", "BatchV1Api", "CoordinationV1Api"):
            getattr(kubernetes.client, name)
    tracemalloc.start(int(frames))
    signal.signal(signal.SIGUSR2, _report)
    pid = os.getpid()
    log.info("tracing allocations (%s=%s frames): `kill -USR2 %d` logs the top %d", ENV, frames, pid, TOP)


def _report(signum: int, frame: FrameType | None) -> None:
    if _sampler is not None:
        log.warning(_sampler.report())
    if not tracemalloc.is_tracing():
        return
    snapshot = tracemalloc.take_snapshot().filter_traces(
        [
            tracemalloc.Filter(False, tracemalloc.__file__),
            tracemalloc.Filter(False, "<frozen importlib._bootstrap>"),
        ]
    )
    deep = tracemalloc.get_traceback_limit() > 1
    stats = snapshot.statistics("traceback" if deep else "lineno")
    total = sum(s.size for s in stats)
    lines = [f"traced {total / 2**20:.1f} MiB in {len(stats)} {'paths' if deep else 'lines'}; top {TOP}:"]
    for stat in stats[:TOP]:
        frames = list(
            reversed(stat.traceback)
        )  # tracemalloc keeps the oldest first: the allocating line first
        lines.append(f"  {stat.size / 2**20:8.2f} MiB {stat.count:9d} blocks  {frames[0]}")
        lines += [f"      from {frame}" for frame in frames[1:]]
    log.warning("\n".join(lines))
