"""Memory profile of the running operator, for finding what grows with the number of rollouts.

With AGENT_ROLLOUT_TRACEMALLOC=1 the process traces its allocations from the start, and SIGUSR2 logs
the 25 lines of code holding the most memory. With a larger number N, each allocation keeps N frames
and the log groups by those call paths (who holds what json.loads made, not only that it did). Off by
default: tracing costs CPU and memory itself.
"""

from __future__ import annotations

import logging
import os
import signal
import tracemalloc
from types import FrameType

log = logging.getLogger(__name__)
ENV = "AGENT_ROLLOUT_TRACEMALLOC"
TOP = 25


def install() -> None:
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
