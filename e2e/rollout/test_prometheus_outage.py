"""Prometheus taken away at a pause's end: the step waits for it, and moves on soon after it is back.

The rollout reads the real Prometheus through a forwarder the test cuts (e2e.sim.outage): refused
connections, as from a stopped Prometheus, while the other tests keep theirs.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import datetime
from urllib.parse import urlsplit

import pytest

from e2e.rollout.scene import CANDIDATE, Scene, wait_until
from e2e.rollout.test_rollout import ERROR_GATE
from e2e.sim.outage import Outage

PAUSE_S = 20
INTERVAL_S = 30
CUT_BEFORE_DUE_S = 4  # Prometheus goes away this long before the pause ends ...
BACK_AFTER_DUE_S = 6  # ... and comes back this long after


@pytest.fixture
def outage(scene: Callable[..., Scene]) -> Iterator[Callable[[Scene], Outage]]:
    made: list[Outage] = []

    def start(s: Scene) -> Outage:
        url = urlsplit(s.prometheus_url)
        forwarder = Outage(url.hostname or "127.0.0.1", url.port or 80)
        forwarder.restore()
        made.append(forwarder)
        return forwarder

    yield start
    for forwarder in made:
        forwarder.cut()


def _at(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def _sleep_until(wall: float) -> None:
    time.sleep(max(0.0, wall - time.time()))


def test_a_pause_held_by_an_unreachable_prometheus_ends_soon_after_it_is_back(
    scene: Callable[..., Scene], outage: Callable[[Scene], Outage]
) -> None:
    s = scene()
    prometheus = outage(s)
    manifest = s.rollout_manifest(
        "outage",
        steps=[{"setWeight": 10}, {"pause": {"duration": f"{PAUSE_S}s"}}, {"setWeight": 100}],
        minSamples=10,
        gates=[ERROR_GATE],
        interval=f"{INTERVAL_S}s",
        prometheus={"url": prometheus.url, "timeout": "3s"},
    )
    s.apply(manifest)
    paused = wait_until(
        "the pause step", lambda: (st := s.status("outage")).get("currentStep") == 1 and st, 90
    )
    due = _at(paused["stepStartedAt"]) + PAUSE_S
    assert time.time() < due - CUT_BEFORE_DUE_S, (
        "the pause was seen too late to cut Prometheus before its end"
    )

    _sleep_until(due - CUT_BEFORE_DUE_S)
    prometheus.cut()
    _sleep_until(due + BACK_AFTER_DUE_S)
    held = s.status("outage")
    back = time.time()
    prometheus.restore()

    assert held["currentStep"] == 1, "the pause ended while its gates could not be read"
    assert s.route_weights()[CANDIDATE] == 10
    moved = wait_until(
        "the step after the pause", lambda: (st := s.status("outage")).get("currentStep", 0) >= 2 and st, 60
    )
    # A decision names the step it entered: the pause (step 1) ends entering step 2.
    ended = next(d for d in moved["history"] if d["reason"] == "StepCompleted" and d["step"] == 2)
    late = _at(ended["time"]) - due
    print(f"\nPrometheus back {back - due:.1f}s after the pause end; the step moved on {late:.0f}s after it")
    assert _at(ended["time"]) >= int(back) - 1, "the step moved on before Prometheus was back"
    # The retry comes 5 s, then 10 s after the failures: about 15 s late. Without it the next try is
    # the interval's run, 30 s after the pause's end.
    assert late < INTERVAL_S - 5, f"the pause ended {late:.0f}s late: it waited for the interval's run"
