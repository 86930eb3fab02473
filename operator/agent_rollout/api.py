"""AgentRollout v1alpha1: the pydantic models are the single source of truth.

The CRD's OpenAPI schema in crds/ is generated from these models (`make crds`), and a test fails
when the two drift apart. What the schema cannot express (non-decreasing weights, a gate with no
bound) is checked by `agent_rollout.validation` and reported as an InvalidSpec condition.
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import TYPE_CHECKING, Annotated, Any, Literal, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    GetJsonSchemaHandler,
    ModelWrapValidatorHandler,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)
from pydantic.alias_generators import to_camel
from pydantic_core import InitErrorDetails

# One source of truth for the comparison modes: the comparator's own (compare.py is pure, stdlib only).
from agent_rollout.comparator.compare import Mode as CompareMode

if TYPE_CHECKING:
    from agent_rollout.traffic.router import TrafficRouter

GROUP = "agentrollout.io"
VERSION = "v1alpha1"
KIND = "AgentRollout"
PLURAL = "agentrollouts"
SINGULAR = "agentrollout"
SHORT_NAMES = ["ar", "agentro"]
FIELD_MANAGER = "agent-rollout"
# A human's abort, selectable in the CRD (crdgen.py): at a restart the operator lists the aborted
# rollouts on their own, by this field, before the list of every rollout (controller.py).
ABORT_FIELD = "status.abort"

# The units CEL's duration() understands, so the CRD can check bounds such as interval >= 5s.
DURATION_PATTERN = r"^([0-9]+(ms|s|m|h))+$"
_DURATION_PART = re.compile(r"([0-9]+)(ms|s|m|h)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}

# A duration such as 30s, 5m, 48h or 1h30m; kept as text in the spec, parsed where it is used.
Duration = Annotated[str, Field(max_length=32, pattern=DURATION_PATTERN, examples=["30s", "5m", "48h"])]
# Kubernetes object names (DNS-1123 subdomain).
ObjectName = Annotated[str, Field(min_length=1, max_length=253, pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")]
Weight = Annotated[int, Field(ge=0, le=100)]

# Bounds on every string and list of the spec: a megabyte URL or query would pass admission and then
# make every status write fail on etcd's object size limit while traffic sits on the candidate. They
# also let the apiserver estimate the cost of the CRD's CEL rules.
MAX_GATES = 20
MAX_STEPS = 50
MAX_LABEL_NAME = 128
MAX_METRIC_NAME = 200
MAX_QUERY = 4096
# status.history: spec.historyLimit decisions (default and ceiling HISTORY_LIMIT_MAX). A decision keeps the
# evidence of up to MAX_GATES gates (~30 KiB at worst), so the ceiling is what keeps the largest status
# far below etcd's object limit (tests/test_bounds.py); a longer record is the Events' and the log's.
HISTORY_LIMIT = 20
HISTORY_LIMIT_MAX = 20
LabelName = Annotated[str, Field(max_length=MAX_LABEL_NAME, pattern=r"^[a-zA-Z_][a-zA-Z0-9_]*$")]
MetricName = Annotated[str, Field(max_length=MAX_METRIC_NAME, pattern=r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")]


# An age such as 30d or 12h: like Duration, with days; never handed to CEL (whose duration() has no days).
AGE_PATTERN = r"^([0-9]+(s|m|h|d))+$"
_AGE_PART = re.compile(r"([0-9]+)(s|m|h|d)")
Age = Annotated[str, Field(max_length=32, pattern=AGE_PATTERN, examples=["30d", "12h"])]


def age_seconds(text: str) -> float:
    """Seconds in an age such as '30d' or '1d12h'. Raises ValueError on anything else."""
    if not re.fullmatch(AGE_PATTERN, text):
        raise ValueError(f"not an age: {text!r} (use forms like 12h, 30d)")
    units = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
    return sum(int(n) * units[unit] for n, unit in _AGE_PART.findall(text))


def duration_seconds(text: str) -> float:
    """Seconds in a duration such as '1h30m'. Raises ValueError on anything else."""
    if not re.fullmatch(DURATION_PATTERN, text):
        raise ValueError(f"not a duration: {text!r} (use forms like 30s, 5m, 48h)")
    return sum(int(n) * _UNIT_SECONDS[unit] for n, unit in _DURATION_PART.findall(text))


class _Model(BaseModel):
    """camelCase on the wire, snake_case in Python; unknown fields are an error, not silently lost."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")


# ---------------------------------------------------------------- spec: targets and traffic


class DeploymentRef(_Model):
    deployment: ObjectName = Field(description="Name of an existing Deployment in the rollout's namespace.")


class Traffic(BaseModel):
    """Exactly one router: `spec.traffic.<key>` for a key of the router registry (traffic/registry.py),
    parsed with that router's own model. The CRD's schema of this section is generated from the same
    registry, so a router is added without touching this model."""

    key: str
    config: Any

    @model_validator(mode="wrap")
    @classmethod
    def _exactly_one_router(cls, raw: Any, handler: ModelWrapValidatorHandler[Traffic]) -> Traffic:
        if isinstance(raw, Traffic):
            return raw
        # Imported here: the routers' models build on this module.
        from agent_rollout.traffic import registry

        if not isinstance(raw, dict):
            raise ValueError(registry.one_router_message())
        routers = registry.routers()
        unknown = [k for k in raw if k not in routers]
        if unknown:
            raise ValidationError.from_exception_data(
                cls.__name__,
                [InitErrorDetails(type="extra_forbidden", loc=(k,), input=raw[k]) for k in unknown],
            )
        if len(raw) != 1:
            raise ValueError(registry.one_router_message())
        [(key, section)] = raw.items()
        try:
            config = routers[key].config_model.model_validate(section)
        except ValidationError as e:
            # Keep each error's path (spec.traffic.gatewayAPI.httpRoute), not one error at spec.traffic.
            raise ValidationError.from_exception_data(
                cls.__name__,
                [
                    InitErrorDetails(
                        type=err["type"],
                        loc=(key, *err["loc"]),
                        input=err["input"],
                        ctx=err.get("ctx", {}),
                    )
                    for err in e.errors()
                ],
            ) from None
        return handler({"key": key, "config": config})

    @model_serializer
    def _as_written(self) -> dict[str, Any]:
        return {self.key: self.config.model_dump(by_alias=True, exclude_none=True)}

    @classmethod
    def __get_pydantic_json_schema__(cls, core_schema: Any, handler: GetJsonSchemaHandler) -> dict[str, Any]:
        from agent_rollout.traffic import registry

        properties = {
            key: handler(router.config_model.__pydantic_core_schema__)
            for key, router in registry.routers().items()
        }
        return {"type": "object", "description": "Exactly one router.", "properties": properties}

    @property
    def router(self) -> TrafficRouter:
        from agent_rollout.traffic import registry

        return registry.router(self.key)


# ---------------------------------------------------------------- spec: analysis


class Template(StrEnum):
    ERROR_RATE = "errorRate"
    LATENCY_QUANTILE = "latencyQuantile"
    FLAG_RATE = "flagRate"
    COST_PER_REQUEST = "costPerRequest"
    TOKENS_PER_REQUEST = "tokensPerRequest"
    EVAL_ACCURACY = "evalAccuracy"
    # Shadow steps: the comparator's agreement between candidate and legacy answers (match / compared),
    # with legacy-vs-legacy agreement (the noise floor) as its legacy side for `compare`.
    SHADOW_AGREEMENT = "shadowAgreement"


class OnFailurePolicy(StrEnum):
    HOLD = "hold"
    ROLLBACK = "rollback"


class OnInconclusivePolicy(StrEnum):
    HOLD = "hold"
    PAUSE = "pause"


class OnInconclusiveLimitPolicy(StrEnum):
    ROLLBACK = "rollback"
    PAUSE = "pause"


class PrometheusSource(_Model):
    url: str = Field(
        min_length=1,
        max_length=2048,
        description="Base URL of the Prometheus HTTP API: http(s)://host[:port][/path].",
    )
    timeout: Duration = Field(default="10s", description="Per-query timeout; more than 0s, at most 5m.")


class MetricNames(_Model):
    """Metric and label names the templates render into PromQL.

    Defaults follow the OpenTelemetry GenAI semantic conventions where they exist
    (gen_ai.client.operation.duration, gen_ai.client.token.usage) and documented agent-rollout
    names where OpenTelemetry has none (flagged answers, cost, evaluations).
    """

    version_label: LabelName = Field(default="version")
    namespace_label: LabelName = Field(default="namespace")
    legacy_version: str | None = Field(
        default=None,
        min_length=1,
        max_length=253,
        description="Value of the version label for legacy; default: the legacy Deployment name.",
    )
    candidate_version: str | None = Field(
        default=None,
        min_length=1,
        max_length=253,
        description="Value of the version label for candidate; default: the candidate Deployment name.",
    )
    duration_histogram: MetricName = Field(default="gen_ai_client_operation_duration_seconds")
    error_label: LabelName = Field(
        default="error_type",
        description="Label present (non-empty) on failed requests.",
    )
    token_histogram: MetricName = Field(default="gen_ai_client_token_usage")
    flagged_counter: MetricName = Field(default="agent_answers_flagged_total")
    cost_counter: MetricName = Field(default="agent_cost_usd_total")
    price_per_token: float | None = Field(
        default=None,
        ge=0,
        description="When set, cost per request is tokens x this price instead of the cost counter.",
    )
    eval_total_counter: MetricName = Field(default="agent_eval_total")
    eval_correct_counter: MetricName = Field(default="agent_eval_correct_total")
    shadow_counter: MetricName = Field(
        default="agent_shadow_comparisons_total",
        description="The shadow comparator's legacy-vs-candidate verdicts, by outcome (shadowAgreement).",
    )
    shadow_noise_counter: MetricName = Field(
        default="agent_shadow_noise_comparisons_total",
        description="The shadow comparator's legacy-vs-legacy verdicts, by outcome: the noise floor.",
    )


class Comparison(_Model):
    """Judge the candidate against legacy over the same window instead of (or besides) fixed bounds."""

    max_ratio: float | None = Field(
        default=None,
        gt=0,
        description="higherIsWorse gates fail when candidate > maxRatio x legacy (e.g. 1.2 for p95 latency); "
        "lowerIsWorse gates fail when candidate < legacy / maxRatio.",
    )
    two_proportion: bool = Field(
        default=False,
        description="For yes/no signals: a one-sided two-proportion z-test of whether the candidate is "
        "worse than legacy, in the gate's direction.",
    )
    confidence: float = Field(
        default=0.95, gt=0.5, lt=1.0, description="Confidence of the two-proportion test."
    )
    margin: float = Field(
        default=0.0, ge=0, description="Allowed absolute difference in proportion before the test may fail."
    )


class Gate(_Model):
    name: str = Field(min_length=1, max_length=63, pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    template: Template | None = Field(default=None, description="A built-in agent metric; or give `query`.")
    query: str | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_QUERY,
        description="Custom PromQL; variables {{namespace}} {{legacy}} {{candidate}} {{version}} {{window}}.",
    )
    samples_query: str | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_QUERY,
        description="Custom PromQL returning the sample count behind `query`.",
    )
    quantile: float = Field(default=0.95, gt=0, lt=1, description="For latencyQuantile: 0.5, 0.95, 0.99 ...")
    window: Duration = Field(
        default="2m", description="Range of the rate/increase windows in the rendered query."
    )
    min: float | None = None
    max: float | None = None
    compare: Comparison | None = None
    direction: Literal["higherIsWorse", "lowerIsWorse"] | None = Field(
        default=None,
        description="Which way the signal gets worse, for compare. Templates know theirs; a custom query "
        "with only max is higherIsWorse, with only min lowerIsWorse; otherwise required with compare.",
    )
    min_samples: int | None = Field(
        default=None, ge=0, description="Overrides analysis.minSamples for this gate."
    )
    failure_limit: int | None = Field(
        default=None, ge=0, description="Overrides analysis.failureLimit for this gate."
    )
    dry_run: bool = Field(default=False, description="Evaluate and record, never act.")

    @model_validator(mode="after")
    def _template_or_query(self) -> Gate:
        if (self.template is None) == (self.query is None):
            raise ValueError(f"gate {self.name!r}: give exactly one of template or query")
        return self


class Analysis(_Model):
    prometheus: PrometheusSource
    interval: Duration = Field(default="30s", description="How often gates are evaluated; at least 5s.")
    min_samples: int = Field(default=0, ge=0, description="Below this many samples a gate gives no verdict.")
    failure_limit: int = Field(
        default=0, ge=0, description="Failed evaluations a gate may have before rollback."
    )
    consecutive_error_limit: int = Field(
        default=3, ge=0, description="Prometheus errors in a row before onPrometheusError applies."
    )
    on_prometheus_error: OnFailurePolicy = Field(default=OnFailurePolicy.HOLD)
    on_inconclusive: OnInconclusivePolicy = Field(default=OnInconclusivePolicy.HOLD)
    inconclusive_limit: int | None = Field(
        default=None,
        ge=0,
        description="Inconclusive evaluations in a row a gate may have while the candidate receives traffic "
        "before onInconclusiveLimit applies (a candidate that serves but exports no data); unset: no limit.",
    )
    on_inconclusive_limit: OnInconclusiveLimitPolicy = Field(default=OnInconclusiveLimitPolicy.ROLLBACK)
    metrics: MetricNames = Field(default_factory=MetricNames)
    gates: list[Gate] = Field(default_factory=list, max_length=MAX_GATES)

    @field_validator("interval")
    @classmethod
    def _interval_floor(cls, interval: str) -> str:
        if duration_seconds(interval) < 5:
            raise ValueError("must be at least 5s")
        return interval


# ---------------------------------------------------------------- spec: steps


class Pause(_Model):
    """Wait for a duration and/or a candidate request volume; with neither, wait for a human."""

    duration: Duration | None = None
    min_requests: int | None = Field(
        default=None, ge=1, description="Candidate requests needed since the step began."
    )


class Milestone(_Model):
    """The playbook's "first N transactions within bounds": the step holds until the candidate has served
    `transactions` requests since it began, then records every gate over exactly that window (and the
    error rate) in status.readiness as the Deploy stage's evidence."""

    transactions: int = Field(ge=1, le=100_000_000, description="Candidate requests since the step began.")


MAX_CASES = 100  # named edge cases per evaluation: their names must fit a 4 KiB termination message


class EnvVar(_Model):
    name: str = Field(min_length=1, max_length=253, pattern=r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")
    value: str = Field(default="", max_length=4096)


class EvaluationJob(_Model):
    """The container of the evaluation Job: runs the suite against the candidate and writes its result,
    one JSON object, to /dev/termination-log (the contract: see evaluation.py and the README)."""

    image: str = Field(min_length=1, max_length=512)
    command: list[Annotated[str, Field(max_length=4096)]] = Field(default_factory=list, max_length=64)
    args: list[Annotated[str, Field(max_length=4096)]] = Field(default_factory=list, max_length=64)
    env: list[EnvVar] = Field(default_factory=list, max_length=64)
    service_account_name: ObjectName | None = None
    node_selector: dict[Annotated[str, Field(max_length=317)], Annotated[str, Field(max_length=63)]] = Field(
        default_factory=dict, max_length=16, description="Where the evaluation pod may run."
    )


class Evaluate(_Model):
    """Run an evaluation suite against the candidate before it gets any user traffic (the Validate stage).

    The operator creates one Job per candidate revision and attempt (owned by the AgentRollout), injects
    AGENT_ROLLOUT_CANDIDATE_URL, waits up to `timeout`, and judges the Job's result."""

    job: EvaluationJob = Field(description="The evaluation Job's container.")
    candidate_url: str | None = Field(
        default=None,
        alias="candidateURL",
        max_length=512,
        description="Injected as AGENT_ROLLOUT_CANDIDATE_URL; default http://<candidateBackend>.<namespace>.svc",
    )
    timeout: Duration = Field(
        default="10m", description="The Job's deadline; a Job still running then fails."
    )
    min_accuracy: float | None = Field(
        default=None, gt=0, le=1, description="Share of cases the candidate must pass, e.g. 0.95."
    )
    min_cases: int = Field(default=1, ge=1, le=10_000_000, description="Fewer cases than this fail the step.")
    required_cases: list[Annotated[str, Field(min_length=1, max_length=128)]] = Field(
        default_factory=list,
        max_length=MAX_CASES,
        description="Named edge cases that must all pass (reported by name in the Job's result).",
    )
    on_failure: Literal["rollback", "pause"] = Field(
        default="rollback", description="A failed or timed-out evaluation rolls back, or pauses for a human."
    )


# Kubernetes user and group names (request.userInfo), bounded with the lists and the number of approval
# steps so the largest spec stays far below etcd's object limit (tests/test_bounds.py) and the admission
# policy's CEL cost stays low.
PrincipalName = Annotated[str, Field(min_length=1, max_length=128)]
MAX_APPROVERS = 16
MAX_APPROVAL_STEPS = 5


class OnExpiryPolicy(StrEnum):
    ROLLBACK = "rollback"
    PAUSE = "pause"


class Approvers(_Model):
    """Who may approve: a user named here, or a member of a group named here (as the apiserver
    authenticated them: request.userInfo.username and .groups)."""

    users: list[PrincipalName] = Field(default_factory=list, max_length=MAX_APPROVERS)
    groups: list[PrincipalName] = Field(default_factory=list, max_length=MAX_APPROVERS)


class Approval(_Model):
    """Hold the rollout at its current weight until `minApprovals` distinct allowed people approved the
    current candidate revision (kubectl agentrollout approve); the approver is the identity the
    apiserver authenticated, stamped by the chart's admission policies."""

    approvers: Approvers
    min_approvals: int = Field(default=1, ge=1, le=MAX_APPROVERS)
    expires: Duration | None = Field(
        default=None, description="How long the step waits for approvals from when it began; unset: forever."
    )
    on_expiry: OnExpiryPolicy = Field(
        default=OnExpiryPolicy.ROLLBACK,
        description="rollback: all traffic to legacy; pause: stay Paused on the step, recorded as "
        "ApprovalExpired (late approvals still count, abort rolls back).",
    )
    forbid_self_approval: bool = Field(
        default=True,
        description="The user who changed the candidate's pod template (agentrollout.io/template-changed-by, "
        "stamped by the chart's admission policy) cannot approve it.",
    )


class Escalate(_Model):
    """Hand a step stuck on inconclusive gates to a human instead of holding silently forever."""

    after: Duration = Field(description="Time on the step after which inconclusive gates pause the rollout.")


class ComparatorRef(_Model):
    """The shadow comparator's Service (the chart's agent-rollout-comparator), the mirror's backendRef."""

    service: ObjectName = Field(default="agent-rollout-comparator")
    port: int = Field(default=8080, ge=1, le=65535)


MAX_COMPARE_FIELDS = 16  # x 256 characters x 50 steps: far below etcd's object limit


class ShadowCompare(_Model):
    """How the comparator compares legacy's and the candidate's answers during this step, instead of its
    own flags (the comparator follows the rollout when started with --rollout NAMESPACE/NAME)."""

    mode: CompareMode = Field(
        description="exact: bodies byte for byte; json: the bodies' JSON agrees on `fields` (all of it "
        "without fields, key order and spacing ignored); text: normalised word-token similarity "
        "(of the bodies, or of each of `fields`) is at least `threshold`."
    )
    fields: list[Annotated[str, Field(min_length=1, max_length=256)]] = Field(
        default_factory=list,
        max_length=MAX_COMPARE_FIELDS,
        description="json and text modes: JSON pointers (/answer/label) or top-level keys to compare.",
    )
    threshold: float | None = Field(
        default=None, ge=0, le=1, description="text mode only: the minimum similarity, 0..1 (default 0.8)."
    )
    judge_url: str | None = Field(
        default=None,
        alias="judgeURL",
        max_length=512,
        pattern=r"^https?://[^\s]+$",
        description="Pairs the comparison calls different are POSTed here as {request, legacy, candidate} "
        'and the judge answers {"agree": true|false}. It receives requests and answers: name only a '
        "service trusted with them.",
    )


class Shadow(_Model):
    """Mirror a share of legacy's live requests to the comparator, which replays each to legacy and the
    candidate and compares the answers; users keep getting legacy's answers (candidate weight 0)."""

    percent: int = Field(ge=1, le=100, description="Share of legacy's requests mirrored, in percent.")
    duration: Duration = Field(default="10m", description="How long the step lasts, at least.")
    min_requests: int | None = Field(
        default=None,
        ge=1,
        le=100_000_000,
        description="Compared pairs (match + mismatch) the comparator must count in the step before it ends.",
    )
    comparator: ComparatorRef = Field(default_factory=ComparatorRef)
    compare: ShadowCompare | None = Field(
        default=None,
        description="The comparison for this step; unset: the comparator's own (its flags).",
    )


class Step(_Model):
    set_weight: Weight | None = Field(default=None, description="Percent of traffic for the candidate.")
    pause: Pause | None = None
    evaluate: Evaluate | None = Field(
        default=None, description="Run an evaluation Job against the candidate; no user traffic meanwhile."
    )
    approval: Approval | None = None
    escalate: Escalate | None = Field(
        default=None,
        description="Pause the rollout (reason Escalated) when gates stay inconclusive this long.",
    )
    shadow: Shadow | None = Field(
        default=None,
        description="Mirror legacy's traffic to the shadow comparator; the candidate gets no user traffic.",
    )
    milestone: Milestone | None = Field(
        default=None, description="Hold this step until its first N candidate transactions are recorded."
    )

    @model_validator(mode="after")
    def _exactly_one_kind(self) -> Step:
        kinds = [
            k
            for k in ("set_weight", "pause", "evaluate", "approval", "shadow")
            if getattr(self, k) is not None
        ]
        if len(kinds) != 1:
            raise ValueError("each step needs exactly one of setWeight, pause, evaluate, approval or shadow")
        return self


# ---------------------------------------------------------------- spec: readiness


class Stage(StrEnum):
    """The playbook's five stages, in order: each is a prerequisite of the next."""

    PILOT = "Pilot"
    VALIDATE = "Validate"
    HARDEN = "Harden"
    DEPLOY = "Deploy"
    OPTIMIZE = "Optimize"


class Criterion(StrEnum):
    """Exit criteria of the stages; `stage/name`, so a criterion says where it belongs."""

    ACCURACY = "pilot/accuracy"
    EDGE_CASES = "validate/edge-cases"
    ALERTS = "harden/alerts"
    ROLLBACK_DRILL = "harden/rollback-drill"
    FIRST_TRANSACTIONS = "deploy/first-transactions"
    ALERT_ANSWERED = "deploy/alert-answered"
    BASELINE = "optimize/baseline"


class RequireStage(_Model):
    """The candidate's weight may not exceed `before` until `stage` is Met: a step (or the promotion)
    that would raise it above `before` holds, and says which criterion is missing."""

    stage: Stage
    before: Weight = Field(description="Highest candidate weight allowed while the stage is not Met.")


class AlertSignal(StrEnum):
    LATENCY = "latency"
    ERROR_RATE = "errorRate"


class Criteria(_Model):
    """Bounds of the exit criteria; defaults from the playbook."""

    min_accuracy: float = Field(
        default=0.95, ge=0, le=1, description="Pilot: evaluation accuracy at least this."
    )
    min_cases: int = Field(default=200, ge=1, description="Pilot: on at least this many evaluation inputs.")
    edge_cases: list[Annotated[str, Field(min_length=1, max_length=128)]] = Field(
        default_factory=list, max_length=50, description="Validate: named edge cases that must pass."
    )
    max_rollback_time: Duration = Field(
        default="15m", description="Harden: a rollback drill must finish within this."
    )
    alerts: list[AlertSignal] = Field(
        default_factory=lambda: [AlertSignal.LATENCY, AlertSignal.ERROR_RATE],
        max_length=2,
        description="Harden: signals that must have alerts configured.",
    )
    alerts_answered: int = Field(default=1, ge=1, description="Deploy: alerts answered during the rollout.")
    improvement_target: float = Field(
        default=0.2,
        ge=0,
        le=1,
        description="Optimize: the cost per transaction a new baseline should save against the previous "
        "one (0.2: 20% lower); reported next to the change, never acted on.",
    )
    waive: list[Criterion] = Field(
        default_factory=list,
        max_length=len(Criterion),
        description="Criteria this rollout does not require; a waived criterion is left out of its stage.",
    )


class RequireDrill(_Model):
    """The candidate's weight may not exceed `before` unless a rollback drill passed within `maxAge`
    (kubectl agentrollout drill): a step (or the promotion) that would raise it above `before` holds."""

    before: Weight = Field(description="Highest candidate weight allowed without a recent passed drill.")
    max_age: Age = Field(default="30d", description="How old the last passed drill may be, e.g. 30d, 12h.")


class Readiness(_Model):
    require_stages: list[RequireStage] = Field(default_factory=list, max_length=len(Stage))
    require_drill: RequireDrill | None = None
    criteria: Criteria = Field(default_factory=Criteria)


class SinkType(StrEnum):
    WEBHOOK = "webhook"  # the decision as JSON (agent_rollout.notify.webhook_body)
    SLACK = "slack"  # Slack incoming webhook: {"text", "blocks"}
    TEAMS = "teams"  # Microsoft Teams workflow webhook: a message with an Adaptive Card


class NotificationEvent(StrEnum):
    """What a sink is told of; agent_rollout.notify maps each decision's reason to one of these."""

    STEP_COMPLETED = "StepCompleted"
    AWAITING_APPROVAL = "AwaitingApproval"
    APPROVED = "Approved"
    APPROVAL_REFUSED = "ApprovalRefused"
    ESCALATED = "Escalated"
    ROLLED_BACK = "RolledBack"
    PROMOTED = "Promoted"


class SecretKeyRef(_Model):
    name: ObjectName = Field(description="A Secret in the rollout's namespace.")
    key: Annotated[str, Field(min_length=1, max_length=253)]


class SecretSource(_Model):
    secret_key_ref: SecretKeyRef


class NotificationSink(_Model):
    """Where the rollout's decisions are sent. The webhook URL (it carries the token for Slack and Teams)
    is read from a Secret, never written in the spec."""

    name: Annotated[str, Field(min_length=1, max_length=63, pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")]
    type: SinkType = SinkType.WEBHOOK
    url_from: SecretSource = Field(description="The Secret key holding the webhook URL.")
    events: list[NotificationEvent] = Field(
        default_factory=list, max_length=len(NotificationEvent), description="Sent to this sink; empty: all."
    )


MAX_NOTIFICATION_SINKS = 10


class Rollback(_Model):
    """How an automatic rollback (a failed gate, an alert, ...) moves traffic back to legacy when legacy
    is short of ready replicas; `kubectl agentrollout abort` always moves all of it at once."""

    min_legacy_ready_replicas: int | None = Field(
        default=None,
        ge=1,
        description="Ready replicas legacy needs to take all traffic; default: the ready replicas it had "
        "when the rollout began (status.legacyReplicasAtStart).",
    )
    capacity_timeout: Duration = Field(
        default="5m",
        description="How long a rollback may keep traffic on the candidate while legacy's ready replicas "
        "grow; after it all traffic goes to legacy anyway. 0s: always all at once.",
    )


class OnDelete(StrEnum):
    ROUTE_TO_LEGACY = "routeToLegacy"
    KEEP_WEIGHTS = "keepWeights"


class AgentRolloutSpec(_Model):
    legacy: DeploymentRef = Field(
        description="What we roll back to; kept warm, never scaled down or deleted."
    )
    candidate: DeploymentRef
    traffic: Traffic
    analysis: Analysis | None = None
    steps: list[Step] = Field(min_length=1, max_length=MAX_STEPS)
    readiness: Readiness = Field(
        default_factory=Readiness,
        description="The five-stage scorecard's exit criteria, and the stages required before a weight.",
    )
    notifications: list[NotificationSink] = Field(
        default_factory=list,
        max_length=MAX_NOTIFICATION_SINKS,
        description="Webhooks told of this rollout's decisions (README: Notifications).",
    )
    rollback: Rollback = Field(
        default_factory=Rollback,
        description="Capacity-safe rollback: traffic goes back as fast as legacy's ready replicas allow.",
    )
    on_delete: OnDelete = Field(
        default=OnDelete.ROUTE_TO_LEGACY,
        description="Deleting the rollout: routeToLegacy sends all traffic to legacy before the deletion "
        "completes (the operator's finalizer holds it); keepWeights leaves the route as it is.",
    )

    @model_validator(mode="after")
    def _few_approval_steps(self) -> AgentRolloutSpec:
        if sum(1 for s in self.steps if s.approval is not None) > MAX_APPROVAL_STEPS:
            raise ValueError(f"at most {MAX_APPROVAL_STEPS} approval steps")
        return self

    history_limit: int = Field(
        default=HISTORY_LIMIT,
        ge=1,
        le=HISTORY_LIMIT_MAX,
        description="Decisions status.history keeps; the oldest is dropped first (Events and the operator's "
        "JSON log lines keep every one).",
    )


# ---------------------------------------------------------------- status


class Phase(StrEnum):
    PENDING = "Pending"
    PROGRESSING = "Progressing"
    PAUSED = "Paused"
    PROMOTED = "Promoted"
    ROLLED_BACK = "RolledBack"
    FAILED = "Failed"


class Verdict(StrEnum):
    PASS = "Pass"
    FAIL = "Fail"
    INCONCLUSIVE = "Inconclusive"


class Weights(_Model):
    legacy: Weight = 100
    candidate: Weight = 0

    @model_validator(mode="after")
    def _sum_to_100(self) -> Weights:
        if self.legacy + self.candidate != 100:
            raise ValueError("weights must sum to 100")
        return self


class GateResult(_Model):
    """One gate's evaluation: the evidence behind every verdict."""

    name: str
    verdict: Verdict
    value: float | None = None
    legacy_value: float | None = None
    bound: str = Field(default="", description="Human-readable bound, e.g. '<= 0.01' or '<= 1.2 x legacy'.")
    samples: int | None = None
    legacy_samples: int | None = None
    min_samples: int = 0
    query: str = ""
    message: str = ""
    dry_run: bool = False


class Condition(_Model):
    """metav1.Condition."""

    type: str
    status: Literal["True", "False", "Unknown"]
    reason: str
    message: str = ""
    last_transition_time: str
    observed_generation: int | None = None


class EvaluationRecord(_Model):
    """One run of an evaluation step's Job, for one candidate revision and attempt."""

    step: int
    revision: str | None = None
    job: str = Field(description="The Job's name (owned by the AgentRollout).")
    phase: Literal["Running", "Passed", "Failed"] = "Running"
    started_at: str
    finished_at: str | None = None
    total: int | None = None
    passed: int | None = None
    accuracy: float | None = None
    failed_cases: list[str] = Field(default_factory=list, description="Failing named cases, at most 100.")
    message: str = ""


UNKNOWN = "unknown"
OPERATOR = "operator"


class AgentVersion(_Model):
    """The candidate agent a decision was about: its image(s) and the versions of its model, prompt and
    tools, read from pod-template annotations (agent_rollout.agentversion); "unknown" when not given."""

    image: str = UNKNOWN
    model: str = UNKNOWN
    prompt: str = UNKNOWN
    tools: str = UNKNOWN
    revision: str | None = Field(default=None, description="Hash of the candidate's pod template.")


class Decision(_Model):
    """One entry of the audit trail: what was decided, when, by whom, about which agent, on what evidence."""

    time: str
    reason: str
    message: str
    step: int
    weights: Weights
    evidence: list[GateResult] = Field(default_factory=list)
    actor: str = Field(
        default=OPERATOR,
        description="`operator`, or the user the apiserver authenticated for a human verb (as the chart's "
        "admission policy stamped it); `unverified` for a verb set without such a record.",
    )
    actor_groups: list[str] = Field(default_factory=list)
    agent_version: AgentVersion | None = None


class VerbRequest(_Model):
    """Who asked for a verb: `by` and `groups` are request.userInfo, stamped by the chart's
    MutatingAdmissionPolicy; a `by` naming anyone else is refused by its ValidatingAdmissionPolicy."""

    by: str | None = None
    groups: list[str] = Field(default_factory=list)
    reason: str = Field(default="", max_length=1024)
    revision: str | None = Field(default=None, description="The candidate revision the request is about.")


class Requests(_Model):
    """The latest request of each human verb with its author; the operator removes one as it acts on it."""

    abort: VerbRequest | None = None
    promote: VerbRequest | None = None
    retry: VerbRequest | None = None
    record_baseline: VerbRequest | None = None
    approve: VerbRequest | None = None
    drill: VerbRequest | None = None


class GivenApproval(_Model):
    """An approval the operator counted for the current approval step and candidate revision."""

    by: str
    groups: list[str] = Field(default_factory=list)
    at: str
    reason: str = ""
    revision: str | None = None
    step: int


class Score(StrEnum):
    MET = "Met"
    NOT_MET = "NotMet"
    NOT_MEASURED = "NotMeasured"


class CriterionScore(_Model):
    """One exit criterion with its evidence; NotMeasured until that evidence exists, never guessed."""

    name: Criterion
    score: Score
    requirement: str = Field(
        default="", description="What must be true, e.g. 'accuracy >= 0.95 on >= 200 inputs'."
    )
    value: float | None = None
    bound: str = ""
    samples: int | None = None
    at: str | None = Field(default=None, description="When the evidence was recorded.")
    source: str = Field(default="", description="Where the evidence comes from, e.g. 'milestone of step 2'.")
    message: str = ""


class StageScore(_Model):
    stage: Stage
    score: Score = Field(description="Met when every criterion is Met; NotMet when any is NotMet.")
    criteria: list[CriterionScore] = Field(default_factory=list)
    waived: list[Criterion] = Field(default_factory=list)


class MilestoneRecord(_Model):
    """The first N candidate transactions of a step: every gate over exactly the window since the step
    began, measured at the first evaluation that counted at least N requests."""

    step: int
    transactions: int = Field(description="N, from the step's milestone.")
    requests: int = Field(description="Candidate requests counted in the window (at least N).")
    window_start: str
    window_seconds: int
    recorded_at: str
    error_rate: float | None = None
    score: Score
    gates: list[GateResult] = Field(default_factory=list)


class BaselineMetric(_Model):
    """One measured signal of a baseline: candidate and legacy over the same window, with samples."""

    name: str
    candidate: float | None = None
    legacy: float | None = None
    candidate_samples: int | None = None
    legacy_samples: int | None = None
    previous: float | None = Field(
        default=None, description="The candidate's value in the previous baseline."
    )
    change: float | None = Field(
        default=None,
        description="Relative change of the candidate against the previous baseline (-0.2: 20% lower).",
    )


class Baseline(_Model):
    """Recorded when a revision is promoted, and on demand (status.recordBaseline): what it costs and how
    it behaves, against legacy and against the previous promoted revision's baseline of this AgentRollout
    (the Optimize stage's evidence)."""

    revision: str | None = None
    recorded_at: str
    window_seconds: int = Field(
        description="The window is the last windowSeconds before recordedAt: from the rollout's start, "
        "at most 1h; legacy served in it until the promotion, the candidate throughout."
    )
    phase: Phase | None = Field(
        default=None,
        description="The rollout's phase when recorded: Promoted, or Progressing/Paused for a baseline "
        "recorded on demand mid-rollout (absent: recorded at promotion by an older operator).",
    )
    on_demand: bool = Field(
        default=False, description="Recorded because a human set status.recordBaseline, not at promotion."
    )
    metrics: list[BaselineMetric] = Field(default_factory=list)
    previous_revision: str | None = Field(
        default=None, description="The promoted revision whose baseline `previous` and `change` compare with."
    )
    previous_recorded_at: str | None = None


class ReadinessStatus(_Model):
    stage: Stage = Field(description="The first stage not Met: where the agent stands.")
    next: str = Field(default="", description="The next unmet criterion, in one line.")
    stages: list[StageScore] = Field(default_factory=list)
    milestones: list[MilestoneRecord] = Field(default_factory=list)


class DrillRequest(_Model):
    """status.drill, set by a human (kubectl agentrollout drill): rehearse a rollback now."""

    stay_rolled_back: bool = Field(
        default=False, description="When the drill passes, stay RolledBack instead of returning to the step."
    )
    bound: Duration | None = Field(
        default=None,
        description="The drill passes only if legacy is confirmed within this long of its start; default: "
        "spec.readiness.criteria.maxRollbackTime (15m).",
    )


class DrillResult(StrEnum):
    RUNNING = "Running"
    PASSED = "Passed"
    FAILED = "Failed"
    INTERRUPTED = "Interrupted"  # the rollout left the step meanwhile (abort, alert, new revision)


class DrillRecord(_Model):
    """A rollback drill: all traffic to legacy, then legacy's own metrics confirm it serves within bounds."""

    result: DrillResult
    started_at: str
    bound: Duration
    stay_rolled_back: bool = False
    step: int = Field(description="The step the drill left (and returns to when it passes).")
    weights: Weights = Field(description="The weights the drill left.")
    revision: str | None = None
    route_legacy_at: str | None = Field(default=None, description="When the route was seen at legacy 100.")
    confirmed_at: str | None = Field(
        default=None, description="When legacy's own metrics confirmed it serves within every drill gate."
    )
    finished_at: str | None = None
    route_seconds: int | None = Field(default=None, description="startedAt to routeLegacyAt.")
    confirm_seconds: int | None = Field(
        default=None, description="startedAt to confirmedAt: the rollback time judged against `bound`."
    )
    message: str = ""
    evidence: list[GateResult] = Field(default_factory=list)


class CapacityRollback(_Model):
    """An automatic rollback moving traffic to legacy only as fast as its ready replicas allow."""

    started_at: str
    reason: str = Field(description="The rollback's decision reason (GateFailed, AlertFired, ...).")
    required: int = Field(description="Ready replicas legacy needs to take all traffic.")
    ready: int = Field(description="Legacy's ready replicas when last seen.")
    deadline: str = Field(description="After this, all traffic goes to legacy anyway (capacityTimeout).")


class AgentRolloutStatus(_Model):
    phase: Phase = Phase.PENDING
    message: str = ""
    sequence: int = Field(
        default=0,
        description="Operator-owned counter, raised by every status write of the operator: a body with a "
        "lower sequence is older than the operator's last write.",
    )
    current_step: int = 0
    step: str = Field(default="", description="1-based position for humans, e.g. 2/7 (the Step column).")
    step_started_at: str | None = None
    weights: Weights = Field(default_factory=Weights)
    observed_generation: int | None = None
    candidate_revision: str | None = Field(
        default=None, description="Hash of the candidate Deployment's pod template the rollout is judging."
    )
    rolled_back_revision: str | None = Field(
        default=None,
        description="The candidate revision last rolled back: it stays so until a retry or a new revision.",
    )
    gate_failures: dict[str, int] = Field(default_factory=dict)
    last_failure_at: dict[str, str] = Field(
        default_factory=dict,
        description="When each gate's last counted failure was seen: the next failure counts only samples "
        "newer than it, so one burst is one failure.",
    )
    inconclusive_runs: dict[str, int] = Field(
        default_factory=dict,
        description="Inconclusive evaluations in a row per gate while the candidate serves.",
    )
    consecutive_errors: int = 0
    last_analysis: list[GateResult] = Field(default_factory=list)
    last_analysis_at: str | None = None
    abort: bool = Field(
        default=False, description="Set by a human (kubectl agentrollout abort): roll back now."
    )
    promote: bool = Field(
        default=False, description="Set by a human (kubectl agentrollout promote): end the current pause."
    )
    retry: bool = Field(
        default=False,
        description="Set by a human (kubectl agentrollout retry): restart a rolled-back rollout from step 1.",
    )
    record_baseline: bool = Field(
        default=False,
        description="Set by a human (kubectl agentrollout baseline): record the candidate revision's "
        "baseline against legacy now (Progressing or Paused with candidate traffic, or Promoted).",
    )
    drill: DrillRequest | None = Field(
        default=None,
        description="Set by a human (kubectl agentrollout drill): rehearse a rollback to legacy now.",
    )
    last_drill: DrillRecord | None = Field(default=None, description="The latest rollback drill.")
    passed_drill: DrillRecord | None = Field(
        default=None,
        description="The latest rollback drill that passed (readiness evidence); kept across rollouts.",
    )
    legacy_replicas_at_start: int | None = Field(
        default=None, description="Legacy's ready replicas when the current attempt began."
    )
    capacity_rollback: CapacityRollback | None = Field(
        default=None, description="A rollback waiting for legacy's ready replicas to take all traffic."
    )
    requests: Requests | None = Field(
        default=None,
        description="Who asked for each verb (status.requests.approve is the approve verb itself): stamped "
        "by the apiserver's admission from request.userInfo, consumed by the operator.",
    )
    approvals: list[GivenApproval] = Field(
        default_factory=list, description="Approvals counted for the current approval step and revision."
    )
    candidate_changed_by: str | None = Field(
        default=None,
        description="Who changed the candidate's pod template last (its agentrollout.io/template-changed-by "
        "annotation): forbidSelfApproval refuses this user's approval.",
    )
    conditions: list[Condition] = Field(default_factory=list)
    history: list[Decision] = Field(default_factory=list)
    readiness: ReadinessStatus | None = None
    attempt_started_at: str | None = Field(
        default=None, description="When the current attempt (start, retry, new revision) began."
    )
    baseline: Baseline | None = Field(
        default=None,
        description="The latest baseline (at promotion, or on demand); kept across rollouts.",
    )
    evaluations: list[EvaluationRecord] = Field(
        default_factory=list,
        description="Evaluation Jobs run for the current candidate revision (latest last, at most 20).",
    )


MILESTONE_LIMIT = 5  # the first milestones of an attempt: "the first N transactions" is about the first


def parse_spec(raw: dict[str, Any]) -> AgentRolloutSpec:
    return AgentRolloutSpec.model_validate(raw)


def parse_status(raw: dict[str, Any] | None) -> AgentRolloutStatus:
    """Status as we last wrote it; unknown keys (kopf's own bookkeeping) are ignored, not an error."""
    known = {f.alias or name for name, f in AgentRolloutStatus.model_fields.items()}
    return AgentRolloutStatus.model_validate({k: v for k, v in (raw or {}).items() if k in known})


def dump(model: BaseModel) -> dict[str, Any]:
    """Wire form: camelCase, no nulls."""
    return model.model_dump(mode="json", by_alias=True, exclude_none=True)


M = TypeVar("M", bound=BaseModel)


def parse_alone(model: type[M], raw: Any) -> M | None:
    """One part of a spec that failed elsewhere (or a whole one), when that part parses on its own."""
    try:
        return model.model_validate(raw)
    except ValidationError:
        return None
