"""The reconcile shell against in-memory fakes: what ends up stored, and how many API writes it took.

Each test drives `Reconciler.reconcile` the way the kopf daemon does (body from the watch, Deployments
and the HTTPRoute from indices) and asserts on the objects FakeKube stores, never on mock calls alone.
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging
from dataclasses import dataclass, field
from typing import Any

import pytest

from agent_rollout import api, evaluation
from agent_rollout.analysis.templates import candidate_requests_query, template_read
from agent_rollout.api import Template
from agent_rollout.clock import parse_time
from agent_rollout.domain import DeploymentState, iso
from agent_rollout.kube import OTHER, REFRESH
from agent_rollout.reconcile import ANALYSIS_REFRESH, Reconciler, WrittenStatus, analysis_refresh
from agent_rollout.traffic.router import Resource
from tests.fakes import EventLog, FakeClock, FakeKube, FakePrometheus, Reply
from tests.specs import CANDIDATE, LEGACY, ROUTE, analysis_dict, spec_dict

NS, NAME = "support", "ticket-triage"
ERROR_RATE = {"name": "error-rate", "template": "errorRate", "max": 0.01}
THREE_WEIGHTS = [{"setWeight": 5}, {"setWeight": 25}, {"setWeight": 50}]


def rollout_body(
    steps: list[dict[str, Any]], interval: str = "30s", status: dict[str, Any] | None = None
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "apiVersion": f"{api.GROUP}/{api.VERSION}",
        "kind": api.KIND,
        "metadata": {"namespace": NS, "name": NAME, "generation": 1},
        "spec": spec_dict(steps=steps, analysis=analysis_dict(ERROR_RATE, interval=interval, minSamples=100)),
    }
    if status is not None:
        body["status"] = status
    return body


def route_object(legacy: int = 100, candidate: int = 0) -> dict[str, Any]:
    return {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"namespace": NS, "name": ROUTE},
        "spec": {
            "parentRefs": [{"name": "gateway"}],
            "rules": [
                {
                    "backendRefs": [
                        {"name": LEGACY, "port": 80, "weight": legacy},
                        {"name": CANDIDATE, "port": 80, "weight": candidate},
                    ]
                }
            ],
        },
    }


# The gate's reads over every window the planner may clamp its 2m window to (gate_windows).
ERROR_RATE_READS = [
    template_read(Template.ERROR_RATE, api.MetricNames(), window=f"{s}s") for s in range(5, 121, 5)
]


@dataclass
class Metrics:
    """The candidate's error rate and request count as Prometheus would answer the gate's building
    blocks (errors and requests of every version), with other rollouts' series among them."""

    error_rate: float = 0.001
    samples: float = 1000.0
    asked: list[str] = field(default_factory=list)

    def __call__(self, promql: str) -> Reply:
        self.asked.append(promql)
        candidate = {"namespace": NS, "version": CANDIDATE}
        other = {"namespace": "elsewhere", "version": CANDIDATE}
        if promql.startswith("count by (le) "):
            return None  # no histogram: the fast check reads latency quantiles themselves
        for read in ERROR_RATE_READS:
            if promql == read.value.promql:
                return [(candidate, self.error_rate * self.samples), (other, 500.0)]
            if promql == read.samples.promql:
                return [(candidate, self.samples), (other, 500.0)]
        raise AssertionError(f"unexpected query {promql}")


class World:
    """One rollout, its route and Deployments, and the shell that reconciles them."""

    def __init__(
        self, body: dict[str, Any], route: dict[str, Any] | None = None, acknowledged: bool = True
    ) -> None:
        """`acknowledged`: the operator's first reconcile of the new rollout, which only writes its
        first status (planner.first_sight), has run; writes and Events are counted from after it."""
        self.kube = FakeKube()
        self.kube.create_rollout(body)
        self.kube.routes[(NS, ROUTE)] = route or route_object()
        self.metrics = Metrics()
        self.prometheus = FakePrometheus(self.metrics)
        self.clock = FakeClock()
        self.events = EventLog()
        self.deployments = {
            (NS, LEGACY): DeploymentState(
                LEGACY, exists=True, template_hash="rules-1", replicas=1, available_replicas=1
            ),
            (NS, CANDIDATE): DeploymentState(
                CANDIDATE, exists=True, template_hash="agent-1", replicas=1, available_replicas=1
            ),
        }
        self.route_index: dict[tuple[str, str], dict[str, Any]] | None = None  # None: index is current
        self.written = WrittenStatus()
        self.route_owner: str | None = None  # another AgentRollout that owns the route, if any
        self.reconciler = Reconciler(
            kube=self.kube,
            gateway_for=lambda url, timeout: self.prometheus,
            events=self.events,
            clock=self.clock,
        )
        if acknowledged and not (body.get("status") or {}):
            self.tick(advance=0.0)
            self.kube.writes.clear()
            self.events.events.clear()

    def body(self) -> dict[str, Any]:
        return self.kube.rollout(NS, NAME)

    def tick(self, body: dict[str, Any] | None = None, advance: float = 30.0) -> float:
        """One reconcile `advance` seconds after the previous one; `body` defaults to the stored object."""
        self.clock.advance(advance)
        seen = body if body is not None else self.body()

        def route_lookup(resource: Resource, namespace: str, name: str) -> dict[str, Any] | None:
            if self.route_index is not None:
                return copy.deepcopy(self.route_index.get((namespace, name)))
            return self.kube.route_view(namespace, name)

        return asyncio.run(
            self.reconciler.reconcile(
                seen,
                deployments=lambda namespace, name: self.deployments.get((namespace, name)),
                routes=route_lookup,
                written=self.written,
                route_owner=lambda resource, namespace, route: self.route_owner,
                jobs=self.job_state,
            )
        )

    def job_state(self, namespace: str, name: str) -> evaluation.JobState | None:
        job = self.kube.jobs.get((namespace, name))
        return evaluation.project_job(job) if job is not None else None

    @property
    def status(self) -> dict[str, Any]:
        return dict(self.kube.rollouts[(NS, NAME)].get("status") or {})

    def route_weights(self) -> dict[str, int]:
        """Backend name -> weight on the stored route, whatever order the backendRefs are in."""
        spec = self.kube.routes[(NS, ROUTE)]["spec"]
        return {ref["name"]: ref["weight"] for ref in spec["rules"][0]["backendRefs"]}

    def condition(self, type_: str) -> dict[str, Any]:
        return next(c for c in self.status["conditions"] if c["type"] == type_)

    def history_reasons(self) -> list[str]:
        return [d["reason"] for d in self.status.get("history", [])]


def test_steady_state_makes_no_api_write_at_all() -> None:
    world = World(rollout_body([{"setWeight": 5}, {"pause": {"duration": "1h"}}, {"setWeight": 50}]))
    # Start, complete step 1, then evaluate the pause step until its gate window (2m) is all its own:
    # until then each evaluation reads a longer window, which is new evidence.
    for _ in range(7):
        world.tick()
    assert (world.status["phase"], world.status["currentStep"]) == ("Progressing", 1)
    writes, events = len(world.kube.writes), len(world.events.events)
    version = world.body()["metadata"]["resourceVersion"]
    asked = len(world.metrics.asked)

    world.tick()
    world.tick()

    assert world.kube.writes[writes:] == []
    assert world.body()["metadata"]["resourceVersion"] == version
    assert world.events.events[events:] == []
    assert len(world.metrics.asked) > asked  # the gates were evaluated; they just changed nothing


def test_a_step_change_costs_one_route_write_and_one_status_write() -> None:
    # The route watch wakes the rollout right after our route write; its status must already say what
    # that reconcile would (the message waits for the gate, the route shows the weights).
    world = World(rollout_body([{"setWeight": 10}, {"pause": {"duration": "1h"}}, {"setWeight": 50}]))
    world.tick(advance=0.2)
    assert len(world.kube.writes_of("route")) == 1
    assert len(world.kube.writes_of("status")) == 1
    assert world.status["message"] == "step 1/3 (setWeight 10): waiting for analysis of gate error-rate"
    assert world.condition("TrafficRouted")["status"] == "True"

    world.tick(advance=0.2)  # the route watch's wake

    assert len(world.kube.writes_of("status")) == 1
    assert len(world.kube.writes_of("route")) == 1


def test_a_refinement_that_would_decide_is_left_to_the_next_reconcile() -> None:
    # Without gates or pause, the step completes as soon as the route shows its weights: that is a
    # decision (and another route write), taken by the next reconcile, never folded into this one.
    body = rollout_body([{"setWeight": 10}, {"setWeight": 50}])
    body["spec"].pop("analysis")
    world = World(body)
    world.tick(advance=0.2)
    assert world.route_weights() == {LEGACY: 90, CANDIDATE: 10}
    assert (world.status["currentStep"], world.history_reasons()) == (0, ["Started"])

    world.tick(advance=0.2)

    assert world.route_weights() == {LEGACY: 50, CANDIDATE: 50}
    assert (world.status["currentStep"], world.history_reasons()) == (1, ["Started", "StepCompleted"])


def test_failed_gate_routes_all_traffic_to_legacy_before_writing_status() -> None:
    world = World(rollout_body(THREE_WEIGHTS))
    world.tick()
    assert world.route_weights() == {LEGACY: 95, CANDIDATE: 5}
    before = len(world.kube.writes)
    world.metrics.error_rate = 0.2

    world.tick()

    assert world.route_weights() == {LEGACY: 100, CANDIDATE: 0}
    assert [w.kind for w in world.kube.writes[before:]] == ["route", "status"]
    assert world.status["phase"] == "RolledBack"
    assert world.status["weights"] == {"legacy": 100, "candidate": 0}
    assert world.history_reasons()[-1] == "GateFailed"
    assert ("Warning", "GateFailed") in [(t, r) for t, r, _ in world.events.events]


def test_route_conflict_is_logged_and_retried_on_the_next_reconcile(caplog: pytest.LogCaptureFixture) -> None:
    world = World(rollout_body(THREE_WEIGHTS))
    world.tick()  # step 1: legacy 95 / candidate 5
    # Someone reorders the backendRefs; our index has not seen it yet, so our patch's positions are stale.
    world.route_index = {(NS, ROUTE): world.kube.route_view(NS, ROUTE) or {}}
    world.kube.routes[(NS, ROUTE)]["spec"]["rules"][0]["backendRefs"].reverse()

    with caplog.at_level(logging.WARNING, logger="agent_rollout.reconcile"):
        delay = world.tick()  # step 1 completes and wants 75 / 25

    assert world.kube.conflicts == 1
    assert any("will retry" in r.getMessage() for r in caplog.records)
    assert world.route_weights() == {LEGACY: 95, CANDIDATE: 5}  # no weight landed on the wrong backend
    assert world.status["currentStep"] == 1
    assert world.condition("TrafficRouted")["status"] == "False"
    assert delay < 30  # a route that must change is retried soon, not an interval later

    world.route_index = None  # the index caught up
    world.tick(advance=delay)

    assert world.route_weights() == {LEGACY: 75, CANDIDATE: 25}
    assert world.kube.conflicts == 1


def test_watch_lag_plans_from_the_status_we_wrote_not_the_stale_body() -> None:
    world = World(rollout_body([{"setWeight": 5}, {"pause": {"duration": "10m"}}, {"setWeight": 50}]))
    world.tick()
    stale = world.body()
    world.tick(stale)  # step 1 completes: step 2 (the pause) entered
    assert world.status["currentStep"] == 1

    world.tick(stale)  # the watch still delivers the object as it was before that write

    assert world.status["currentStep"] == 1
    assert world.history_reasons().count("StepCompleted") == 1
    assert world.events.reasons().count("StepCompleted") == 1


def test_copy_of_our_write_is_dropped_once_the_watch_delivers_it() -> None:
    world = World(rollout_body([{"setWeight": 5}, {"pause": {"duration": "1h"}}, {"setWeight": 50}]))
    for _ in range(3):  # start, complete step 1, the first evaluation of the pause step
        world.tick()
    assert world.written.status  # kept while the watch may still deliver the older object
    writes = len(world.kube.writes)

    world.tick()  # the body carries our last write, and the steady state writes nothing new

    assert world.kube.writes[writes:] == []
    assert world.written.status == {}  # 10,000 daemons must not each hold a status copy for nothing


def test_watch_lag_over_two_writes_plans_from_the_latest_write() -> None:
    world = World(rollout_body([{"setWeight": 5}, {"setWeight": 25}, {"pause": {"duration": "1h"}}]))
    world.tick()
    body_a = world.body()
    world.tick(body_a)  # step 1 -> step 2 (25%)
    body_b = world.body()
    world.tick(body_a)  # watch lags: step 2 -> step 3 (pause), planned from our first write
    assert world.status["currentStep"] == 2
    pause_started = world.status["stepStartedAt"]

    world.tick(body_b)  # the watch delivers our first write, not yet our second

    assert world.status["currentStep"] == 2
    assert world.status["stepStartedAt"] == pause_started  # the pause clock did not restart
    assert world.history_reasons().count("StepCompleted") == 2
    assert world.events.reasons().count("StepCompleted") == 2


def test_prometheus_unavailable_holds_weights_with_analysis_unknown() -> None:
    world = World(rollout_body(THREE_WEIGHTS))
    world.tick()
    routes_before = len(world.kube.writes_of("route"))
    world.prometheus.down = "http://prometheus.monitoring:9090: ConnectionError: connection refused"

    for _ in range(5):  # beyond consecutiveErrorLimit (3): the default policy only holds
        world.tick()

    analysis = world.condition("AnalysisHealthy")
    assert (analysis["status"], analysis["reason"]) == ("Unknown", "PrometheusUnavailable")
    assert "connection refused" in analysis["message"]
    assert (world.status["phase"], world.status["currentStep"]) == ("Progressing", 0)
    assert world.status["weights"] == {"legacy": 95, "candidate": 5}
    assert world.route_weights() == {LEGACY: 95, CANDIDATE: 5}
    assert len(world.kube.writes_of("route")) == routes_before


def test_spec_that_fails_parsing_fails_the_rollout_naming_the_field() -> None:
    # CEL refuses interval < 5s at admission; a cluster without that check still hands it to us.
    world = World(rollout_body(THREE_WEIGHTS, interval="1s"), acknowledged=False)

    world.tick()

    assert world.status["phase"] == "Failed"
    spec_valid = world.condition("SpecValid")
    assert (spec_valid["status"], spec_valid["reason"]) == ("False", "InvalidSpec")
    assert "spec.analysis.interval" in spec_valid["message"]
    assert world.kube.writes_of("route") == []  # never started: the route is not ours
    assert ("Warning", "InvalidSpec") in [(t, r) for t, r, _ in world.events.events]
    writes = len(world.kube.writes)
    world.tick()
    assert world.kube.writes[writes:] == []  # a Failed rollout is a steady state too


def test_spec_that_fails_parsing_mid_rollout_sends_traffic_to_legacy() -> None:
    world = World(rollout_body(THREE_WEIGHTS))
    world.tick()
    world.tick()
    assert world.route_weights() == {LEGACY: 75, CANDIDATE: 25}

    def bad_interval(stored: dict[str, Any]) -> None:
        stored["spec"]["analysis"]["interval"] = "1s"
        stored["metadata"]["generation"] += 1

    world.kube.edit_rollout(NS, NAME, bad_interval)
    world.tick()

    assert world.status["phase"] == "Failed"
    assert world.route_weights() == {LEGACY: 100, CANDIDATE: 0}


def test_status_patch_keeps_foreign_keys_and_an_abort_set_meanwhile() -> None:
    kopf_state = {"progress": {"run_rollout": {"started": "2026-03-01T11:59:00Z"}}}
    world = World(rollout_body(THREE_WEIGHTS, status={"kopf": copy.deepcopy(kopf_state)}))

    def human_aborts() -> None:  # kubectl agentrollout abort, between our read and our write
        world.kube.edit_rollout(NS, NAME, lambda stored: stored["status"].update(abort=True))
        world.kube.before_status_patch = None

    world.kube.before_status_patch = human_aborts
    world.tick()

    assert world.status["kopf"] == kopf_state
    assert world.status["abort"] is True
    owned = {f.alias or n for n, f in api.AgentRolloutStatus.model_fields.items()}
    assert all(set(w.body) <= owned for w in world.kube.writes_of("status"))

    world.tick()

    assert world.status["phase"] == "RolledBack"
    assert world.route_weights() == {LEGACY: 100, CANDIDATE: 0}
    assert world.status["kopf"] == kopf_state


def test_hand_edited_step_start_does_not_break_the_reconcile() -> None:
    steps: list[dict[str, Any]] = [{"setWeight": 5}, {"pause": {"duration": "1h", "minRequests": 100}}]
    world = World(rollout_body(steps))
    world.tick()
    world.tick()
    assert world.status["currentStep"] == 1
    world.kube.edit_rollout(NS, NAME, lambda stored: stored["status"].update(stepStartedAt="yesterday"))

    world.tick()

    # The planner repairs an unreadable start time to now; the shell must not trip over it first.
    assert world.status["stepStartedAt"] == iso(world.clock.now)
    assert world.status["currentStep"] == 1


def test_min_requests_counts_only_requests_served_since_the_step_began() -> None:
    steps: list[dict[str, Any]] = [{"setWeight": 5}, {"pause": {"minRequests": 100}}, {"setWeight": 50}]
    world = World(rollout_body(steps))
    spec = api.parse_spec(world.body()["spec"])
    # 10 candidate requests a second, whatever the window: the count tells the window that was asked.
    counted = {s: candidate_requests_query(spec, NS, s) for s in range(1, 60)}
    answers = {promql: 10.0 * s for s, promql in counted.items()}
    world.prometheus.answer = lambda promql: answers.get(promql) or world.metrics(promql)
    world.tick()
    world.tick(advance=30.6)  # step 2 (the pause) begins mid-second, at 12:01:00.6
    assert world.status["currentStep"] == 1

    world.tick(advance=0.3)  # 0.3 s into the step: nothing counted yet, and nothing from before it
    assert "waiting for candidate requests 0/100" in world.status["message"]
    world.tick(advance=9.7)  # 10 s into the step

    asked = [s for s, promql in counted.items() if promql in world.prometheus.queries]
    assert asked and max(asked) <= 10, f"counted requests over {asked} s; the step began 10 s ago"
    assert "waiting for candidate requests 90/100" in world.status["message"]


def test_values_drifting_within_their_bounds_cost_one_status_write_per_ten_minutes() -> None:
    world = World(rollout_body([{"setWeight": 5}, {"pause": {"duration": "2h"}}, {"setWeight": 50}]))
    for _ in range(3):  # start, complete step 1, first evaluation of the pause step
        world.tick()
    writes = len(world.kube.writes_of("status"))

    for i in range(40):  # 20 minutes at the 30s interval, a new value every evaluation
        world.metrics.error_rate = 0.001 + 0.0001 * i
        world.tick()

    assert len(world.kube.writes_of("status")) - writes == 2  # lastAnalysis refreshed at 10 and 20 min


def test_a_milestone_measures_every_gate_over_exactly_the_window_its_requests_were_counted_in() -> None:
    steps: list[dict[str, Any]] = [{"setWeight": 5, "milestone": {"transactions": 100}}, {"setWeight": 50}]
    world = World(rollout_body(steps))
    spec = api.parse_spec(world.body()["spec"])
    counted = {s: candidate_requests_query(spec, NS, s) for s in range(1, 60)}
    answers = {promql: 10.0 * s for s, promql in counted.items()}  # 10 candidate requests a second
    reads = {s: template_read(Template.ERROR_RATE, api.MetricNames(), window=f"{s}s") for s in range(1, 60)}

    def answer(promql: str) -> Any:
        if promql in answers:
            return answers[promql]
        for read in reads.values():
            if promql in (read.value.promql, read.samples.promql):
                candidate = {"namespace": NS, "version": CANDIDATE}
                return [(candidate, 1.0 if promql == read.value.promql else 1000.0)]
        return world.metrics(promql)

    world.prometheus.answer = answer
    world.tick()
    assert world.status["currentStep"] == 0
    world.tick(advance=6)
    assert "waiting for milestone: candidate requests 60/100" in world.status["message"]
    assert world.status["readiness"]["milestones"] == []
    asked = len(world.prometheus.queries)
    world.tick(advance=6)  # 12 s into the step: 120 requests counted over [12s]

    (record,) = world.status["readiness"]["milestones"]
    assert (record["requests"], record["windowSeconds"], record["score"]) == (120, 12, "Met")
    assert record["errorRate"] == 0.001 and record["gates"][0]["samples"] == 1000
    # The gate was asked over exactly the 12 s the requests were counted in.
    assert reads[12].value.promql in world.prometheus.queries[asked:]
    assert world.status["currentStep"] == 1
    assert world.history_reasons()[-2:] == ["MilestoneRecorded", "StepCompleted"]


def test_a_promoted_revision_has_its_baseline_measured_over_the_rollout_against_legacy() -> None:
    started = iso(FakeClock().now)
    status = {
        "phase": "Promoted",
        "currentStep": 3,
        "weights": {"legacy": 0, "candidate": 100},
        "candidateRevision": "agent-1",
        "stepStartedAt": started,
        "attemptStartedAt": started,
        "sequence": 3,
    }
    world = World(rollout_body(THREE_WEIGHTS, status=status), route_object(0, 100))
    reads = {s: template_read(Template.ERROR_RATE, api.MetricNames(), window=f"{s}s") for s in (630, 660)}

    def answer(promql: str) -> Any:
        for read in reads.values():
            if promql == read.value.promql:  # errors: 1 of the candidate's, 4 of legacy's
                return [
                    ({"namespace": NS, "version": CANDIDATE}, 1.0),
                    ({"namespace": NS, "version": LEGACY}, 4.0),
                ]
            if promql == read.samples.promql:
                return [
                    ({"namespace": NS, "version": CANDIDATE}, 1260.0),
                    ({"namespace": NS, "version": LEGACY}, 630.0),
                ]
        return []  # every other signal: no series, so no data

    world.prometheus.answer = answer
    world.clock.advance(600)
    world.tick()  # 630 s after the rollout started

    baseline = world.status["baseline"]
    assert (baseline["revision"], baseline["windowSeconds"]) == ("agent-1", 630)
    metrics = {m["name"]: m for m in baseline["metrics"]}
    errors = metrics["errorRate"]
    assert (errors["candidate"], errors["legacy"]) == (1 / 1260, 4 / 630)
    assert (errors["candidateSamples"], errors["legacySamples"]) == (1260, 630)
    assert (metrics["throughput"]["candidate"], metrics["throughput"]["legacy"]) == (2.0, 1.0)
    assert "candidate" not in metrics["costPerTransaction"]  # no data: left out, not zero
    writes = len(world.kube.writes)
    world.tick()  # recorded: no more measuring, nothing more to write
    assert world.kube.writes[writes:] == [] and world.status["baseline"] == baseline


def test_each_written_decision_is_one_json_log_line_with_its_actor(caplog: pytest.LogCaptureFixture) -> None:
    world = World(rollout_body(THREE_WEIGHTS))
    world.tick()
    abort = {"abort": True, "requests": {"abort": {"by": "alice", "groups": ["sre"], "reason": "pager"}}}
    world.kube.edit_rollout(NS, NAME, lambda stored: stored["status"].update(abort))
    with caplog.at_level(logging.INFO, logger="agent_rollout.decisions"):
        world.tick()
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "agent_rollout.decisions"]
    assert [(d["reason"], d["actor"], d["actorGroups"]) for d in lines] == [("Aborted", "alice", ["sre"])]
    assert lines[0]["agentrollout"] == NAME and lines[0]["namespace"] == NS
    assert world.status["history"][-1]["actor"] == "alice"
    assert "abort" not in world.status.get("requests", {})  # consumed with the verb


def test_a_pause_ending_is_a_decision_due_a_routine_analysis_is_not() -> None:
    """The controller gives a decision falling due a timer of its own (WrittenStatus.decision_in,
    Scheduler.deadline): at 10,000 rollouts the pause ends queued behind thousands of routine analyses."""
    world = World(rollout_body([{"setWeight": 5}, {"pause": {"duration": "20s"}}, {"setWeight": 50}]))
    world.tick()  # step 1 entered: the next reconcile is the analysis interval's
    assert world.written.decision_in is None
    delay = world.tick()  # step 1 completes: the 20 s pause entered, ending before the 30 s interval
    assert world.status["currentStep"] == 1
    assert 0 < delay <= 21 and world.written.decision_in == delay
    world.tick(advance=delay)  # the pause ended: step 3 entered, back to the interval
    assert world.status["currentStep"] == 2
    assert world.written.decision_in is None


def test_a_pause_longer_than_the_interval_is_due_at_its_end_not_at_the_interval_after_it() -> None:
    """A 60 s pause on a 30 s interval: the interval run comes first, and the pause's end has its own
    deadline (at 10,000 rollouts that interval run, queued with every other analysis, came up to 35 s
    after the pause's end and ended it then)."""
    world = World(rollout_body([{"setWeight": 5}, {"pause": {"duration": "60s"}}, {"setWeight": 50}]))
    world.tick()  # step 1 entered
    delay = world.tick()  # step 1 completes: the 60 s pause entered
    assert world.status["currentStep"] == 1
    assert delay == 30.0 and world.written.decision_in is not None and 60 <= world.written.decision_in <= 61
    world.tick(advance=world.written.decision_in)  # the deadline's run, whatever ran before
    assert world.status["currentStep"] == 2


def test_a_pause_ends_on_time_however_long_the_write_entering_it_waited() -> None:
    """The pause counts from the reconcile that entered it (its stepStartedAt), not from the end of
    that reconcile's writes: at 10,000 rollouts a status write waited up to 40 s on the saturated
    apiserver, and the pause's timer, set after it, ended the pause that much late."""
    world = World(rollout_body([{"setWeight": 5}, {"pause": {"duration": "25s"}}, {"setWeight": 50}]))
    world.tick()  # step 1 entered
    world.kube.before_status_patch = lambda: world.clock.advance(15.0)  # the write waits 15 s
    delay = world.tick()  # step 1 completes: the 25 s pause entered (before the 30 s interval)
    world.kube.before_status_patch = None
    assert world.status["currentStep"] == 1 and world.written.decision_in == delay
    assert 10.0 <= delay <= 11.0  # 25 s from the start of the entering reconcile (rounded up to 1 s)
    world.tick(advance=delay)
    assert world.status["currentStep"] == 2  # the pause is over when its timer fires
    assert world.history_reasons()[-1] == "StepCompleted"


def test_a_refresh_of_measured_values_is_ranked_last_in_the_api_budget_a_step_change_is_not() -> None:
    """kube.REFRESH: at 10,000 rollouts the live ones' periodic refreshes (a third of the budget) held
    back the writes that start new rollouts and record steps."""
    world = World(rollout_body([{"setWeight": 5}, {"pause": {"duration": "1h"}}, {"setWeight": 50}]))
    world.tick()  # step 1 entered
    world.tick()  # step 1 completed: the pause entered
    assert world.status["currentStep"] == 1
    assert world.kube.writes_of("status")[-1].priority == OTHER
    for _ in range(3):  # evaluations of the pause step until nothing new is written
        world.tick()
    quiet = len(world.kube.writes)

    world.tick(advance=analysis_refresh(NS, NAME) + 1)  # only the measured values are older than the refresh

    refreshed = world.kube.writes[quiet:]
    assert [(w.kind, w.priority) for w in refreshed] == [("status", REFRESH)], refreshed
    assert set(refreshed[0].body) <= {"lastAnalysis", "lastAnalysisAt", "sequence", "message", "conditions"}


def test_a_refresh_while_a_pause_ends_within_the_interval_is_ranked_with_the_decisions() -> None:
    """The run writing the refresh holds the pause's own run: at 10,000 rollouts entering step 1 an
    interval run's refresh, ranked last, kept 60 s pauses from ending for 20 s."""
    # Entered, three 30 s ticks, then the refresh: the pause ends 20 s after it.
    pause = f"{3 * 30 + int(analysis_refresh(NS, NAME)) + 1 + 20}s"
    world = World(rollout_body([{"setWeight": 5}, {"pause": {"duration": pause}}, {"setWeight": 50}]))
    world.tick()  # step 1 entered
    world.tick()  # step 1 completed: the pause entered
    for _ in range(3):  # evaluations of the pause step until nothing new is written
        world.tick()
    quiet = len(world.kube.writes)

    world.tick(advance=analysis_refresh(NS, NAME) + 1)  # the refresh, with the pause ending within 30 s

    refreshed = world.kube.writes[quiet:]
    assert world.status["currentStep"] == 1  # still in the pause
    assert [(w.kind, w.priority) for w in refreshed] == [("status", OTHER)], refreshed


def test_rollouts_created_together_refresh_their_measured_values_spread_over_half_a_period() -> None:
    """10,000 rollouts created at once were written together at their first step and, with one refresh
    period for all, refreshed together ten minutes later: 1.48 writes per rollout per 5 minutes over
    a 120 s window, where the average is 0.5. Each rollout's period is its own (by its name, the same
    after a restart), spread over ANALYSIS_REFRESH x [0.75, 1.25)."""
    periods = [analysis_refresh("team", f"agent-{i}") for i in range(1000)]
    assert all(0.75 * ANALYSIS_REFRESH <= p < 1.25 * ANALYSIS_REFRESH for p in periods)
    assert analysis_refresh("team", "agent-7") == periods[7]  # stable
    # Spread evenly: each tenth of the range holds about a tenth of the rollouts.
    tenths = [0] * 10
    for p in periods:
        tenths[int((p / ANALYSIS_REFRESH - 0.75) * 20)] += 1
    assert min(tenths) > 60 and max(tenths) < 140, tenths
    # A rollout's refresh falls due at its own period, not before.
    world = World(rollout_body([{"setWeight": 5}, {"pause": {"duration": "2h"}}, {"setWeight": 50}]))
    world.tick()
    world.tick()
    for _ in range(3):
        world.tick()
    quiet = len(world.kube.writes)
    written = parse_time(world.status["lastAnalysisAt"])
    assert written is not None
    age = (world.clock.now - written).total_seconds()
    own = analysis_refresh(NS, NAME)
    world.tick(advance=own - age - 1)
    assert len(world.kube.writes) == quiet
    world.tick(advance=2)
    assert [w.kind for w in world.kube.writes[quiet:]] == ["status"]
