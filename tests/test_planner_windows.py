"""Gate windows clamped to the step's start: never before it, and few distinct ones across rollouts
(each distinct window is a building-block query that returns a series for every rollout)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from agent_rollout import api
from agent_rollout.api import Phase
from agent_rollout.domain import iso
from agent_rollout.planner import WINDOW_LADDER, gate_windows, steady_gates
from tests.test_reconcile import rollout_body

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)


def _window(step_age_s: float) -> int | None:
    spec = api.parse_spec(rollout_body([{"setWeight": 5}, {"pause": {"duration": "1h"}}])["spec"])
    status = api.AgentRolloutStatus(
        phase=Phase.PROGRESSING, current_step=1, step_started_at=iso(NOW - timedelta(seconds=step_age_s))
    )
    return gate_windows(spec, status, NOW)["error-rate"]


def test_a_window_never_reaches_back_before_the_step_began() -> None:
    for age in range(0, 200):
        window = _window(age)
        assert window is None or window <= age, (age, window)
    assert _window(4) is None  # under 5 s of its own: not measured yet
    assert _window(119) == 80 and _window(120) == 120 and _window(500) == 120  # the gate's 2m at most


def test_rollouts_whose_steps_began_at_any_second_share_a_handful_of_windows() -> None:
    windows = {_window(age) for age in range(0, 121)}
    assert windows - {None} <= set(WINDOW_LADDER), windows
    # 5, 10, 15, 20, 30, 40, 60, 80 and the full 120: nine queries per block, not one per 5 s (24).
    assert len(windows - {None}) == 9, sorted(w for w in windows if w)


def _steady(step_age_s: float, failure_age_s: float | None, stale_s: float) -> frozenset[str]:
    spec = api.parse_spec(rollout_body([{"setWeight": 5}, {"pause": {"duration": "1h"}}])["spec"])
    failures = {} if failure_age_s is None else {"error-rate": iso(NOW - timedelta(seconds=failure_age_s))}
    status = api.AgentRolloutStatus(
        phase=Phase.PROGRESSING,
        current_step=1,
        step_started_at=iso(NOW - timedelta(seconds=step_age_s)),
        last_failure_at=failures,
    )
    return steady_gates(spec, status, NOW, stale_s)


def test_a_gate_is_read_from_an_older_answer_only_when_that_answer_reaches_back_to_no_anchor() -> None:
    """An answer `stale` seconds old covers [now - stale - window, now - stale]: it may be judged
    only when that starts after the step began and after the gate's last counted failure, or one
    burst would be counted twice (a stale answer reaching back before the failure it caused)."""
    window = 120  # the gate's 2m
    for stale in (0.0, 5.0, 10.0):
        for age in range(0, 200, 5):
            assert ("error-rate" in _steady(age, None, stale)) == (age - stale >= window), (age, stale)
            assert ("error-rate" in _steady(900, age, stale)) == (age - stale >= window), (age, stale)
    assert _steady(125, None, 10.0) == frozenset()  # the fresh window is whole, the answer's is not
    assert _steady(130, None, 10.0) == {"error-rate"}
