"""How late the event loop runs what falls due: agent_rollout_event_loop_lag_seconds.

Everything the operator does waits on its one event loop, a turn at a time: an answer on its way from
a worker thread to the fast check takes four turns, a reconcile one per await. When a turn is long
(many reconciles ready at once, threads holding the GIL) every one of those waits grows with it. A
timer every EVERY seconds records how late it ran: the loop's lag, the figure to read beside a breach
that took long to be seen (`make bench-scale` prints it over its steady window).
"""

from __future__ import annotations

import asyncio

from agent_rollout import metrics

EVERY = 0.25  # seconds between two measurements: 4 timers a second, nothing at 10,000 rollouts


async def measure(every: float = EVERY) -> None:
    """Observe the loop's lag every `every` seconds, until cancelled."""
    loop = asyncio.get_running_loop()
    while True:
        due = loop.time() + every
        await asyncio.sleep(every)
        metrics.EVENT_LOOP_LAG_SECONDS.observe(max(loop.time() - due, 0.0))
