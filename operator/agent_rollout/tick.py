"""One planner tick's working state.

`Tick` holds the inputs and the status being built (a deep copy, so the caller's status is never
mutated). Rules in `planner` change phase only through `decisions.transition`, which routes, records a
Decision and emits its Event in one place, so no phase change can go unaudited.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from agent_rollout import api
from agent_rollout.api import AgentRolloutStatus, GateResult, Phase
from agent_rollout.domain import Action, Observations

LIVE_PHASES = frozenset({Phase.PROGRESSING, Phase.PAUSED})


@dataclass
class Tick:
    """One reconcile in progress: inputs, the status being built (a copy) and the actions so far."""

    obs: Observations
    now: datetime
    st: AgentRolloutStatus
    actions: list[Action] = field(default_factory=list)
    weights_reason: str | None = None  # set when status.weights changed this tick
    latest: list[GateResult] | None = None  # this tick's gate results (status.lastAnalysis may lag)
    waiting: str = ""  # what holds the rollout, for status.message
    first_sight: bool = False  # the operator never judged this rollout's spec (planner.first_sight)
    history_limit: int = api.HISTORY_LIMIT  # spec.historyLimit
