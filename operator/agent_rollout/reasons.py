"""Why a decision was taken: the reasons of history entries and their Events, and which of them warn,
roll back, or roll back only as fast as legacy's capacity allows."""

from __future__ import annotations

from enum import StrEnum


class Reason(StrEnum):
    """Why a Decision was taken: the reason of both the history entry and its Kubernetes Event."""

    STARTED = "Started"
    STEP_COMPLETED = "StepCompleted"
    MANUAL_PROMOTION = "ManualPromotion"  # a human's status.promote ended the step
    AWAITING_APPROVAL = "AwaitingApproval"
    INCONCLUSIVE = "Inconclusive"
    PROMOTED = "Promoted"
    GATE_FAILED = "GateFailed"
    PROMETHEUS_UNAVAILABLE = "PrometheusUnavailable"
    ABORTED = "Aborted"
    NEW_CANDIDATE = "NewCandidate"
    RETRIED = "Retried"  # a human's status.retry restarted a rolled-back rollout
    INVALID_SPEC = "InvalidSpec"
    SPEC_VALID = "SpecValid"  # Failed -> Pending once the spec is fixed
    CANDIDATE_NOT_FOUND = "CandidateNotFound"
    CANDIDATE_UNAVAILABLE = "CandidateUnavailable"  # exists, but no replica is available
    LEGACY_NOT_FOUND = "LegacyNotFound"  # a rollback would have nowhere to go
    INCONCLUSIVE_LIMIT = "InconclusiveLimit"  # the candidate serves but its gates give no verdict
    ROUTE_WRITE_FAILED = "RouteWriteFailed"  # the API server did not take a weight change
    QUERY_REJECTED = "QueryRejected"  # Prometheus refuses a gate's query: the candidate cannot be judged
    ALERT_FIRED = "AlertFired"  # an incident alert naming the rollout fired (Alertmanager webhook)
    RECOVERED = "Recovered"  # resumed from the route's write-ahead record after a lost status write
    WEIGHTS_RECONCILED = "WeightsReconciled"
    MILESTONE_RECORDED = "MilestoneRecorded"  # a step's first N transactions, with the gates over them
    STAGE_REQUIRED = "StageRequired"  # a step holds: a required stage is not Met (spec.readiness)
    BASELINE_RECORDED = "BaselineRecorded"  # a human's status.recordBaseline: the baseline is in status
    BASELINE_REFUSED = "BaselineRefused"  # a human's status.recordBaseline in a phase with nothing to compare
    EVALUATION_STARTED = "EvaluationStarted"  # an evaluation step's Job was created
    EVALUATION_FAILED = "EvaluationFailed"  # failed, timed out or unreadable: rolled back or paused
    APPROVAL_GIVEN = "ApprovalGiven"  # an allowed user's approval counted for the current step and revision
    APPROVAL_REFUSED = "ApprovalRefused"  # an approval that does not count (wrong step, revision, approver)
    APPROVAL_EXPIRED = "ApprovalExpired"  # an approval step's `expires` passed without enough approvals
    PROMOTE_REFUSED = "PromoteRefused"  # status.promote on an approval step: only approvals end it
    ESCALATED = "Escalated"  # a step stuck on inconclusive gates for `escalate.after`: handed to a human
    DRIFT = "Drift"  # SetWeights only: re-assert weights the route lost; nothing was decided
    DRILL_STARTED = "DrillStarted"  # a human's status.drill: all traffic to legacy, to be confirmed
    DRILL_PASSED = "DrillPassed"  # legacy confirmed within bounds in time: back to the step it left
    DRILL_ROLLED_BACK = "DrillRolledBack"  # passed, and the human asked to stay rolled back
    DRILL_FAILED = "DrillFailed"  # legacy out of bounds, or not confirmed within the bound: stays on legacy
    DRILL_REFUSED = "DrillRefused"  # status.drill where no drill can run
    DRILL_INTERRUPTED = "DrillInterrupted"  # the rollout left the drill's step meanwhile
    LEGACY_SHORT_OF_REPLICAS = "LegacyShortOfReplicas"  # a rollback waits for legacy's ready replicas
    LEGACY_CAPACITY_STEP = "LegacyCapacityStep"  # more ready legacy replicas: more traffic back
    LEGACY_CAPACITY_RESTORED = "LegacyCapacityRestored"  # legacy ready again: all traffic to legacy
    LEGACY_CAPACITY_TIMEOUT = "LegacyCapacityTimeout"  # capacityTimeout over: all traffic to legacy anyway


WARNING_REASONS = frozenset(
    {
        Reason.GATE_FAILED,
        Reason.PROMETHEUS_UNAVAILABLE,
        Reason.ABORTED,
        Reason.INVALID_SPEC,
        Reason.CANDIDATE_NOT_FOUND,
        Reason.CANDIDATE_UNAVAILABLE,
        Reason.LEGACY_NOT_FOUND,
        Reason.INCONCLUSIVE,
        Reason.INCONCLUSIVE_LIMIT,
        Reason.ROUTE_WRITE_FAILED,
        Reason.RECOVERED,
        Reason.QUERY_REJECTED,
        Reason.ALERT_FIRED,
        Reason.STAGE_REQUIRED,
        Reason.BASELINE_REFUSED,
        Reason.EVALUATION_FAILED,
        Reason.DRILL_FAILED,
        Reason.DRILL_REFUSED,
        Reason.DRILL_INTERRUPTED,
        Reason.LEGACY_SHORT_OF_REPLICAS,
        Reason.LEGACY_CAPACITY_TIMEOUT,
        Reason.APPROVAL_REFUSED,
        Reason.APPROVAL_EXPIRED,
        Reason.PROMOTE_REFUSED,
        Reason.ESCALATED,
    }
)


ROLLBACK_REASONS = frozenset(
    {
        Reason.GATE_FAILED,
        Reason.PROMETHEUS_UNAVAILABLE,
        Reason.ABORTED,
        Reason.INCONCLUSIVE_LIMIT,
        Reason.QUERY_REJECTED,
        Reason.ALERT_FIRED,
        Reason.EVALUATION_FAILED,
        Reason.DRILL_FAILED,
        Reason.DRILL_ROLLED_BACK,
        Reason.APPROVAL_EXPIRED,
    }
)


# Automatic rollbacks: they move traffic back only as fast as legacy's ready replicas allow (capacity.py).
# A human's abort, a drill and an invalid spec move all of it at once.
CAPACITY_SAFE_REASONS = frozenset(
    {
        Reason.GATE_FAILED,
        Reason.PROMETHEUS_UNAVAILABLE,
        Reason.INCONCLUSIVE_LIMIT,
        Reason.QUERY_REJECTED,
        Reason.ALERT_FIRED,
        Reason.APPROVAL_EXPIRED,
    }
)
