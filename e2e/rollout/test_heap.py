"""heap.py in the real operator process: what it keeps is frozen once its first lists are in, and the
collector's pauses are in its /metrics (the bench reads them at 10,000 rollouts)."""

from __future__ import annotations

from e2e.rollout.conftest import OperatorEndpoints
from e2e.rollout.scene import OperatorProcess, wait_until

PAUSES = "agent_rollout_gc_pause_seconds_count"


def test_the_operator_freezes_what_it_keeps_and_exposes_its_pauses(
    operator: OperatorProcess, operator_endpoints: OperatorEndpoints
) -> None:
    ends = operator_endpoints
    wait_until(
        "objects frozen out of the collector's walks",
        lambda: (ends.sample("agent_rollout_gc_frozen_objects") or 0) > 0,
        timeout_s=60,
    )
    for generation in ("0", "1", "2"):
        count = ends.sample(PAUSES, generation=generation)
        assert count is not None, f"no pauses of generation {generation} in /metrics"
    assert (ends.sample(PAUSES, generation="0") or 0) > 0
    assert "froze" in operator.log_path.read_text(errors="replace")
