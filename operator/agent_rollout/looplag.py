"""How late the event loop runs what falls due, and where it is when it is held.

Everything the operator does waits on its one event loop, a turn at a time: an answer on its way from
a worker thread to the fast check takes four turns, a reconcile one per await. When a turn is long
(many reconciles ready at once, threads holding the GIL) every one of those waits grows with it. A
timer every EVERY seconds records how late it ran (agent_rollout_event_loop_lag_seconds), the figure
to read beside a breach that took long to be seen; `make bench-scale` prints it over its steady window.
At 10,000 rollouts (run Z10) it was p50 <= 0.05 s, p99 <= 1 s, max <= 2.5 s: some turns held the loop
for seconds. So a watcher thread looks at the timer's last beat every CHECK seconds, and once the loop
has been held STALL seconds it logs the loop thread's stack, once a stall: where the time goes.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
import time
import traceback

from agent_rollout import metrics

log = logging.getLogger(__name__)

EVERY = 0.25  # seconds between two measurements: 4 timers a second, nothing at 10,000 rollouts
STALL = 1.0  # seconds the loop is held before its stack is logged
CHECK = 0.1  # seconds between two looks of the watcher thread
FRAMES = 10  # innermost frames logged


async def measure(every: float = EVERY, stall: float = STALL) -> None:
    """Observe the loop's lag every `every` seconds, and log where the loop is when it is held over
    `stall` seconds, until cancelled."""
    loop = asyncio.get_running_loop()
    beat = [time.monotonic()]
    stop = threading.Event()
    watcher = threading.Thread(
        target=_watch,
        args=(threading.get_ident(), beat, every, stall, stop),
        name="loop-stall-watch",
        daemon=True,
    )
    watcher.start()
    try:
        while True:
            due = loop.time() + every
            await asyncio.sleep(every)
            beat[0] = time.monotonic()
            metrics.EVENT_LOOP_LAG_SECONDS.observe(max(loop.time() - due, 0.0))
    finally:
        stop.set()


def _watch(loop_thread: int, beat: list[float], every: float, stall: float, stop: threading.Event) -> None:
    reported = 0.0  # the beat of the stall last reported: one line a stall
    while not stop.wait(CHECK):
        last = beat[0]
        held = time.monotonic() - last - every  # the timer was due `every` after its last beat
        if held < stall or last == reported:
            continue
        frame = sys._current_frames().get(loop_thread)
        if frame is None:
            return  # the loop's thread is gone
        reported = last
        where = " < ".join(
            f"{entry.filename.rsplit('/', 1)[-1]}:{entry.lineno} {entry.name}"
            for entry in reversed(traceback.extract_stack(frame, limit=FRAMES))
        )
        log.warning("event loop held %.1f s so far; the loop's thread is at %s", held, where)
