"""heap.py in the real operator process: what it keeps is frozen once its first lists are in, and the
collector's pauses are in its /metrics (the bench reads them at 10,000 rollouts)."""

from __future__ import annotations

import urllib.request

from e2e.rollout.conftest import OperatorEndpoints
from e2e.rollout.scene import OperatorProcess, wait_until


def _sample(text: str, line_start: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(line_start + " "):
            return float(line.rsplit(" ", 1)[1])
    return None


def _scrape(ends: OperatorEndpoints) -> str:
    with urllib.request.urlopen(ends.metrics_url, timeout=5) as resp:
        return str(resp.read().decode())


def test_the_operator_freezes_what_it_keeps_and_exposes_its_pauses(
    operator: OperatorProcess, operator_endpoints: OperatorEndpoints
) -> None:
    wait_until(
        "objects frozen out of the collector's walks",
        lambda: (_sample(_scrape(operator_endpoints), "agent_rollout_gc_frozen_objects") or 0) > 0,
        timeout_s=60,
    )
    text = _scrape(operator_endpoints)
    for generation in ("0", "1", "2"):
        count = _sample(text, f'agent_rollout_gc_pause_seconds_count{{generation="{generation}"}}')
        assert count is not None, f"no pauses of generation {generation} in /metrics"
    assert (_sample(text, 'agent_rollout_gc_pause_seconds_count{generation="0"}') or 0) > 0
    assert "froze" in operator.log_path.read_text(errors="replace")
