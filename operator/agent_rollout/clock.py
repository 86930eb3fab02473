"""Time in status: parsing what is stored, and the instants the rules derive from a step's start."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from agent_rollout import api
from agent_rollout.api import AgentRolloutStatus, Pause
from agent_rollout.domain import iso


def parse_time(text: str | None) -> datetime | None:
    if text is None:
        return None
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def step_start(now: datetime) -> str:
    """status.stepStartedAt for a step entered at `now`. Status times have whole seconds, so the start
    is rounded up, never down: a pause then never ends early, and `minRequests` never counts requests
    served before the step began (at worst the pause lasts 1 s longer)."""
    whole = now.replace(microsecond=0)
    return iso(whole if whole == now else whole + timedelta(seconds=1))


def pause_end(st: AgentRolloutStatus, pause: Pause) -> datetime | None:
    started = parse_time(st.step_started_at)
    if pause.duration is None or started is None:
        return None
    return started + timedelta(seconds=api.duration_seconds(pause.duration))


def utc(now: datetime) -> datetime:
    # iso() formats without converting, so every time in status must already be UTC.
    return now.astimezone(UTC) if now.tzinfo is not None else now.replace(tzinfo=UTC)
