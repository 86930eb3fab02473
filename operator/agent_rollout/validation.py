"""Spec rules the CRD's OpenAPI schema cannot express.

`validate(spec)` returns every problem at once (the shell calls it once per reconcile and hands the
result to the planner in Observations.problems), each naming the field (spec.steps[2].setWeight), so
one `kubectl describe` shows all a user has to fix. The planner turns any problem into phase Failed
with condition SpecValid=False, reason InvalidSpec.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from agent_rollout.analysis.gates import TEMPLATE_DIRECTIONS, inferred_direction
from agent_rollout.analysis.templates import (
    PROPORTION_TEMPLATES,
    VARIABLES,
    TemplateError,
    query_variables,
    render_variables,
)
from agent_rollout.api import (
    MILESTONE_LIMIT,
    AgentRolloutSpec,
    Analysis,
    Gate,
    PrometheusSource,
    ShadowCompare,
    Stage,
    Step,
    duration_seconds,
)
from agent_rollout.comparator.compare import Mode as CompareMode
from agent_rollout.domain import SpecProblem
from agent_rollout.drill import spec_problems as drill_spec_problems
from agent_rollout.readiness import STAGE_CRITERIA
from agent_rollout.routing import step_weights
from agent_rollout.shadow import shadow_problems

# A query that takes longer than this holds a reconcile (and a worker thread) too long to be useful;
# every analysis interval starts new ones anyway.
TIMEOUT_MAX_SECONDS = 300.0
_WHITESPACE_OR_CONTROL = re.compile(r"[\s\x00-\x1f\x7f]")

# Yes/no signals: a count of "bad" (or "correct") answers out of a count of requests, which is what a
# two-proportion test needs. Latency, cost and tokens are not proportions.


def validate(spec: AgentRolloutSpec) -> list[SpecProblem]:
    return [
        *_target_problems(spec),
        *_step_problems(spec.steps),
        *_shadow_spec_problems(spec),
        *_analysis_problems(spec.analysis),
        *_readiness_problems(spec),
        *_notification_problems(spec),
        *drill_spec_problems(spec),
    ]


def _notification_problems(spec: AgentRolloutSpec) -> list[SpecProblem]:
    # A sink's name labels its delivery metrics and names it in Events: two of one name would be one.
    seen: dict[str, int] = {}
    problems = []
    for i, sink in enumerate(spec.notifications):
        if sink.name in seen:
            problems.append(
                SpecProblem(
                    f"spec.notifications[{i}].name",
                    f"{sink.name!r} is already the name of spec.notifications[{seen[sink.name]}]",
                )
            )
        seen.setdefault(sink.name, i)
    return problems


def _shadow_spec_problems(spec: AgentRolloutSpec) -> list[SpecProblem]:
    """Rules of shadow steps that need the rest of the spec."""
    problems = []
    traffic = spec.traffic
    backends = traffic.router.backends(traffic.config)
    for i, step in enumerate(spec.steps):
        if step.shadow is None:
            continue
        path = f"spec.steps[{i}].shadow"
        if not traffic.router.supports_mirror:
            problems.append(
                SpecProblem(path, f"the router spec.traffic.{traffic.key} cannot mirror requests")
            )
        if step.shadow.min_requests is not None and spec.analysis is None:
            problems.append(
                SpecProblem(
                    f"{path}.minRequests",
                    "compared pairs are counted in Prometheus: spec.analysis is required",
                )
            )
        problems += _compare_problems(step.shadow.compare, f"{path}.compare")
        service = step.shadow.comparator.service
        if service in backends:
            problems.append(
                SpecProblem(
                    f"{path}.comparator.service",
                    f"the comparator Service {service!r} is a backend of the route: mirroring to it would "
                    "send shadow copies to users' agents",
                )
            )
    return problems


def _compare_problems(compare: ShadowCompare | None, path: str) -> list[SpecProblem]:
    """A step's comparison: what one mode ignores is refused rather than silently not applied."""
    if compare is None:
        return []
    problems = []
    if compare.fields and compare.mode is CompareMode.EXACT:
        problems.append(
            SpecProblem(f"{path}.fields", "fields need mode json or text (exact compares whole bodies)")
        )
    if compare.threshold is not None and compare.mode is not CompareMode.TEXT:
        problems.append(SpecProblem(f"{path}.threshold", "threshold applies to mode text only"))
    return problems


def _readiness_problems(spec: AgentRolloutSpec) -> list[SpecProblem]:
    """Milestones and required stages that could never be satisfied would hold a step forever."""
    problems = []
    milestones = [i for i, step in enumerate(spec.steps) if step.milestone is not None]
    for i in milestones:
        path = f"spec.steps[{i}].milestone"
        if spec.analysis is None:
            problems.append(
                SpecProblem(path, "a milestone counts requests in Prometheus: spec.analysis is required")
            )
        if step_weights(spec.steps, i).candidate == 0:
            problems.append(
                SpecProblem(path, "the candidate has weight 0 at this step: it would serve no transaction")
            )
    for i in milestones[MILESTONE_LIMIT:]:
        problems.append(
            SpecProblem(f"spec.steps[{i}].milestone", f"at most {MILESTONE_LIMIT} steps may have a milestone")
        )
    first = step_weights(spec.steps, 0).candidate
    waived = set(spec.readiness.criteria.waive)
    seen: set[Stage] = set()
    for i, required in enumerate(spec.readiness.require_stages):
        path = f"spec.readiness.requireStages[{i}]"
        if required.stage in seen:
            problems.append(SpecProblem(f"{path}.stage", f"stage {required.stage.value} is required twice"))
        seen.add(required.stage)
        if required.before < first:
            problems.append(
                SpecProblem(
                    f"{path}.before",
                    f"the first step already gives the candidate weight {first}, above before "
                    f"{required.before}: the rollout could never start (each attempt starts with no "
                    "evidence)",
                )
            )
        if all(c in waived for c in STAGE_CRITERIA[required.stage]):
            problems.append(
                SpecProblem(
                    f"{path}.stage",
                    f"every criterion of stage {required.stage.value} is waived: it can never be Met",
                )
            )
    return problems


def _target_problems(spec: AgentRolloutSpec) -> list[SpecProblem]:
    problems = []
    if spec.legacy.deployment == spec.candidate.deployment:
        problems.append(
            SpecProblem(
                "spec.candidate.deployment",
                f"candidate and legacy are the same Deployment {spec.candidate.deployment!r}; "
                "a rollback needs somewhere else to go",
            )
        )
    traffic = spec.traffic
    problems += traffic.router.problems(traffic.config, f"spec.traffic.{traffic.key}")
    return problems


def _step_problems(steps: list[Step]) -> list[SpecProblem]:
    # Weights only go up: a step that lowers the candidate's share would undo what earlier steps
    # proved; going back is what a rollback is for.
    problems = []
    highest, highest_at = 0, -1
    for i, step in enumerate(steps):
        if step.evaluate is not None:
            problems += _evaluate_problems(step, f"spec.steps[{i}].evaluate", highest_at)
        if step.shadow is not None:
            problems += shadow_problems(step.shadow, f"spec.steps[{i}].shadow", highest_at)
        if step.set_weight is None:
            continue
        if step.set_weight < highest:
            problems.append(
                SpecProblem(
                    f"spec.steps[{i}].setWeight",
                    f"setWeight {step.set_weight} is lower than setWeight {highest} at "
                    f"spec.steps[{highest_at}]; weights must not decrease",
                )
            )
        else:
            highest, highest_at = step.set_weight, i
    return problems


def _evaluate_problems(step: Step, path: str, weighted_at: int) -> list[SpecProblem]:
    # An evaluation judges the candidate before any user reaches it (the Validate stage): after a
    # setWeight step users would keep reaching it while the suite runs.
    assert step.evaluate is not None
    problems = []
    if weighted_at >= 0:
        problems.append(
            SpecProblem(
                path,
                f"an evaluate step must come before any setWeight step (spec.steps[{weighted_at}] "
                "already sends users to the candidate)",
            )
        )
    if step.evaluate.candidate_url is not None and (problem := _url_problem(step.evaluate.candidate_url)):
        problems.append(SpecProblem(f"{path}.candidateURL", problem))
    return problems


def _analysis_problems(analysis: Analysis | None) -> list[SpecProblem]:
    if analysis is None:
        return []
    problems = _prometheus_problems(analysis.prometheus, "spec.analysis.prometheus")
    first_index: dict[str, int] = {}
    for i, gate in enumerate(analysis.gates):
        path = f"spec.analysis.gates[{i}]"
        if gate.name in first_index:
            problems.append(
                SpecProblem(
                    f"{path}.name",
                    f"duplicate gate name {gate.name!r} (also spec.analysis.gates[{first_index[gate.name]}])",
                )
            )
        else:
            first_index[gate.name] = i
        problems.extend(_gate_problems(gate, path))
    return problems


def _prometheus_problems(source: PrometheusSource, path: str) -> list[SpecProblem]:
    """A URL or timeout the adapter could never use: caught before any traffic moves, instead of
    a rollout whose every evaluation reports "Prometheus unavailable" (or raises)."""
    problems = []
    url_problem = _url_problem(source.url)
    if url_problem:
        problems.append(SpecProblem(f"{path}.url", f"{url_problem}: {source.url[:100]!r}"))
    try:
        seconds = duration_seconds(source.timeout)
    except ValueError as error:
        problems.append(SpecProblem(f"{path}.timeout", str(error)))
    else:
        if not 0 < seconds <= TIMEOUT_MAX_SECONDS:
            problems.append(
                SpecProblem(
                    f"{path}.timeout",
                    f"timeout {source.timeout} must be longer than 0s and at most "
                    f"{TIMEOUT_MAX_SECONDS / 60:g}m",
                )
            )
    return problems


def _url_problem(url: str) -> str | None:
    # Its length is bounded by the schema (maxLength), so the apiserver refuses a huge one.
    if _WHITESPACE_OR_CONTROL.search(url):
        return "URL contains whitespace or control characters"
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018  # raises ValueError on a port that is not a number in 0-65535
    except ValueError as error:
        return f"not a URL ({error})"
    if parts.scheme not in ("http", "https"):
        return "URL needs the scheme http:// or https://"
    if not parts.hostname:
        return "URL has no host"
    if parts.query or parts.fragment:
        # The adapter appends /api/v1/query to the URL; a query string or fragment would swallow it.
        return "URL must not have a query string or fragment"
    return None


def _gate_problems(gate: Gate, path: str) -> list[SpecProblem]:
    problems = []
    compare = gate.compare
    if gate.min is None and gate.max is None and compare is None:
        problems.append(SpecProblem(path, f"gate {gate.name!r} has no bound: give min, max or compare"))
    if compare is not None and compare.max_ratio is None and not compare.two_proportion:
        problems.append(
            SpecProblem(f"{path}.compare", f"gate {gate.name!r}: compare needs maxRatio or twoProportion")
        )
    if duration_seconds(gate.window) <= 0:  # PromQL refuses a [0s] range
        problems.append(SpecProblem(f"{path}.window", f"gate {gate.name!r}: window must be longer than 0"))
    if gate.min is not None and gate.max is not None and gate.min > gate.max:
        problems.append(
            SpecProblem(
                f"{path}.min", f"gate {gate.name!r}: min {gate.min:g} is greater than max {gate.max:g}"
            )
        )
    if compare is not None and compare.two_proportion and not _is_proportion(gate):
        problems.append(
            SpecProblem(
                f"{path}.compare.twoProportion",
                f"gate {gate.name!r}: twoProportion needs a yes/no signal: template errorRate, flagRate or "
                "evalAccuracy, or a custom query with samplesQuery",
            )
        )
    problems.extend(_direction_problems(gate, path))
    problems.extend(_query_problems(gate, path))
    return problems


def _direction_problems(gate: Gate, path: str) -> list[SpecProblem]:
    """Relative bounds judge "worse" in the gate's direction, which must be known and not contradict
    the template's: a wrong direction passes a worse candidate and fails a better one."""
    if gate.template is not None:
        own = TEMPLATE_DIRECTIONS[gate.template]
        if gate.direction is not None and gate.direction != own:
            return [
                SpecProblem(
                    f"{path}.direction",
                    f"gate {gate.name!r}: template {gate.template.value} is {own}; "
                    f"direction {gate.direction} contradicts it (leave direction out)",
                )
            ]
        return []
    if gate.compare is not None and gate.direction is None and inferred_direction(gate) is None:
        return [
            SpecProblem(
                f"{path}.direction",
                f"gate {gate.name!r}: compare needs direction (higherIsWorse or lowerIsWorse): "
                "it is inferred for a custom query only from max alone or min alone",
            )
        ]
    return []


def _query_problems(gate: Gate, path: str) -> list[SpecProblem]:
    """Custom PromQL that could never be rendered, or could never mean what the gate claims."""
    problems = []
    for field, text in (("query", gate.query), ("samplesQuery", gate.samples_query)):
        if text is None:
            continue
        try:
            render_variables(text, dict.fromkeys(VARIABLES, ""))
        except TemplateError as error:
            problems.append(SpecProblem(f"{path}.{field}", f"gate {gate.name!r}: {error}"))
    if gate.compare is not None and gate.query is not None and "version" not in query_variables(gate.query):
        problems.append(
            SpecProblem(
                f"{path}.query",
                f"gate {gate.name!r}: compare needs {{{{version}}}} in query, "
                "or legacy and candidate read the same series",
            )
        )
    if gate.query is not None and gate.samples_query is None and gate.min_samples:
        problems.append(
            SpecProblem(
                f"{path}.minSamples", f"gate {gate.name!r}: minSamples needs samplesQuery on a custom gate"
            )
        )
    return problems


def _is_proportion(gate: Gate) -> bool:
    if gate.template is not None:
        return gate.template in PROPORTION_TEMPLATES
    return gate.samples_query is not None
