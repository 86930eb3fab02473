"""Planner invariants over random specs, random spec edits and random observation sequences.

A small simulated shell applies the planner's SetWeights to a route (sometimes late, sometimes
lost, sometimes overwritten by someone else), while Deployments vanish and return, Prometheus
fails, gates flip, humans set abort, promote or retry at random times, and the spec is edited
between ticks: its steps or gates change, it becomes invalid (rules the schema cannot express) or
does not parse at all, and it is put back.

The properties speak of what an operator's user sees (phase, weights, history, Events, SetWeights
requests), not of how the planner gets there.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from agent_rollout import api
from agent_rollout.api import AgentRolloutSpec, AgentRolloutStatus, GateResult, Phase, Verdict, Weights
from agent_rollout.domain import DeploymentState, EmitEvent, Observations, Plan, SetWeights, SpecProblem
from agent_rollout.planner import plan
from agent_rollout.validation import validate

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
PROPERTY_SETTINGS = settings(max_examples=200, deadline=None)
ADVANCES = {"StepCompleted", "ManualPromotion", "Promoted"}
RESTARTS = {"Started", "NewCandidate", "Retried"}
# The only decisions that may give a rolled-back candidate traffic again: a human's retry, or a new
# revision of the candidate. Editing the spec does not (planner.py's docstring says so too), not even
# through an invalid spec that is then fixed (test_fixing_an_invalid_spec_does_not_restart_...).
RESTARTS_AFTER_ROLLBACK = {"Retried", "NewCandidate"}
REPLICAS = 2


# ---------------------------------------------------------------- specs and their edits


def step_lists(weights_sorted: bool = True) -> st.SearchStrategy[list[dict[str, Any]]]:
    @st.composite
    def draw_steps(draw: st.DrawFn) -> list[dict[str, Any]]:
        count = draw(st.integers(1, 6))
        drawn = draw(st.lists(st.integers(0, 100), min_size=count, max_size=count))
        weights = iter(sorted(drawn) if weights_sorted else drawn)
        steps: list[dict[str, Any]] = []
        for _ in range(count):
            weight = next(weights)
            kind = draw(st.sampled_from(["setWeight", "setWeight", "duration", "requests", "approval"]))
            if kind == "setWeight":
                steps.append({"setWeight": weight})
            elif kind == "duration":
                steps.append({"pause": {"duration": draw(st.sampled_from(["1m", "30m", "2h"]))}})
            elif kind == "requests":
                steps.append({"pause": {"duration": "5m", "minRequests": draw(st.integers(1, 500))}})
            else:
                steps.append({"pause": {}})
        return steps

    return draw_steps()


@st.composite
def analyses(draw: st.DrawFn) -> dict[str, Any] | None:
    gate_count = draw(st.integers(0, 3))
    if not gate_count:
        return None
    return {
        "prometheus": {"url": "http://prometheus:9090"},
        "failureLimit": draw(st.integers(0, 2)),
        "consecutiveErrorLimit": draw(st.integers(0, 3)),
        "onPrometheusError": draw(st.sampled_from(["hold", "rollback"])),
        "onInconclusive": draw(st.sampled_from(["hold", "pause"])),
        "gates": [
            {
                "name": f"gate-{i}",
                "template": "errorRate",
                "max": 0.01,
                "dryRun": draw(st.booleans()),
                **({"failureLimit": draw(st.integers(0, 2))} if draw(st.booleans()) else {}),
            }
            for i in range(gate_count)
        ],
    }


def raw_spec(steps: list[dict[str, Any]], analysis: dict[str, Any] | None) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "legacy": {"deployment": "legacy"},
        "candidate": {"deployment": "candidate"},
        "traffic": {
            "gatewayAPI": {"httpRoute": "route", "legacyBackend": "legacy", "candidateBackend": "candidate"}
        },
        "steps": steps,
    }
    if analysis is not None:
        raw["analysis"] = analysis
    return raw


@dataclass(frozen=True)
class Version:
    """One version of the AgentRollout's spec as the shell hands it to the planner."""

    spec: AgentRolloutSpec | None  # None: it did not parse, and `problems` say why
    problems: tuple[SpecProblem, ...] = ()
    kind: str = "valid"


@st.composite
def valid_raw_specs(draw: st.DrawFn) -> dict[str, Any]:
    return raw_spec(draw(step_lists()), draw(analyses()))


def version(raw: dict[str, Any], kind: str = "valid") -> Version:
    """A spec as the shell hands it to the planner: parsed, with validation's problems."""
    spec = AgentRolloutSpec.model_validate(raw)
    return Version(spec, tuple(validate(spec)), kind=kind)


@st.composite
def edits(draw: st.DrawFn, base: dict[str, Any]) -> Version:
    """A later version of `base`: new steps, new gates, invalid, or unparseable."""
    kind = draw(st.sampled_from(["steps", "steps", "gates", "gates", "invalid", "unparseable"]))
    if kind == "steps":
        return version({**base, "steps": draw(step_lists())}, kind)
    if kind == "gates":
        analysis = draw(analyses())
        edited = {k: v for k, v in base.items() if k != "analysis"}
        return version(raw_spec(edited["steps"], analysis), kind)
    if kind == "unparseable":
        problem = SpecProblem("spec.steps[0].setWeight", "Input should be less than or equal to 100")
        return Version(None, (problem,), kind)
    # Invalid by a rule the schema cannot express: it parses, and validation refuses it.
    how = draw(st.sampled_from(["decreasing", "duplicate-gates", "same-deployment"]))
    if how == "decreasing":
        invalid = {**base, "steps": [{"setWeight": 50}, *base["steps"], {"setWeight": 10}]}
    elif how == "duplicate-gates":
        gate = {"name": "twin", "template": "errorRate", "max": 0.01}
        analysis = {"prometheus": {"url": "http://prometheus:9090"}, "gates": [gate, gate]}
        invalid = raw_spec(base["steps"], analysis)
    else:
        invalid = {**base, "candidate": {"deployment": "legacy"}}
    return version(invalid, f"invalid:{how}")


@st.composite
def histories(draw: st.DrawFn, max_versions: int = 4) -> list[Version]:
    """The spec's versions: [0] is the first; a script's edits switch between them, back included."""
    base = draw(valid_raw_specs())
    later = draw(st.lists(edits(base), max_size=max_versions - 1))
    return [version(base), *later]


# ---------------------------------------------------------------- the world between ticks


@dataclass(frozen=True)
class Moment:
    """What the world does before one tick."""

    advance: int  # seconds since the previous tick
    legacy_exists: bool
    candidate_exists: bool
    candidate_available: bool  # its pods are ready (it exists but may still be starting)
    new_revision: bool  # the candidate's pod template changed (new image, model, prompt...)
    route: (
        str  # "applied": the last SetWeights landed; "lost": it did not; "error"; "drift": someone edited it
    )
    drift_to: int
    analysis: str  # "gates", "none" (not due), "error" (Prometheus down)
    verdicts: tuple[Verdict, ...]
    requests: int | None
    abort: bool
    promote: bool
    retry: bool
    edit: int | None  # switch the spec to this version (modulo their number); None: no edit


moments = st.builds(
    Moment,
    advance=st.integers(0, 3 * 3600),
    legacy_exists=st.sampled_from([True] * 9 + [False]),
    candidate_exists=st.sampled_from([True] * 9 + [False]),
    candidate_available=st.sampled_from([True] * 9 + [False]),
    new_revision=st.sampled_from([False] * 14 + [True]),
    route=st.sampled_from(["applied"] * 6 + ["lost", "error", "drift"]),
    drift_to=st.integers(0, 100),
    analysis=st.sampled_from(["gates"] * 6 + ["none", "error"]),
    verdicts=st.lists(
        st.sampled_from([Verdict.PASS] * 5 + [Verdict.INCONCLUSIVE, Verdict.FAIL]), min_size=3, max_size=3
    ).map(tuple),
    requests=st.one_of(st.none(), st.integers(0, 1000)),
    abort=st.sampled_from([False] * 19 + [True]),
    promote=st.sampled_from([False] * 5 + [True]),
    retry=st.sampled_from([False] * 7 + [True]),
    edit=st.sampled_from([None] * 8 + [0, 1, 2, 3]),
)


def observe(
    v: Version, moment: Moment, route: Weights, revision: int = 1, generation: int = 1
) -> Observations:
    gates: tuple[GateResult, ...] | None = None
    analysis = v.spec.analysis if v.spec is not None else None
    if moment.analysis == "gates" and analysis is not None:
        gates = tuple(
            GateResult(name=g.name, verdict=verdict, value=0.001, samples=300, dry_run=g.dry_run)
            for g, verdict in zip(analysis.gates, moment.verdicts, strict=False)
        )
    available = REPLICAS if moment.candidate_exists and moment.candidate_available else 0
    return Observations(
        problems=v.problems,
        legacy=DeploymentState(
            "legacy",
            exists=moment.legacy_exists,
            template_hash="legacy-1",
            replicas=REPLICAS,
            available_replicas=REPLICAS if moment.legacy_exists else 0,
        ),
        candidate=DeploymentState(
            "candidate",
            exists=moment.candidate_exists,
            template_hash=f"rev-{revision}",
            replicas=REPLICAS,
            available_replicas=available,
        ),
        route_weights=None if moment.route == "error" else route,
        route_error="HTTPRoute route not found" if moment.route == "error" else None,
        gates=gates,
        prometheus_error="connection refused" if moment.analysis == "error" and analysis else None,
        candidate_requests=moment.requests,
        generation=generation,
    )


@dataclass(frozen=True)
class Tick:
    """One reconcile: what the planner was given and what it decided."""

    version: Version
    edited: bool  # the spec changed since the previous tick
    before: AgentRolloutStatus
    obs: Observations
    now: datetime
    result: Plan

    @property
    def after(self) -> AgentRolloutStatus:
        return self.result.status

    @property
    def decided(self) -> list[str]:
        """This tick's Event reasons, in order."""
        return [a.reason for a in self.result.actions if isinstance(a, EmitEvent)]

    @property
    def requested(self) -> list[Weights]:
        return [a.weights for a in self.result.actions if isinstance(a, SetWeights)]


def simulate(versions: list[Version], script: list[Moment]) -> list[Tick]:
    status, route, now, revision = AgentRolloutStatus(), Weights(), T0, 1
    current, generation = 0, 1
    ticks = []
    for moment in script:
        now += timedelta(seconds=moment.advance)
        revision += moment.new_revision
        edited = moment.edit is not None and moment.edit % len(versions) != current
        if edited and moment.edit is not None:
            current, generation = moment.edit % len(versions), generation + 1
        if moment.route == "drift":
            route = Weights(legacy=100 - moment.drift_to, candidate=moment.drift_to)
        # A human patches status between reconciles, as `kubectl agentrollout abort|promote|retry` does.
        status = status.model_copy(
            update={
                "abort": status.abort or moment.abort,
                "promote": moment.promote,
                "retry": status.retry or moment.retry,
            }
        )
        v = versions[current]
        obs = observe(v, moment, route, revision, generation)
        result = plan(v.spec, status, obs, now)
        ticks.append(Tick(v, edited, status, obs, now, result))
        requested = [a.weights for a in result.actions if isinstance(a, SetWeights)]
        if requested and moment.route == "applied":
            route = requested[-1]
        status = result.status
    return ticks


scripts = st.lists(moments, min_size=1, max_size=30)


# ---------------------------------------------------------------- properties


@PROPERTY_SETTINGS
@given(histories(), scripts)
def test_no_weights_are_ever_requested_towards_a_missing_deployment(
    versions: list[Version], script: list[Moment]
) -> None:
    for t in simulate(versions, script):
        assert t.obs.candidate is not None and t.obs.legacy is not None
        for weights in t.requested:
            assert t.obs.candidate.exists or weights.candidate == 0, t
            assert t.obs.legacy.exists or weights.legacy == 0, t


@PROPERTY_SETTINGS
@given(histories(), scripts)
def test_after_a_rollback_the_candidate_gets_no_traffic_until_a_retry_or_a_new_candidate(
    versions: list[Version], script: list[Moment]
) -> None:
    rolled_back, revision = False, None
    for t in simulate(versions, script):
        # A new revision that appeared while the spec was invalid starts when the spec is fixed.
        new_revision = "Started" in t.decided and t.after.candidate_revision != revision
        if rolled_back and (RESTARTS_AFTER_ROLLBACK & set(t.decided) or new_revision):
            rolled_back = False
        if t.after.phase is Phase.ROLLED_BACK:
            rolled_back, revision = True, t.after.rolled_back_revision
        if not rolled_back:
            continue
        assert all(w.candidate == 0 for w in t.requested), t.requested
        assert t.obs.legacy is not None
        if t.obs.legacy.exists:
            assert t.after.weights.candidate == 0, (t.before.phase, t.decided, t.version.kind)
        else:  # a rollback with legacy gone is recorded, and traffic held where it was until it returns
            assert t.after.weights.candidate <= t.before.weights.candidate, (t.before, t.after)


@PROPERTY_SETTINGS
@given(histories(), scripts)
def test_failed_never_routes_traffic_to_the_candidate(versions: list[Version], script: list[Moment]) -> None:
    for t in simulate(versions, script):
        if t.after.phase is not Phase.FAILED:
            continue
        assert all(w.candidate == 0 for w in t.requested), t.requested
        assert t.obs.legacy is not None
        if t.obs.legacy.exists:  # with legacy gone there is nowhere else to send the traffic
            assert t.after.weights.candidate == 0, t.after.weights


@PROPERTY_SETTINGS
@given(histories(), scripts)
def test_every_decision_is_one_history_entry_and_one_event_and_no_change_goes_undecided(
    versions: list[Version], script: list[Moment]
) -> None:
    for t in simulate(versions, script):
        decided = t.decided
        appended = t.after.history[len(t.after.history) - len(decided) :] if decided else []
        # Exactly the decided entries were appended (the oldest dropped past the limit), nothing rewritten.
        assert (t.before.history + appended)[-api.HISTORY_LIMIT :] == t.after.history
        assert [d.reason for d in appended] == decided
        if t.after.phase is not t.before.phase:
            assert decided, (t.before.phase, t.after.phase)
        if t.after.weights != t.before.weights:
            assert decided, (t.before.weights, t.after.weights)


@PROPERTY_SETTINGS
@given(histories(), scripts)
def test_steps_advance_one_at_a_time_and_restart_only_from_the_first(
    versions: list[Version], script: list[Moment]
) -> None:
    for t in simulate(versions, script):
        before, after, decided = t.before, t.after, set(t.decided)
        assert sum(r in ADVANCES for r in t.decided) <= 1, t.decided
        if decided & RESTARTS:
            assert after.current_step == 0 and after.phase in (Phase.PROGRESSING, Phase.PAUSED), t.decided
            continue
        if "SpecValid" in decided and after.phase is not Phase.ROLLED_BACK:
            assert after.current_step == 0, t.decided  # a fixed spec starts over, once it can start
            continue
        if "SpecValid" in decided:  # rolled back at once (an abort set meanwhile), or staying so
            assert after.current_step in (0, before.current_step), t.decided
            continue
        if t.version.spec is None:
            assert after.current_step == before.current_step
            continue
        steps = len(t.version.spec.steps)
        if after.current_step != before.current_step:
            if decided & ADVANCES:
                # From the step it was at, or from the last one when an edit removed that step (the
                # repair and the advance can fall in one tick).
                assert after.current_step == min(before.current_step, steps - 1) + 1, (before, after)
            else:
                # Only a repair: steps were removed by an edit, so the rollout resumes at the last one.
                assert before.current_step >= steps and after.current_step == steps - 1, (before, after)
        if "Promoted" in decided:
            assert after.phase is Phase.PROMOTED and after.current_step == steps


@PROPERTY_SETTINGS
@given(histories(), scripts)
def test_a_verb_the_plugin_refuses_would_change_nothing(
    versions: list[Version], script: list[Moment]
) -> None:
    """What `kubectl agentrollout` tells its user: retry outside RolledBack, promote when there is no
    step to end, abort when already rolled back are consumed without effect."""
    no_effect = {
        "retry": {p for p in Phase if p is not Phase.ROLLED_BACK},
        "promote": {Phase.PENDING, Phase.PROMOTED, Phase.ROLLED_BACK, Phase.FAILED},
        "abort": {Phase.ROLLED_BACK},
    }
    verbs = set(no_effect)
    for t in simulate(versions, script):
        for verb, phases in no_effect.items():
            if t.before.phase not in phases:
                continue
            asked = plan(t.version.spec, t.before.model_copy(update={verb: True}), t.obs, t.now)
            unasked = plan(t.version.spec, t.before.model_copy(update={verb: False}), t.obs, t.now)
            assert asked.status.model_dump(exclude=verbs) == unasked.status.model_dump(exclude=verbs), verb
            assert asked.actions == unasked.actions, verb


@PROPERTY_SETTINGS
@given(histories(), st.lists(moments, min_size=1, max_size=20))
def test_plan_is_deterministic_and_leaves_its_inputs_alone(
    versions: list[Version], script: list[Moment]
) -> None:
    for t in simulate(versions, script):
        frozen = t.before.model_dump()
        spec = t.version.spec.model_dump() if t.version.spec is not None else None
        assert plan(t.version.spec, t.before, t.obs, t.now) == t.result
        assert t.before.model_dump() == frozen
        assert (t.version.spec.model_dump() if t.version.spec is not None else None) == spec


@PROPERTY_SETTINGS
@given(histories(), st.lists(moments, min_size=1, max_size=20))
def test_identical_ticks_reach_a_steady_status(versions: list[Version], script: list[Moment]) -> None:
    last = simulate(versions, script)[-1]
    spec = last.version.spec
    # Prometheus errors are events (each one counts), so a steady state is one without them.
    obs = replace(last.obs, prometheus_error=None)
    status = last.after.model_copy(update={"promote": False})
    steps = len(spec.steps) if spec is not None else 0
    for _ in range(2 * steps + 6):
        nxt = plan(spec, status, obs, last.now).status
        if nxt == status:
            break
        status = nxt
    steady = plan(spec, status, obs, last.now)
    assert steady.status == status
    assert not [a for a in steady.actions if isinstance(a, EmitEvent)]  # nothing decided, nothing announced
    # Time passing alone writes nothing (no refreshed timestamps), unless a pause is due to end.
    if steady.requeue_after is None or steady.requeue_after > 1:
        assert plan(spec, status, obs, last.now + timedelta(seconds=1)).status == status


def test_fixing_an_invalid_spec_does_not_restart_a_rolled_back_candidate() -> None:
    analysis = {
        "prometheus": {"url": "http://prometheus:9090"},
        "failureLimit": 0,
        "gates": [{"name": "errors", "template": "errorRate", "max": 0.01}],
    }
    good = raw_spec([{"setWeight": 50}, {"setWeight": 100}], analysis)
    typo = {**good, "candidate": {"deployment": "legacy"}}  # parses; validation refuses it
    quiet = Moment(
        advance=60,
        legacy_exists=True,
        candidate_exists=True,
        candidate_available=True,
        new_revision=False,
        route="applied",
        drift_to=0,
        analysis="none",
        verdicts=(Verdict.PASS,) * 3,
        requests=None,
        abort=False,
        promote=False,
        retry=False,
        edit=None,
    )
    ticks = simulate(
        [version(good), version(typo, "invalid")],
        [
            quiet,  # acknowledged (planner.first_sight)
            quiet,  # Started: candidate 50
            replace(quiet, analysis="gates", verdicts=(Verdict.FAIL,) * 3),  # GateFailed: RolledBack
            replace(quiet, edit=1),  # the spec is edited with a mistake: Failed
            replace(quiet, edit=0),  # and fixed
        ],
    )
    assert [t.after.phase for t in ticks[1:4]] == [Phase.PROGRESSING, Phase.ROLLED_BACK, Phase.FAILED]
    fixed = ticks[4]
    assert fixed.after.weights.candidate == 0, (fixed.decided, fixed.after.weights)
