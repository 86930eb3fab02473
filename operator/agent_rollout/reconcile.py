"""One reconcile of one AgentRollout: observe, plan, act, write status once (or not at all).

This is the imperative shell around the pure planner. It reads Deployments and routed objects from
watch-fed indices (no API reads per rollout), asks Prometheus through the analysis adapter, routes
traffic first (a rollback must not wait on a status write), then sends one status diff patch.
"""

from __future__ import annotations

import json
import logging
import os
import zlib
from collections.abc import Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol, TypeVar

from kubernetes.client.exceptions import ApiException
from pydantic import BaseModel, ValidationError

from agent_rollout import api, evaluation, metrics, shadow
from agent_rollout.analysis.prometheus import (
    MetricsSource,
    PrometheusError,
    PrometheusGateway,
    PrometheusUnavailable,
    QueryRejected,
    candidate_requests,
    check_queries,
    evaluation_ages,
    measure_gates,
    shadow_pairs,
)
from agent_rollout.clock import parse_time
from agent_rollout.domain import (
    BaselineObservation,
    DeploymentState,
    EmitEvent,
    EvaluationObservation,
    FiringAlert,
    MilestoneObservation,
    Observations,
    Plan,
    RouteFailure,
    RouteIntent,
    RunEvaluation,
    SetWeights,
    SpecProblem,
)
from agent_rollout.drill import drill_spec, drill_window
from agent_rollout.intent import annotation_patch, intent_for, our_intent
from agent_rollout.kube import FIRST_STATUS, OTHER, REFRESH, Conflict, KubeClient, RouteWriteError
from agent_rollout.planner import (
    after_route_write,
    first_sight,
    gate_windows,
    note_route_failure,
    plan,
    steady_gates,
)
from agent_rollout.readiness import (
    baseline_due,
    baseline_spec,
    baseline_window,
    milestone_due,
    milestone_spec,
)
from agent_rollout.reasons import ROLLBACK_REASONS
from agent_rollout.statuspatch import merge_patch
from agent_rollout.tick import LIVE_PHASES
from agent_rollout.traffic.router import Resource, TrafficReading
from agent_rollout.traffic.value import Mirror, TrafficState
from agent_rollout.validation import validate

log = logging.getLogger(__name__)
# One JSON line per decision (time, rollout, step, action, actor, reason, evidence, agent version), for
# log pipelines that keep every decision when status.history has dropped the oldest.
decision_log = logging.getLogger("agent_rollout.decisions")
M = TypeVar("M", bound=BaseModel)

# Fault point for the e2e proof that a crash between the route write and the status write never moves
# traffic backwards: with this value the process dies right after every route write that landed.
FAULT_ENV = "AGENT_ROLLOUT_FAULT"
CRASH_AFTER_ROUTE_WRITE = "crash-after-route-write"

# (namespace, name) -> summary, fed by kopf indices in production and by dicts in tests.
DeploymentLookup = Callable[[str, str], DeploymentState | None]
# (resource, namespace, name) -> {"spec": ..., "metadata": {"resourceVersion", "annotations"}} of the
# routed object; the resource is the rollout's router's (traffic/registry.py): two routers' objects may
# share a name in one namespace.
RouteLookup = Callable[[Resource, str, str], dict[str, Any] | None]
# (resource, namespace, route) -> the AgentRollout that owns it: the oldest one naming that object.
RouteOwnerLookup = Callable[[Resource, str, str], str | None]
# (namespace, Job name) -> an evaluation Job as the Jobs informer has it; None: there is none.
JobLookup = Callable[[str, str], evaluation.JobState | None]
# (namespace, name) -> incident alerts firing now that name the rollout (alerts.AlertBook.firing).
AlertLookup = Callable[[str, str], tuple[FiringAlert, ...]]
# Told the spec, the planned status and the rollout's Prometheus after each plan (the fast check's feed).
PlannedCallback = Callable[
    [api.AgentRolloutSpec | None, api.AgentRolloutStatus, PrometheusGateway | None], None
]
# Told (body, spec, status planned on, status written) after each status write that landed: the
# notifier's hook (notifier.Notifier.decided); it must return at once.
DecidedCallback = Callable[
    [Mapping[str, Any], api.AgentRolloutSpec | None, api.AgentRolloutStatus, api.AgentRolloutStatus], None
]

# Phases that query Prometheus; Pending too, because the first tick may already enter a step.
ANALYSED_PHASES = frozenset({api.Phase.PENDING, api.Phase.PROGRESSING, api.Phase.PAUSED})
STATUS_KEYS = frozenset(f.alias or n for n, f in api.AgentRolloutStatus.model_fields.items())
IDLE_INTERVAL = 30.0  # seconds between reconciles of a rollout that has no analysis section
# A finished rollout moves only when something changes (a verb, a new candidate revision, a route
# edited), and each of those wakes it; this slow resync is a safety net, not what it relies on.
REST_INTERVAL = 600.0
AT_REST_PHASES = frozenset({api.Phase.PROMOTED, api.Phase.ROLLED_BACK, api.Phase.FAILED})
ROUTE_RETRY = 2.0  # seconds before retrying a route write that failed: traffic must not wait an interval
ROUTE_RETRY_MAX = 30.0  # a refusal repeated (RBAC, admission) backs off to this
JOB_RETRY = 5.0  # seconds before creating a refused evaluation Job again (a quota, RBAC being fixed)
# Seconds the measured values in status may lag while no verdict changes: one status write per rollout
# per this long in a steady state (the live values are the operator's to export, not status'). Ten
# minutes: at 5 the refreshes alone came to 1.02 writes per rollout per 5 minutes at 10,000 rollouts
# (a refresh falls due at the first evaluation after 5 minutes), over the budget of one.
ANALYSIS_REFRESH = float(os.environ.get("AGENT_ROLLOUT_ANALYSIS_REFRESH", "600"))
# Each rollout's refresh is spread over this share either side of ANALYSIS_REFRESH, by its name:
# rollouts created together are written together at their first step, and with one refresh period
# for all, every refresh fell due together again ten minutes later. At 10,000 rollouts such a wave
# came to 1.48 writes per rollout per 5 minutes in a 120 s window and 74% of a core on the apiserver
# (2026-11-28, 09:09 UTC run of `make bench-scale`), where the average is 0.5.
ANALYSIS_REFRESH_SPREAD = 0.25


def analysis_refresh(namespace: str, name: str, refresh: float = ANALYSIS_REFRESH) -> float:
    """This rollout's refresh period: `refresh` x [1 - SPREAD, 1 + SPREAD), the same at every
    reconcile and after a restart (a hash of its name, not Python's per-process hash())."""
    share = zlib.crc32(f"{namespace}/{name}".encode()) / 2**32
    return refresh * (1 - ANALYSIS_REFRESH_SPREAD + 2 * ANALYSIS_REFRESH_SPREAD * share)


# Verbs a human sets (kubectl agentrollout abort/promote/retry/baseline). Absent reads as false, so we never
# write a false over a true that landed after we read the object; we only write them to consume them.
HUMAN_VERBS = {"abort": False, "promote": False, "retry": False, "recordBaseline": False}


class EventSink(Protocol):
    def __call__(self, body: Mapping[str, Any], type: str, reason: str, message: str) -> None: ...


@dataclass
class WrittenStatus:
    """Our last status write as the API server stored it, kept until the watch delivers it, so the next
    tick never plans on a status older than our own write (which would repeat a step entry or undo a
    rollback on the route).

    Age is told by `status.sequence`, a counter only the operator raises (one per status write; an
    admission policy keeps everyone else from changing it). A body whose sequence is below our last
    write's is older than that write, whatever else changed meanwhile (a label from Argo CD, a verb):
    resourceVersions are opaque and a foreign write lands between our read and our write with a
    version we never saw, which is how a stale body used to slip through.
    """

    # Kept as its JSON: a fraction of the parsed dict's memory, and read only while the watch lags.
    stored: bytes = b""
    sequence: int = 0
    route_failures: int = 0  # route writes refused or failed in a row: paces the retries
    checked_generation: int | None = None  # the spec generation whose queries Prometheus parsed
    # Seconds from the end of the last reconcile until a decision falls due (a pause ends, a deadline
    # passes), None when none is planned: the scheduler runs it then, ranked before the interval runs
    # of every other live rollout, whatever run of this one is queued meanwhile (Scheduler.deadline).
    decision_in: float | None = None

    @property
    def status(self) -> dict[str, Any]:
        """Our last write as stored, while the watch has not delivered it; {} once it has."""
        status: dict[str, Any] = json.loads(self.stored) if self.stored else {}
        return status

    def status_to_plan_on(self, body_status: dict[str, Any]) -> dict[str, Any]:
        if self.stored and _sequence(body_status) < self.sequence:
            return self.status  # the watch has not caught up with our own write yet
        # The body is our write or newer: drop the copy (at 10,000 rollouts it is ~140 MiB held for nothing).
        self.stored = b""
        return body_status

    def remember(self, stored_status: dict[str, Any]) -> None:
        self.stored = json.dumps(stored_status, separators=(",", ":")).encode()
        self.sequence = _sequence(stored_status)


def _sequence(status: Mapping[str, Any]) -> int:
    value = status.get("sequence", 0)
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def spec_problems_from(error: ValidationError) -> tuple[SpecProblem, ...]:
    problems = []
    for err in error.errors():
        path = "spec"
        for part in err["loc"]:
            path += f"[{part}]" if isinstance(part, int) else f".{part}"
        # Our own validators' messages, without pydantic's "Value error, " prefix.
        cause = err.get("ctx", {}).get("error") if err["type"] == "value_error" else None
        problems.append(SpecProblem(field=path, message=str(cause) if cause else err["msg"]))
    return tuple(problems)


class Reconciler:
    def __init__(
        self,
        kube: KubeClient,
        gateway_for: Callable[[str, float], PrometheusGateway],
        events: EventSink,
        clock: Callable[[], datetime],
        alerts: AlertLookup = lambda namespace, name: (),
        decided: DecidedCallback = lambda body, spec, before, after: None,
        fresh: Callable[[tuple[str, str]], Mapping[str, float]] = lambda key: {},
    ) -> None:
        """`fresh(key)`: the gates a breach the fast check confirmed woke the rollout for, each to be
        read from answers sent after that moment (Sentinel.fresh_reads)."""
        self._fresh = fresh
        self._alerts = alerts
        self._decided = decided
        self._kube = kube
        self._gateway_for = gateway_for
        self._events = events
        self._clock = clock

    async def reconcile(
        self,
        body: Mapping[str, Any],
        deployments: DeploymentLookup,
        routes: RouteLookup,
        written: WrittenStatus,
        route_owner: RouteOwnerLookup = lambda resource, namespace, route: None,
        planned: PlannedCallback | None = None,
        jobs: JobLookup = lambda namespace, name: None,
        before_route_write: Callable[[], Awaitable[None]] | None = None,
    ) -> float:
        """Reconcile once; returns seconds until the next reconcile is due. `before_route_write` runs
        before any route write (the controller adds the finalizer there: a rollout that never moved
        traffic needs none, and its first status need not wait for it); what it raises, this raises."""
        meta = body["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        raw_status = written.status_to_plan_on(dict(body.get("status") or {}))
        status = api.parse_status(raw_status)
        now = self._clock()
        raw_spec = dict(body.get("spec") or {})

        try:
            spec: api.AgentRolloutSpec | None = api.parse_spec(raw_spec)
            problems = tuple(validate(spec)) if spec is not None else ()
        except ValidationError as e:
            spec, problems = None, spec_problems_from(e)

        def deployment(ref: api.DeploymentRef | None) -> DeploymentState:
            # Absent from the watch-fed index means absent from the cluster; a reference that does not
            # even parse is no Deployment we could route to either.
            if ref is None:
                return DeploymentState("(unparsable reference)", exists=False)
            return deployments(namespace, ref.deployment) or DeploymentState(ref.deployment, exists=False)

        if spec is None:
            # The spec as a whole did not parse, but its parts may: a Failed rollout still sends the
            # candidate's traffic to legacy, as the planner asks (and never to a missing legacy).
            traffic = api.parse_alone(api.Traffic, raw_spec.get("traffic"))
            legacy = deployment(api.parse_alone(api.DeploymentRef, raw_spec.get("legacy")))
            candidate = None
        else:
            traffic = spec.traffic
            legacy, candidate = deployment(spec.legacy), deployment(spec.candidate)

        route, claimed_by = None, None
        if traffic is not None:
            # The routed object is named by its router's resource too: not every router's is an HTTPRoute.
            named = (traffic.router.resource, namespace, traffic.router.object_name(traffic.config))
            route, owner = routes(*named), route_owner(*named)
            claimed_by = owner if owner not in (None, name) else None
        route_spec = route.get("spec") if route is not None else None
        route_intent = our_intent(route, name)
        mirrors, others = shadow.ours_and_others(spec, route_intent)
        if traffic is not None:
            reading = traffic.router.read(route_spec, traffic.config, mirrors, others, namespace)
        else:
            reading = TrafficReading(None, "spec.traffic did not parse")

        gates, prometheus_error, requests, rejected, unchecked = None, None, None, None, None
        milestone, baseline, drill_gates, pairs = None, None, None, None
        # The first reconcile of a new rollout only acknowledges it (planner.first_sight): nothing to
        # measure, and its Prometheus checks come with the next one.
        acknowledging = first_sight(status)
        measured_now = spec is not None and not problems and claimed_by is None and not acknowledging
        if spec is not None and measured_now:
            found, unchecked = await self._preflight(namespace, spec, status, meta.get("generation"), written)
            problems = (*problems, *found)
        if spec is not None and not problems and measured_now:
            measured = await self._measure(namespace, spec, status, now, self._fresh((namespace, name)))
            gates, prometheus_error, requests, rejected, milestone = measured
            baseline = await self._baseline(namespace, spec, status, now)
            drill_gates = await self._drill(namespace, spec, status, now)
            pairs = await self._shadow_pairs(namespace, spec, status, now)
        evaluation_seen = await self._evaluation(namespace, name, spec, status, jobs)
        obs = Observations(
            problems=problems,
            legacy=legacy,
            candidate=candidate,
            route_weights=reading.weights,
            route_error=reading.error,
            gates=gates,
            prometheus_error=prometheus_error,
            candidate_requests=requests,
            milestone=milestone,
            baseline=baseline,
            generation=meta.get("generation"),
            route_intent=route_intent,
            route_claimed_by=claimed_by,
            query_rejected=rejected,
            queries_unchecked=unchecked,
            analysis_refresh=analysis_refresh(namespace, name),
            firing_alerts=self._alerts(namespace, name),
            evaluation=evaluation_seen,
            drill_gates=drill_gates,
            route_mirror=reading.mirror.mirror,
            route_mirror_exact=reading.mirror.exact,
            route_mirror_conflict=reading.mirror_conflict,
            shadow_pairs=pairs,
        )
        result = plan(spec, status, obs, now)
        if planned is not None:
            planned(spec, result.status, self._gateway(spec.analysis) if spec and spec.analysis else None)
        sequence = _sequence(raw_status) + 1  # what our next status write will carry
        failure, written_record = await self._route(
            namespace, name, traffic, route, result, obs, sequence, mirrors, before_route_write
        )
        shown = next((a for a in result.actions if isinstance(a, SetWeights)), None)
        if written_record is not None and shown is not None:
            result = after_route_write(spec, result, obs, shown, written_record, now)
        new_status, actions = result.status, result.actions
        if failure is not None:
            written.route_failures += 1
            noted = note_route_failure(new_status, status, failure, now)
            new_status, actions = noted.status, (*actions, *noted.actions)
        else:
            written.route_failures = 0
        job_refused = False
        for action in actions:
            if isinstance(action, EmitEvent):
                self._events(body, action.type, action.reason, action.message)
            elif isinstance(action, RunEvaluation) and spec is not None:
                job_refused = not await self._run_evaluation(body, spec, new_status, action)
        records_a_decision = (
            failure is not None
            or written_record is not None
            or any(isinstance(a, EmitEvent) for a in actions)
        )
        priority = FIRST_STATUS if acknowledging else OTHER if records_a_decision else REFRESH
        if priority == REFRESH and _decision_within_interval(spec, result.requeue_after):
            # This run holds the decision falling due (a pause's end) until its write is in, and a
            # refresh waits for every other write: at 10,000 rollouts entering step 1, an interval
            # run's refresh kept 60 s pauses from ending for 20 s. Ranked with the decisions.
            priority = OTHER
        await self._write_status(
            namespace, name, raw_status, new_status, written, force=failure is not None, priority=priority
        )
        self._decided(body, spec, status, new_status)  # notifications of what that write recorded
        for action in result.actions:
            if isinstance(action, EmitEvent) and action.decision is not None:
                decision_log.info("%s", decision_line(namespace, name, action.decision))
        # Counted once written: a plan whose status write failed is planned (and decided) again.
        decided = (a.reason for a in result.actions if isinstance(a, EmitEvent))
        metrics.record_decisions((namespace, name), decided, ROLLBACK_REASONS)
        metrics.observe_gates((namespace, name), new_status.phase, gates)
        metrics.observe_rollback_safety((namespace, name), status, new_status)

        written.decision_in = None
        if failure is not None:
            # Quickly while it may be transient; a refusal backs off, visible in TrafficRouted meanwhile.
            return min(ROUTE_RETRY * 2.0 ** (written.route_failures - 1), ROUTE_RETRY_MAX)
        if job_refused:
            return JOB_RETRY
        if spec is None:
            return IDLE_INTERVAL
        if new_status.phase in AT_REST_PHASES and result.requeue_after is None:
            return REST_INTERVAL
        interval: float = api.duration_seconds(spec.analysis.interval) if spec.analysis else IDLE_INTERVAL
        if result.requeue_after is not None:
            # The planner counts from `now`, this reconcile's start, and the writes since then are not
            # part of the wait: at 10,000 rollouts entering step 1 on a saturated apiserver, the write
            # entering a pause took up to 40 s, and the pause ended that much late (p99 42 s).
            spent = max(0.0, (self._clock() - now).total_seconds())
            due_in = max(0.05, result.requeue_after - spent)
            if acknowledging:  # its follow-up is no decision: the other new rollouts' first statuses go first
                return max(0.5, min(interval, due_in))
            written.decision_in = due_in
            interval = min(interval, due_in)
        return interval

    async def _evaluation(
        self,
        namespace: str,
        name: str,
        spec: api.AgentRolloutSpec | None,
        status: api.AgentRolloutStatus,
        jobs: JobLookup,
    ) -> EvaluationObservation | None:
        """The current evaluation step's Job, from the Jobs informer; its pod's result is read once,
        when the Job has ended and its verdict is not recorded yet."""
        index = status.current_step
        if spec is None or status.phase not in LIVE_PHASES or index >= len(spec.steps):
            return None
        if spec.steps[index].evaluate is None:
            return None
        job = evaluation.job_name(name, index, status.candidate_revision, status.attempt_started_at)
        seen = jobs(namespace, job)
        if seen is None:
            return EvaluationObservation(step=index, job=job, state="absent")
        judged = any(r.job == job and r.phase != "Running" for r in status.evaluations)
        if seen.state == "running" or judged:
            return EvaluationObservation(step=index, job=job, state="running" if not judged else seen.state)
        try:
            result = await self._kube.termination_message(namespace, job)
        except (ApiException, OSError) as e:
            log.warning("%s/%s: reading the result of evaluation Job %s: %s", namespace, name, job, e)
            return None
        if seen.state == "failed":
            text = seen.message + (f"; it wrote: {result[:300]}" if result else "")
            return EvaluationObservation(step=index, job=job, state="failed", message=text)
        if result is None:
            message = "the Job completed but its pod left no termination message"
            return EvaluationObservation(step=index, job=job, state="failed", message=message)
        return EvaluationObservation(step=index, job=job, state="succeeded", message=result)

    async def _run_evaluation(
        self,
        body: Mapping[str, Any],
        spec: api.AgentRolloutSpec,
        status: api.AgentRolloutStatus,
        action: RunEvaluation,
    ) -> bool:
        """Create the step's Job; False (with a Warning Event) when the apiserver refuses it."""
        meta = body["metadata"]
        namespace = meta["namespace"]
        evaluate = spec.steps[action.step].evaluate
        assert evaluate is not None
        manifest = evaluation.job_manifest(
            name=action.job,
            namespace=namespace,
            rollout=meta["name"],
            rollout_uid=meta.get("uid", ""),
            step=action.step,
            evaluate=evaluate,
            url=evaluation.candidate_url(
                evaluate, namespace, spec.traffic.router.backends(spec.traffic.config)[1]
            ),
            revision=status.candidate_revision,
        )
        try:
            await self._kube.create_job(manifest)
        except (ApiException, OSError) as e:
            detail = f"{e.status} {e.reason}" if isinstance(e, ApiException) else str(e)
            log.warning("%s/%s: creating evaluation Job %s: %s", namespace, meta["name"], action.job, detail)
            self._events(body, "Warning", "EvaluationJobRefused", f"creating Job {action.job}: {detail}")
            return False
        return True

    async def _preflight(
        self,
        namespace: str,
        spec: api.AgentRolloutSpec,
        status: api.AgentRolloutStatus,
        generation: int | None,
        written: WrittenStatus,
    ) -> tuple[tuple[SpecProblem, ...], str | None]:
        """Before the first step (Pending, or Failed about to restart): Prometheus parses every query
        the gates will send. Problems fail the spec naming the field; an unreachable Prometheus holds
        the start (the reason). A generation that passed is not checked again."""
        if spec.analysis is None or not spec.analysis.gates:
            return (), None
        if (
            status.phase not in (api.Phase.PENDING, api.Phase.FAILED)
            or written.checked_generation == generation
        ):
            return (), None
        gateway = self._gateway(spec.analysis)
        try:
            found = await check_queries(spec, namespace, gateway)
        except PrometheusUnavailable as e:
            return (), str(e)
        if not found:
            written.checked_generation = generation
        return tuple(found), None

    async def _measure(
        self,
        namespace: str,
        spec: api.AgentRolloutSpec,
        status: api.AgentRolloutStatus,
        now: datetime,
        fresh: Mapping[str, float] = {},
    ) -> tuple[
        tuple[api.GateResult, ...] | None, str | None, int | None, str | None, MilestoneObservation | None
    ]:
        """Gate results, Prometheus error, candidate requests since the step began, a query Prometheus
        rejects, and the step's milestone window once it holds enough requests. Gates too fresh for a
        window of their own are not measured, so not in the results. Analysis only while the rollout is
        live: a finished rollout costs Prometheus nothing."""
        if spec.analysis is None or status.phase not in ANALYSED_PHASES:
            return None, None, None, None, None
        gateway = self._gateway(spec.analysis)
        try:
            judged = spec.model_copy(update={"analysis": shadow.judged_analysis(spec, status)})
            windows = gate_windows(spec, status, now)
            steady = steady_gates(spec, status, now, evaluation_ages(spec.analysis)[1])
            gates = await measure_over(judged, windows, namespace, gateway, steady, fresh)
            requests, milestone = None, None
            step = spec.steps[status.current_step] if status.current_step < len(spec.steps) else None
            due = milestone_due(spec, status)
            # A start time edited into nonsense is the planner's to repair, not a reason to crash.
            started = parse_time(status.step_started_at)
            counted = step is not None and step.pause is not None and step.pause.min_requests
            if (counted or due is not None) and started:
                since = (now - started).total_seconds()  # < 1 s (even < 0: rounded up) counts 0
                requests = await candidate_requests(spec, namespace, since, gateway)
                if due is not None and requests is not None and requests >= due.transactions:
                    milestone = await self._milestone(namespace, spec, status, int(since), requests)
        except QueryRejected as e:
            return None, None, None, str(e), None
        except PrometheusUnavailable as e:
            return None, str(e), None, None, None
        return gates, None, requests, None, milestone

    async def _milestone(
        self,
        namespace: str,
        spec: api.AgentRolloutSpec,
        status: api.AgentRolloutStatus,
        seconds: int,
        requests: int,
    ) -> MilestoneObservation | None:
        """Every gate over exactly the whole seconds the milestone's requests were counted in; a failure
        leaves it to the next reconcile rather than counting against the gates."""
        assert spec.analysis is not None
        try:
            over = await measure_gates(milestone_spec(spec, seconds), namespace, self._gateway(spec.analysis))
        except PrometheusError as e:
            log.warning("%s: milestone not measured yet: %s", namespace, e)
            return None
        return MilestoneObservation(status.current_step, requests, seconds, over)

    async def _shadow_pairs(
        self, namespace: str, spec: api.AgentRolloutSpec, status: api.AgentRolloutStatus, now: datetime
    ) -> int | None:
        """Compared pairs since a shadow step with minRequests began; None otherwise or on failure (the
        step then waits: a count it cannot read never ends it)."""
        step = spec.steps[status.current_step] if status.current_step < len(spec.steps) else None
        started = parse_time(status.step_started_at)
        if spec.analysis is None or step is None or step.shadow is None or started is None:
            return None
        if status.phase not in LIVE_PHASES or step.shadow.min_requests is None:
            return None
        try:
            return await shadow_pairs(
                spec, namespace, (now - started).total_seconds(), self._gateway(spec.analysis)
            )
        except PrometheusError as e:
            log.warning("%s: shadow pairs not counted: %s", namespace, e)
            return None

    async def _baseline(
        self, namespace: str, spec: api.AgentRolloutSpec, status: api.AgentRolloutStatus, now: datetime
    ) -> BaselineObservation | None:
        """The candidate revision's signals for its baseline, candidate and legacy, while one is due (a
        promoted revision without its own, or a human's status.recordBaseline); a Prometheus failure
        leaves it to the next reconcile."""
        started = parse_time(status.attempt_started_at or status.step_started_at)
        if spec.analysis is None or started is None or not baseline_due(spec, status):
            return None
        seconds = baseline_window((now - started).total_seconds())
        try:
            gates = await measure_gates(baseline_spec(spec, seconds), namespace, self._gateway(spec.analysis))
        except PrometheusError as e:  # a rejected query too: none of the user's gates is at stake
            log.warning("%s: baseline not measured yet: %s", namespace, e)
            return None
        return BaselineObservation(status.candidate_revision, seconds, gates)

    async def _drill(
        self, namespace: str, spec: api.AgentRolloutSpec, status: api.AgentRolloutStatus, now: datetime
    ) -> tuple[api.GateResult, ...] | None:
        """A running drill's gates on legacy since the route showed legacy 100 (drill.py); a Prometheus
        failure leaves it to the next reconcile (the drill's bound keeps running)."""
        seconds = drill_window(status, now)
        if spec.analysis is None or seconds is None:
            return None
        try:
            return await measure_gates(drill_spec(spec, seconds), namespace, self._gateway(spec.analysis))
        except PrometheusError as e:
            log.warning("%s: drill gates not measured: %s", namespace, e)
            return None

    def _gateway(self, analysis: api.Analysis) -> PrometheusGateway:
        return self._gateway_for(analysis.prometheus.url, api.duration_seconds(analysis.prometheus.timeout))

    async def _route(
        self,
        namespace: str,
        name: str,
        traffic: api.Traffic | None,
        route: dict[str, Any] | None,
        result: Plan,
        obs: Observations,
        sequence: int,
        mirrors: tuple[Mirror, ...] = (),
        before_write: Callable[[], Awaitable[None]] | None = None,
    ) -> tuple[RouteFailure | None, RouteIntent | None]:
        """Write the weights (and the shadow step's mirror, or its removal) the plan asks for, with the
        write-ahead record, in one JSON patch, before any status write. Returns why the write was not
        taken, or the record it wrote (None, None: nothing to write)."""
        action = next((a for a in result.actions if isinstance(a, SetWeights)), None)
        if action is None or traffic is None or route is None:
            return None, None
        mirror_shown = obs.route_mirror == action.mirror and obs.route_mirror_exact
        if obs.route_weights == action.weights and mirror_shown:
            return None, None  # no API write when nothing would change
        route_spec = route.get("spec") or {}
        want = TrafficState(action.weights, action.mirror)
        router = traffic.router
        ops = router.patch(route_spec, traffic.config, want, mirrors, namespace)
        if not ops:
            return None, None
        record = intent_for(name, result.status, sequence, action.mirror)
        ops = [*ops, *annotation_patch(route.get("metadata"), record)]
        if before_write is not None:
            await before_write()
        try:
            await self._kube.patch_route(router.resource, namespace, router.object_name(traffic.config), ops)
        except Conflict as e:
            log.warning("%s/%s: %s; will retry on fresh data", namespace, name, e)
            failure = RouteFailure(
                f"{router.resource.kind} changed while patching; retrying on fresh data ({e})",
                permanent=False,
            )
            return failure, None
        except RouteWriteError as e:
            log.warning("%s/%s: %s", namespace, name, e)
            return RouteFailure(str(e), permanent=e.permanent), None
        if os.environ.get(FAULT_ENV) == CRASH_AFTER_ROUTE_WRITE:
            log.error("%s/%s: fault point %s: exiting before the status write", namespace, name, FAULT_ENV)
            os._exit(86)
        return None, record

    async def _write_status(
        self,
        namespace: str,
        name: str,
        raw_status: dict[str, Any],
        new_status: api.AgentRolloutStatus,
        written: WrittenStatus,
        force: bool = False,
        priority: int = OTHER,
    ) -> None:
        new = api.dump(new_status)
        new["sequence"] = _sequence(raw_status)
        patch = merge_patch({**HUMAN_VERBS, **raw_status}, new, owned=STATUS_KEYS)
        if not patch and not force:
            return
        # Every write of ours raises the sequence, so a body older than it is recognised as such.
        patch["sequence"] = new["sequence"] = _sequence(raw_status) + 1
        stored = await self._kube.patch_rollout_status(namespace, name, patch, priority=priority)
        # Remember the status as stored (a verb a human set meanwhile included); with no object
        # returned, it is what we read with the patch applied.
        stored_status = stored.get("status")
        if not isinstance(stored_status, dict):
            stored_status = {k: v for k, v in {**raw_status, **new}.items() if patch.get(k, k) is not None}
        written.remember(dict(stored_status))


def _decision_within_interval(spec: api.AgentRolloutSpec | None, due_in: float | None) -> bool:
    """A decision falls due (planner: requeue_after) before this rollout's next analysis interval."""
    if spec is None or spec.analysis is None or due_in is None:
        return False
    return due_in <= api.duration_seconds(spec.analysis.interval)


def decision_line(namespace: str, name: str, decision: api.Decision) -> str:
    """The decision as one JSON object: the history entry's wire form, with the rollout it belongs to."""
    body = {"kind": "Decision", "namespace": namespace, "agentrollout": name, **api.dump(decision)}
    return json.dumps(body, separators=(",", ":"), sort_keys=False)


async def measure_over(
    spec: api.AgentRolloutSpec,
    windows: Mapping[str, int | None],
    namespace: str,
    source: MetricsSource,
    steady: Collection[str] = (),
    fresh: Mapping[str, float] = {},
) -> tuple[api.GateResult, ...]:
    """The spec's gates over the windows the planner gives them (planner.gate_windows): a gate too
    fresh for any window is left out, one clamped to a young step's window is read focused, the
    `steady` ones (planner.steady_gates) from answers up to evaluation_ages' second figure old, the
    `fresh` ones from answers sent after a breach the fast check confirmed (measure_gates)."""
    return await measure_gates(
        _with_windows(spec, windows),
        namespace,
        source,
        clamped=_clamped(spec, windows),
        steady=steady,
        fresh=fresh,
    )


def _clamped(spec: api.AgentRolloutSpec, windows: Mapping[str, int | None]) -> frozenset[str]:
    """The gates measured over less than their window (a young step's): read focused."""
    if spec.analysis is None:
        return frozenset()
    return frozenset(
        g.name
        for g in spec.analysis.gates
        if (seconds := windows.get(g.name, -1)) is not None
        and seconds not in (-1, int(api.duration_seconds(g.window)))
    )


def _with_windows(spec: api.AgentRolloutSpec, windows: Mapping[str, int | None]) -> api.AgentRolloutSpec:
    """The spec with each gate's window clamped as the planner says; gates too fresh are left out."""
    if spec.analysis is None:
        return spec
    gates = []
    for gate in spec.analysis.gates:
        seconds = windows.get(gate.name, -1)
        if seconds is None:
            continue
        full = int(api.duration_seconds(gate.window))
        gates.append(gate if seconds in (-1, full) else gate.model_copy(update={"window": f"{seconds}s"}))
    return spec.model_copy(update={"analysis": spec.analysis.model_copy(update={"gates": gates})})
