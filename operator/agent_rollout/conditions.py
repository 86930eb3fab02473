"""Status conditions in metav1.Condition shape: the types and reasons the planner writes.

`lastTransitionTime` moves only when a condition's status flips (True/False/Unknown), never when
only its reason or message changes, so a steady rollout keeps writing the same conditions.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Literal

from agent_rollout.api import Condition
from agent_rollout.domain import iso

ConditionStatus = Literal["True", "False", "Unknown"]


class ConditionType(StrEnum):
    SPEC_VALID = "SpecValid"  # the spec parsed and passed agent_rollout.validation
    TARGETS_READY = "TargetsReady"  # both Deployments exist
    TRAFFIC_ROUTED = "TrafficRouted"  # the route carries status.weights
    ANALYSIS_HEALTHY = "AnalysisHealthy"  # the last gate evaluation ran (only when gates are configured)
    COMPLETED = "Completed"  # True once promoted
    STAGES_READY = "StagesReady"  # the next weight raise is allowed by spec.readiness.requireStages
    LEGACY_CAPACITY = "LegacyCapacity"  # legacy's ready replicas can take back what a rollback sends it


class ConditionReason(StrEnum):
    VALID = "Valid"
    INVALID_SPEC = "InvalidSpec"
    DEPLOYMENTS_FOUND = "DeploymentsFound"
    DEPLOYMENT_NOT_FOUND = "DeploymentNotFound"
    ROUTE_FOUND = "RouteFound"  # route readable, not yet owned (before the rollout starts)
    ROUTE_NOT_FOUND = "RouteNotFound"
    WEIGHTS_APPLIED = "WeightsApplied"
    WEIGHTS_PENDING = "WeightsPending"  # a weight write has not landed (or someone changed the route)
    ROUTE_CLAIMED = "RouteClaimed"  # an older AgentRollout manages the same route
    MIRROR_CONFLICT = "MirrorConflict"  # the route already mirrors to the comparator: not our filter
    TARGET_UNAVAILABLE = "TargetUnavailable"  # the wanted weights would send users to nowhere
    ROUTE_WRITE_FAILED = "RouteWriteFailed"  # the API server failed the weight write (5xx, timeout)
    ROUTE_WRITE_REFUSED = "RouteWriteRefused"  # refused by RBAC, validation or admission (403, 422)
    CANDIDATE_UNAVAILABLE = "CandidateUnavailable"
    EVALUATED = "Evaluated"
    PROMETHEUS_UNAVAILABLE = "PrometheusUnavailable"
    QUERY_REJECTED = "QueryRejected"  # Prometheus refuses a query as invalid: no retry will help
    NOT_STARTED = "NotStarted"
    IN_PROGRESS = "InProgress"
    PROMOTED = "Promoted"
    ROLLED_BACK = "RolledBack"
    STAGES_MET = "StagesMet"
    STAGE_NOT_MET = "StageNotMet"
    LEGACY_SHORT_OF_REPLICAS = "LegacyShortOfReplicas"  # a rollback moves traffic back as replicas grow
    LEGACY_REPLICAS_READY = "LegacyReplicasReady"
    LEGACY_CAPACITY_TIMEOUT = "LegacyCapacityTimeout"  # sent everything after capacityTimeout, still short


def find_condition(conditions: list[Condition], type_: str) -> Condition | None:
    return next((c for c in conditions if c.type == type_), None)


def set_condition(
    conditions: list[Condition],
    type_: str,
    status: ConditionStatus,
    reason: str,
    message: str,
    now: datetime,
    generation: int | None,
) -> list[Condition]:
    """A new list with `type_` set; existing conditions keep their position so output is stable."""
    old = find_condition(conditions, type_)
    since = old.last_transition_time if old is not None and old.status == status else iso(now)
    new = Condition(
        type=type_,
        status=status,
        reason=reason,
        message=message,
        last_transition_time=since,
        observed_generation=generation,
    )
    if old is None:
        return [*conditions, new]
    return [new if c.type == type_ else c for c in conditions]


def remove_condition(conditions: list[Condition], type_: str) -> list[Condition]:
    return [c for c in conditions if c.type != type_]
