"""The planner's wanted route state as a small value: the two weights plus an optional mirror.

The planner says what the route should carry (`TrafficState`); a router reads what it carries and
computes the guarded write from one to the other (traffic/gatewayapi.py for Gateway API). A mirror is
wanted only during a shadow step, so every other state (another step, promoted, rolled back, failed,
aborted) wants none, and the router removes it whatever path led there: no code path has to remember
to clean up.
"""

from __future__ import annotations

from dataclasses import dataclass

from agent_rollout.api import Weights


@dataclass(frozen=True)
class Mirror:
    """Mirror `percent` of the requests the legacy rule receives to the comparator Service."""

    service: str
    port: int
    percent: int


@dataclass(frozen=True)
class TrafficState:
    weights: Weights
    mirror: Mirror | None = None


@dataclass(frozen=True)
class MirrorReading:
    """Our mirror as the route carries it: `mirror` when every rule carrying legacy has exactly one
    identical filter of ours, None when none has any; `exact` False for anything else (duplicates, a
    rule without it, differing percents), which the router repairs."""

    mirror: Mirror | None = None
    exact: bool = True
    found: int = 0  # filters of ours over all those rules
