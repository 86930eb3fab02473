"""What the imperative shell observes and what the planner asks it to do.

Plain frozen dataclasses, no I/O: the planner is a pure function
`plan(spec, status, observations, now) -> Plan(status, actions)` over these.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

from agent_rollout.api import AgentRolloutStatus, AgentVersion, Decision, GateResult, Phase, Weights
from agent_rollout.traffic.value import Mirror


@dataclass(frozen=True)
class SpecProblem:
    """A spec error the CRD schema cannot express; `field` is a path such as spec.steps[2].setWeight."""

    field: str
    message: str


@dataclass(frozen=True)
class DeploymentState:
    name: str
    exists: bool
    template_hash: str | None = None  # hash of spec.template: changes when image/model/prompt/tools change
    replicas: int = 0
    available_replicas: int = 0
    ready_replicas: int = 0  # status.readyReplicas: what a capacity-safe rollback counts
    agent_version: AgentVersion | None = None  # image(s) and model/prompt/tools versions of the template
    changed_by: str | None = None  # who changed the template last, as the chart's admission stamped it

    @property
    def can_serve(self) -> bool:
        """At least one replica passes its readiness probe: traffic sent here gets an answer."""
        return self.exists and self.available_replicas > 0


@dataclass(frozen=True)
class RouteIntent:
    """The operator's write-ahead record on the route, written atomically with the weights.

    The route is written before status (a rollback must not wait on a status write); when the status
    write is lost (a crash, a refused write), the next reconcile finds a route newer than status and
    resumes from this record instead of treating the operator's own write as drift.
    """

    rollout: str
    sequence: int  # the status.sequence the status write after this route write carries
    phase: Phase
    step: int
    weights: Weights
    revision: str | None
    step_started_at: str | None
    reason: str
    message: str
    mirror: Mirror | None = None  # the shadow step's mirror this write left on the route (None: none)


@dataclass(frozen=True)
class FiringAlert:
    """An incident alert, firing now, whose labels name this rollout (alerts.py receives them from
    Alertmanager). The planner rolls a live rollout back on one; the alert is the decision's evidence."""

    name: str  # the alertname label
    fingerprint: str  # Alertmanager's identity of the alert: a resolve names the same one
    starts_at: str  # when it began firing, as Alertmanager says (RFC 3339)
    summary: str = ""  # annotations.summary or .description, bounded by the planner's record
    labels: str = ""  # the alert's labels as one line (k=v, ...), for the evidence


@dataclass(frozen=True)
class MilestoneObservation:
    """A step's first transactions: every gate measured over exactly the window since the step began,
    at an evaluation that counted at least the milestone's N candidate requests in it."""

    step: int
    requests: int
    window_seconds: int
    gates: tuple[GateResult, ...]


@dataclass(frozen=True)
class BaselineObservation:
    """A promoted revision's signals, candidate and legacy, over the last `window_seconds`."""

    revision: str | None
    window_seconds: int
    gates: tuple[GateResult, ...]


@dataclass(frozen=True)
class EvaluationObservation:
    """The evaluation Job of the current step, as the Jobs informer (and its pod) show it."""

    step: int
    job: str
    state: Literal["absent", "running", "succeeded", "failed"]
    # succeeded: the pod's termination message (the result); failed: the Job's reason and message.
    message: str = ""


@dataclass(frozen=True)
class Observations:
    """Everything the shell measured for one reconcile. `None` means "could not be observed"."""

    # Every problem of the spec: parse errors, or validation.validate's (with Prometheus' refusals of
    # its queries before the start); the planner does not validate again.
    problems: tuple[SpecProblem, ...] = ()
    legacy: DeploymentState | None = None
    candidate: DeploymentState | None = None
    route_weights: Weights | None = None  # weights actually on the route now
    route_error: str | None = None  # route or backendRef missing, etc.
    gates: tuple[GateResult, ...] | None = None  # None: analysis did not run (see prometheus_error)
    prometheus_error: str | None = None
    candidate_requests: int | None = None  # candidate requests since status.stepStartedAt
    milestone: MilestoneObservation | None = None  # the current step's milestone window, once N were served
    baseline: BaselineObservation | None = None  # measured while a baseline is due (readiness.baseline_due)
    generation: int | None = None
    route_intent: RouteIntent | None = None  # this rollout's write-ahead record on the route
    route_claimed_by: str | None = None  # an older AgentRollout that names the same route
    # Prometheus refused a query as invalid: it will refuse it every time, so the candidate cannot be judged.
    query_rejected: str | None = None
    # Before the first step: the gates' queries could not be checked with Prometheus yet (why).
    queries_unchecked: str | None = None
    # How stale the measured values in status.lastAnalysis may get while no verdict changes: the
    # operator's setting (AGENT_ROLLOUT_ANALYSIS_REFRESH), a write budget, not a rollout rule.
    analysis_refresh: float = 600.0
    # Incident alerts firing now that name this rollout (agentrollout + namespace labels).
    firing_alerts: tuple[FiringAlert, ...] = ()
    # The current evaluation step's Job (None: not an evaluation step, or not observed).
    evaluation: EvaluationObservation | None = None
    # A running rollback drill's gates measured on legacy since the route showed legacy 100 (drill.py);
    # None: not measured this tick (not due yet, or Prometheus failed: the drill's bound still runs).
    drill_gates: tuple[GateResult, ...] | None = None
    # Our mirror filter on the route (traffic.value.MirrorReading): the mirror when every rule carrying
    # legacy has exactly one identical filter of ours, None when none has any; exact False otherwise.
    route_mirror: Mirror | None = None
    route_mirror_exact: bool = True
    # A mirror identical to a shadow step's that the operator did not write (router's text, naming the
    # route): never adopted nor removed; a shadow step waits on it.
    route_mirror_conflict: str | None = None
    # Compared pairs (match + mismatch) the shadow comparator counted since the shadow step began.
    shadow_pairs: int | None = None


@dataclass(frozen=True)
class RouteFailure:
    """A route write the API server did not take. `permanent`: validation or admission refused it
    (403, 422), so retrying the same write will fail the same way until someone changes something."""

    detail: str
    permanent: bool


@dataclass(frozen=True)
class SetWeights:
    """Route `weights` to legacy and candidate, with `mirror` (a shadow step's) or no mirror of ours;
    the shell skips the write when the route already matches both."""

    weights: Weights
    reason: str
    mirror: Mirror | None = None


@dataclass(frozen=True)
class EmitEvent:
    """A Kubernetes Event on the AgentRollout; the message carries the evidence."""

    type: Literal["Normal", "Warning"]
    reason: str
    message: str
    # The history entry this Event announces (the shell logs it as JSON); not part of the Event's identity.
    decision: Decision | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class RunEvaluation:
    """Create the evaluation Job of `step` named `job` (a Job of that name already there is that one)."""

    step: int
    job: str


Action = SetWeights | EmitEvent | RunEvaluation


@dataclass(frozen=True)
class Plan:
    status: AgentRolloutStatus
    actions: tuple[Action, ...] = field(default_factory=tuple)
    requeue_after: float | None = None  # seconds until the next reconcile is useful, if sooner than interval


def iso(t: datetime) -> str:
    """RFC 3339 with a Z, as Kubernetes writes times."""
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")
