"""Memory profile of the running operator, for finding what grows with the number of rollouts.

With AGENT_ROLLOUT_TRACEMALLOC=1 the process traces its allocations from the start, and SIGUSR2 logs
the 25 lines of code holding the most memory. Off by default: tracing costs CPU and memory itself.
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
    if os.environ.get(ENV) != "1":
        return
    tracemalloc.start(1)
    signal.signal(signal.SIGUSR2, _report)
    log.info("tracing allocations (%s=1): `kill -USR2 %d` logs the top %d lines", ENV, os.getpid(), TOP)


def _report(signum: int, frame: FrameType | None) -> None:
    snapshot = tracemalloc.take_snapshot().filter_traces(
        [
            tracemalloc.Filter(False, tracemalloc.__file__),
            tracemalloc.Filter(False, "<frozen importlib._bootstrap>"),
        ]
    )
    stats = snapshot.statistics("lineno")
    total = sum(s.size for s in stats)
    lines = [f"traced {total / 2**20:.1f} MiB in {len(stats)} lines; top {TOP}:"]
    lines += [f"  {s.size / 2**20:8.2f} MiB {s.count:9d} blocks  {s.traceback[0]}" for s in stats[:TOP]]
    log.warning("\n".join(lines))
