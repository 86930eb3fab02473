"""Planner invariants over random valid specs and random observation sequences.

A small simulated shell applies the planner's SetWeights to a route (sometimes late, sometimes
lost, sometimes overwritten by someone else), while Deployments vanish and return, Prometheus
fails, gates flip and humans set abort or promote at random times.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from agent_rollout.api import AgentRolloutSpec, AgentRolloutStatus, GateResult, Phase, Verdict, Weights
from agent_rollout.domain import DeploymentState, EmitEvent, Observations, Plan, SetWeights
from agent_rollout.planner import plan

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
PROPERTY_SETTINGS = settings(max_examples=200, deadline=None)
ADVANCES = {"StepCompleted", "ManualPromotion", "Promoted"}
RESTARTS = {"Started", "NewCandidate"}


@st.composite
def specs(draw: st.DrawFn) -> AgentRolloutSpec:
    count = draw(st.integers(1, 6))
    weights = iter(sorted(draw(st.lists(st.integers(0, 100), min_size=count, max_size=count))))
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
    raw: dict[str, Any] = {
        "legacy": {"deployment": "legacy"},
        "candidate": {"deployment": "candidate"},
        "traffic": {
            "gatewayAPI": {"httpRoute": "route", "legacyBackend": "legacy", "candidateBackend": "candidate"}
        },
        "steps": steps,
    }
    gate_count = draw(st.integers(0, 3))
    if gate_count:
        raw["analysis"] = {
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
    return AgentRolloutSpec.model_validate(raw)


@dataclass(frozen=True)
class Moment:
    """What the world does before one tick."""

    advance: int  # seconds since the previous tick
    legacy_exists: bool
    candidate_exists: bool
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


moments = st.builds(
    Moment,
    advance=st.integers(0, 3 * 3600),
    legacy_exists=st.sampled_from([True] * 9 + [False]),
    candidate_exists=st.sampled_from([True] * 9 + [False]),
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
)


def observe(spec: AgentRolloutSpec, moment: Moment, route: Weights, revision: int = 1) -> Observations:
    gates: tuple[GateResult, ...] | None = None
    if moment.analysis == "gates" and spec.analysis is not None:
        gates = tuple(
            GateResult(name=g.name, verdict=v, value=0.001, samples=300, dry_run=g.dry_run)
            for g, v in zip(spec.analysis.gates, moment.verdicts, strict=False)
        )
    return Observations(
        legacy=DeploymentState("legacy", moment.legacy_exists, "legacy-1", 1, 1),
        candidate=DeploymentState("candidate", moment.candidate_exists, f"rev-{revision}", 1, 1),
        route_weights=None if moment.route == "error" else route,
        route_error="HTTPRoute route not found" if moment.route == "error" else None,
        gates=gates,
        prometheus_error="connection refused" if moment.analysis == "error" and spec.analysis else None,
        candidate_requests=moment.requests,
        generation=1,
    )


@dataclass
class Run:
    """A whole simulated rollout: the inputs and output of every tick."""

    ticks: list[tuple[AgentRolloutStatus, Observations, datetime, Plan]]


def simulate(spec: AgentRolloutSpec, script: list[Moment]) -> Run:
    status, route, now, revision = AgentRolloutStatus(), Weights(), T0, 1
    ticks = []
    for moment in script:
        now += timedelta(seconds=moment.advance)
        revision += moment.new_revision
        if moment.route == "drift":
            route = Weights(legacy=100 - moment.drift_to, candidate=moment.drift_to)
        # A human patches status between reconciles, as `kubectl agentrollout abort|promote` does.
        status = status.model_copy(update={"abort": status.abort or moment.abort, "promote": moment.promote})
        obs = observe(spec, moment, route, revision)
        result = plan(spec, status, obs, now)
        ticks.append((status, obs, now, result))
        requested = [a.weights for a in result.actions if isinstance(a, SetWeights)]
        if requested and moment.route == "applied":
            route = requested[-1]
        status = result.status
    return Run(ticks)


@PROPERTY_SETTINGS
@given(specs(), st.lists(moments, min_size=1, max_size=30))
def test_weights_always_sum_to_100_and_never_target_a_missing_deployment(
    spec: AgentRolloutSpec, script: list[Moment]
) -> None:
    for _, obs, _, result in simulate(spec, script).ticks:
        weights = [result.status.weights] + [a.weights for a in result.actions if isinstance(a, SetWeights)]
        for w in weights:
            assert 0 <= w.legacy <= 100 and 0 <= w.candidate <= 100 and w.legacy + w.candidate == 100
        for action in result.actions:
            if isinstance(action, SetWeights):
                assert obs.candidate is not None and obs.legacy is not None
                assert obs.candidate.exists or action.weights.candidate == 0
                assert obs.legacy.exists or action.weights.legacy == 0


@PROPERTY_SETTINGS
@given(specs(), st.lists(moments, min_size=1, max_size=30))
def test_rolled_back_keeps_candidate_at_zero_until_a_new_revision(
    spec: AgentRolloutSpec, script: list[Moment]
) -> None:
    for before, _, _, result in simulate(spec, script).ticks:
        if (
            before.phase is not Phase.ROLLED_BACK
            or result.status.candidate_revision != before.candidate_revision
        ):
            continue
        assert result.status.phase is Phase.ROLLED_BACK
        assert result.status.weights.candidate == 0
        assert all(a.weights.candidate == 0 for a in result.actions if isinstance(a, SetWeights))


@PROPERTY_SETTINGS
@given(specs(), st.lists(moments, min_size=1, max_size=30))
def test_steps_advance_one_at_a_time_without_skips_or_repeats(
    spec: AgentRolloutSpec, script: list[Moment]
) -> None:
    visited: list[int] = []  # steps of the current attempt, in the order they were entered
    for before, _, _, result in simulate(spec, script).ticks:
        after = result.status
        # Events and decisions are one to one, so this tick's events say what was decided.
        decided = [a.reason for a in result.actions if isinstance(a, EmitEvent)]
        assert sum(r in ADVANCES for r in decided) <= 1
        if RESTARTS & set(decided):
            assert after.current_step == 0
            visited = [0]
            continue
        if after.current_step != before.current_step:
            assert after.current_step == before.current_step + 1
            assert ADVANCES & set(decided)
            visited.append(after.current_step)
        assert visited == list(range(len(visited))) or before.phase is Phase.PENDING
        if after.phase is Phase.PROMOTED:
            assert after.current_step == len(spec.steps)
        if after.phase in (Phase.PROGRESSING, Phase.PAUSED):
            assert after.current_step < len(spec.steps)


@PROPERTY_SETTINGS
@given(specs(), st.lists(moments, min_size=1, max_size=20))
def test_plan_is_deterministic_and_leaves_its_inputs_alone(
    spec: AgentRolloutSpec, script: list[Moment]
) -> None:
    for before, obs, now, result in simulate(spec, script).ticks:
        frozen = before.model_dump()
        assert plan(spec, before, obs, now) == result
        assert before.model_dump() == frozen


@PROPERTY_SETTINGS
@given(specs(), st.lists(moments, min_size=1, max_size=20))
def test_identical_ticks_reach_a_steady_status(spec: AgentRolloutSpec, script: list[Moment]) -> None:
    _, last_obs, now, result = simulate(spec, script).ticks[-1]
    # Prometheus errors are events (each one counts), so a steady state is one without them.
    obs = replace(last_obs, prometheus_error=None)
    status = result.status.model_copy(update={"promote": False})
    for _ in range(2 * len(spec.steps) + 6):
        nxt = plan(spec, status, obs, now).status
        if nxt == status:
            break
        status = nxt
    steady = plan(spec, status, obs, now)
    assert steady.status == status
    assert not [a for a in steady.actions if isinstance(a, EmitEvent)]  # nothing decided, nothing announced
    # Time passing alone writes nothing (no refreshed timestamps), unless a pause is due to end.
    if steady.requeue_after is None or steady.requeue_after > 1:
        assert plan(spec, status, obs, now + timedelta(seconds=1)).status == status
