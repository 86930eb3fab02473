"""Shadow steps: the router's mirror patch (exactly once, other filters untouched), the planner's wanted
mirror (only during a live shadow step), the write-ahead record, validation, and shadowAgreement."""

from __future__ import annotations

import asyncio
import copy
from datetime import timedelta
from typing import Any

import jsonpatch  # type: ignore[import-untyped]
import pytest
from pydantic import ValidationError

from agent_rollout.analysis.prometheus import measure_gates
from agent_rollout.analysis.templates import template_read
from agent_rollout.api import AgentRolloutSpec, MetricNames, Phase, Template, Verdict, dump
from agent_rollout.comparator.compare import Mode as CompareMode
from agent_rollout.crdgen import openapi_schema
from agent_rollout.domain import SetWeights
from agent_rollout.intent import decode, encode, intent_for
from agent_rollout.planner import plan
from agent_rollout.reconcile import spec_problems_from
from agent_rollout.traffic import gatewayapi
from agent_rollout.traffic.gatewayapi import GatewayAPIRouter
from agent_rollout.traffic.value import Mirror, TrafficState
from agent_rollout.validation import validate
from tests.specs import CANDIDATE, LEGACY, analysis_dict, spec_dict
from tests.test_planner import T0, observe, result, running, w

ROUTER = GatewayAPIRouter(http_route="triage", legacy_backend=LEGACY, candidate_backend=CANDIDATE)
MIRROR = Mirror("agent-rollout-comparator", 8080, 20)
HEADERS = {
    "type": "RequestHeaderModifier",
    "requestHeaderModifier": {"set": [{"name": "x-team", "value": "a"}]},
}
AUDIT = {
    "type": "RequestMirror",
    "requestMirror": {"backendRef": {"name": "audit", "port": 80}, "percent": 5},
}


def route(filters: list[dict[str, Any]] | None) -> dict[str, Any]:
    rule: dict[str, Any] = {
        "matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
        "backendRefs": [
            {"name": LEGACY, "port": 80, "weight": 100},
            {"name": CANDIDATE, "port": 80, "weight": 0},
        ],
    }
    if filters is not None:
        rule["filters"] = filters
    other = {
        "matches": [{"path": {"type": "PathPrefix", "value": "/admin"}}],
        "backendRefs": [{"name": "admin"}],
    }
    return {"parentRefs": [{"name": "gw"}], "rules": [rule, other]}


def apply(spec: dict[str, Any], want: TrafficState) -> dict[str, Any]:
    ops = gatewayapi.traffic_patch(spec, ROUTER, want, (MIRROR,))
    out: dict[str, Any] = jsonpatch.apply_patch({"spec": spec}, ops)["spec"]
    return out


@pytest.mark.parametrize("filters", [None, [], [HEADERS, AUDIT]])
def test_mirror_is_added_once_and_removed_leaving_every_other_filter_as_it_was(filters: Any) -> None:
    before = route(copy.deepcopy(filters))
    shadowing = apply(before, TrafficState(w(0), MIRROR))
    reading = gatewayapi.read_mirror(shadowing, ROUTER, (MIRROR,))
    assert (reading.mirror, reading.exact, reading.found) == (MIRROR, True, 1)
    assert shadowing["rules"][0]["filters"][: len(filters or [])] == (filters or [])
    assert shadowing["rules"][1] == before["rules"][1]
    # Planning again from the route as written asks for nothing more: exactly once.
    assert gatewayapi.mirror_patch(shadowing, ROUTER, MIRROR, (MIRROR,)) == []
    after = apply(shadowing, TrafficState(w(10)))
    expected = route(copy.deepcopy(filters) if filters else None)
    expected["rules"][0]["backendRefs"][0]["weight"], expected["rules"][0]["backendRefs"][1]["weight"] = (
        90,
        10,
    )
    assert after == expected  # filters identical before and after ([] with only ours goes as a whole)


def test_an_add_planned_on_a_stale_reading_fails_instead_of_adding_a_second_filter() -> None:
    stale = route([HEADERS])
    ops = gatewayapi.traffic_patch(stale, ROUTER, TrafficState(w(0), MIRROR), (MIRROR,))
    landed = apply(stale, TrafficState(w(0), MIRROR))  # the first attempt landed after all
    with pytest.raises(jsonpatch.JsonPatchTestFailed):
        jsonpatch.apply_patch({"spec": landed}, ops)
    gained = route(None)  # a rule that gained a filters list meanwhile
    ops = gatewayapi.traffic_patch(gained, ROUTER, TrafficState(w(0), MIRROR), (MIRROR,))
    with pytest.raises(jsonpatch.JsonPatchTestFailed):
        jsonpatch.apply_patch({"spec": route([HEADERS])}, ops)


def test_duplicates_and_a_changed_percent_are_repaired_to_exactly_one() -> None:
    ours = gatewayapi.mirror_filter(Mirror(MIRROR.service, MIRROR.port, 50))
    doubled = route([ours, HEADERS, copy.deepcopy(ours)])
    reading = gatewayapi.read_mirror(doubled, ROUTER, (MIRROR,))
    assert (reading.mirror, reading.exact, reading.found) == (None, False, 2)
    fixed = apply(doubled, TrafficState(w(0), MIRROR))
    assert fixed["rules"][0]["filters"] == [HEADERS, gatewayapi.mirror_filter(MIRROR)]


def test_a_mirror_to_another_service_is_never_ours() -> None:
    spec = route([AUDIT])
    assert gatewayapi.read_mirror(spec, ROUTER, (MIRROR,)).found == 0
    assert apply(spec, TrafficState(w(0)))["rules"][0]["filters"] == [AUDIT]


def shadow_spec(*steps: dict[str, Any], **gate: Any) -> AgentRolloutSpec:
    gates = [{"name": "agreement", "template": "shadowAgreement", **(gate or {"min": 0.8})}]
    shadow = {"shadow": {"percent": 20, "duration": "1m", "minRequests": 100}}
    raw = spec_dict(steps=[shadow, *steps] if steps else [shadow, {"setWeight": 100}])
    raw["analysis"] = analysis_dict(*gates)
    return AgentRolloutSpec.model_validate(raw)


def set_weights(p: Any) -> SetWeights:
    found: SetWeights = next(a for a in p.actions if isinstance(a, SetWeights))
    return found


def test_entering_a_shadow_step_asks_for_the_mirror_with_legacy_only() -> None:
    spec = shadow_spec()
    p = plan(spec, running(0, w(0)), observe(w(0)), T0)
    action = set_weights(p)
    assert (action.weights, action.mirror) == (w(0), MIRROR)
    assert "waiting for the route to mirror" in p.status.message


def test_the_step_ends_after_its_duration_and_pairs_and_the_mirror_goes_with_the_weight_change() -> None:
    spec = shadow_spec()
    shown = {"route_mirror": MIRROR, "shadow_pairs": 150, "gates": (result(Verdict.PASS, "agreement"),)}
    early = plan(spec, running(0, w(0)), observe(w(0), **shown), T0 + timedelta(seconds=30))
    assert early.status.current_step == 0 and not [a for a in early.actions if isinstance(a, SetWeights)]
    few = plan(
        spec, running(0, w(0)), observe(w(0), **{**shown, "shadow_pairs": 99}), T0 + timedelta(minutes=2)
    )
    assert few.status.current_step == 0 and "99/100" in few.status.message
    done = plan(spec, running(0, w(0)), observe(w(0), **shown), T0 + timedelta(minutes=2))
    assert (done.status.phase, done.status.current_step) == (Phase.PROGRESSING, 1)
    assert (set_weights(done).weights, set_weights(done).mirror) == (w(100), None)


def test_a_failing_agreement_gate_rolls_back_and_removes_only_the_mirror() -> None:
    spec = shadow_spec()
    bad = result(Verdict.FAIL, "agreement", value=0.7, legacy_value=0.95, samples=300, legacy_samples=60)
    p = plan(
        spec, running(0, w(0)), observe(w(0), route_mirror=MIRROR, gates=(bad,)), T0 + timedelta(seconds=20)
    )
    assert p.status.phase is Phase.ROLLED_BACK
    action = set_weights(p)
    assert (action.weights, action.mirror, action.reason) == (w(0), None, "GateFailed")
    evidence = p.status.history[-1].evidence[0]
    assert (evidence.value, evidence.legacy_value, evidence.samples, evidence.legacy_samples) == (
        0.7,
        0.95,
        300,
        60,
    )


def test_abort_and_an_invalid_spec_remove_the_mirror_too() -> None:
    spec = shadow_spec()
    aborted = plan(spec, running(0, w(0), abort=True), observe(w(0), route_mirror=MIRROR), T0)
    assert set_weights(aborted).mirror is None and aborted.status.phase is Phase.ROLLED_BACK
    broken = shadow_spec({"setWeight": 50}, {"setWeight": 10})
    shown = observe(w(0), route_mirror=MIRROR, problems=tuple(validate(broken)))
    failed = plan(broken, running(0, w(0)), shown, T0)
    assert failed.status.phase is Phase.FAILED and set_weights(failed).mirror is None


def test_no_mirror_while_the_candidate_cannot_answer() -> None:
    spec = shadow_spec()
    down = observe(
        w(0), candidate=observe().candidate.__class__("triage-agent", exists=True, available_replicas=0)
    )
    assert not [a for a in plan(spec, running(0, w(0)), down, T0).actions if isinstance(a, SetWeights)]


def test_the_write_ahead_record_carries_the_mirror() -> None:
    record = intent_for("r", running(0, w(0)), 7, MIRROR)
    decoded = decode(encode(record))
    assert decoded is not None and decoded.mirror == MIRROR
    plain = decode(encode(intent_for("r", running(0, w(0)), 7)))
    assert (
        plain is not None and plain.mirror is None and "mirror" not in encode(intent_for("r", running(), 1))
    )


def test_bad_shadow_specs_are_refused_naming_the_field() -> None:
    late = spec_dict(steps=[{"setWeight": 10}, {"shadow": {"percent": 20}}, {"setWeight": 100}])
    problems = validate(AgentRolloutSpec.model_validate(late))
    assert [p.field for p in problems] == ["spec.steps[1].shadow"]
    for percent in (0, 101):
        with pytest.raises(ValidationError, match=r"steps\.0\.shadow\.percent"):
            AgentRolloutSpec.model_validate(spec_dict(steps=[{"shadow": {"percent": percent}}]))
    counted = spec_dict(steps=[{"shadow": {"percent": 5, "minRequests": 10}}])
    assert [p.field for p in validate(AgentRolloutSpec.model_validate(counted))] == [
        "spec.steps[0].shadow.minRequests"
    ]


class Blocks:
    def __init__(self, values: dict[str, dict[tuple[str, str], float]]) -> None:
        self.values = values

    async def scalar(self, promql: str) -> float | None:
        raise AssertionError(promql)

    async def block(
        self,
        block: Any,
        max_age: float | None = None,
        keys: Any = None,
        stale_age: float | None = None,
        after: float | None = None,
        urgent: bool = False,
    ) -> Any:
        for key, values in self.values.items():
            if key in block.promql:
                return values
        return {}


def test_shadow_agreement_reads_the_comparator_and_its_noise_floor() -> None:
    spec = shadow_spec(compare={"twoProportion": True, "margin": 0.1}, minSamples=50)
    key = ("ns", CANDIDATE)
    counts = Blocks(
        {
            'agent_shadow_comparisons_total{outcome="match"}': {key: 210.0},
            'agent_shadow_comparisons_total{outcome=~"match|mismatch"}': {key: 300.0},
            'agent_shadow_noise_comparisons_total{outcome="match"}': {key: 57.0},
            'agent_shadow_noise_comparisons_total{outcome=~"match|mismatch"}': {key: 60.0},
        }
    )
    (gate,) = asyncio.run(measure_gates(spec, "ns", counts))
    assert gate.verdict is Verdict.FAIL, gate
    assert (gate.value, gate.samples, gate.legacy_value, gate.legacy_samples) == (0.7, 300, 0.95, 60)
    read = template_read(Template.SHADOW_AGREEMENT, MetricNames(), window="2m")
    assert 'outcome=~"match|mismatch"' in read.samples.promql


def test_shadow_agreement_holds_only_shadow_steps() -> None:
    spec = shadow_spec({"setWeight": 10}, {"setWeight": 100})
    # At setWeight 10 the comparator compares nothing: the agreement gate has no say there.
    p = plan(spec, running(1, w(10)), observe(w(10), gates=()), T0 + timedelta(seconds=30))
    assert p.status.current_step == 2, p.status.message
    # In the shadow step it holds until it passes.
    held = plan(
        spec, running(0, w(0)), observe(w(0), route_mirror=MIRROR, shadow_pairs=500), T0 + timedelta(hours=1)
    )
    assert held.status.current_step == 0 and "agreement" in held.status.message


def compare_step(compare: dict[str, Any]) -> dict[str, Any]:
    return spec_dict(steps=[{"shadow": {"percent": 5, "compare": compare}}, {"setWeight": 100}])


def test_a_shadow_steps_comparison_is_read_and_its_bad_forms_are_refused_naming_the_field() -> None:
    good = AgentRolloutSpec.model_validate(
        compare_step({"mode": "text", "fields": ["/answer"], "threshold": 0.7, "judgeURL": "https://j/x"})
    )
    compare = good.steps[0].shadow.compare if good.steps[0].shadow else None
    assert compare is not None and (compare.mode, compare.fields, compare.threshold) == (
        CompareMode.TEXT,
        ["/answer"],
        0.7,
    )
    assert compare.judge_url == "https://j/x" and validate(good) == []
    assert dump(good)["steps"][0]["shadow"]["compare"]["judgeURL"] == "https://j/x"  # as written
    # Cross-field: what a mode would silently ignore is refused (validation; the CRD's CEL says the same).
    for bad, field in (
        ({"mode": "exact", "fields": ["/answer"]}, "spec.steps[0].shadow.compare.fields"),
        ({"mode": "json", "threshold": 0.5}, "spec.steps[0].shadow.compare.threshold"),
    ):
        assert [p.field for p in validate(AgentRolloutSpec.model_validate(compare_step(bad)))] == [field]
    # Schema: bounds, the mode, and the judge's URL, each error at its own path.
    for bad, field in (
        ({"mode": "text", "threshold": 1.5}, "spec.steps[0].shadow.compare.threshold"),
        ({"mode": "fuzzy"}, "spec.steps[0].shadow.compare.mode"),
        ({"fields": ["a"]}, "spec.steps[0].shadow.compare.mode"),
        ({"mode": "json", "fields": [""]}, "spec.steps[0].shadow.compare.fields[0]"),
        ({"mode": "json", "judgeURL": "judge:80"}, "spec.steps[0].shadow.compare.judgeURL"),
    ):
        with pytest.raises(ValidationError) as refused:
            AgentRolloutSpec.model_validate(compare_step(bad))
        assert [p.field for p in spec_problems_from(refused.value)] == [field], bad


def test_the_crd_refuses_what_a_mode_ignores_with_cel_rules_naming_the_field() -> None:
    schema = openapi_schema(AgentRolloutSpec)
    shadow = schema["properties"]["steps"]["items"]["properties"]["shadow"]["properties"]["compare"]
    rules = {r["fieldPath"]: r["rule"] for r in shadow["x-kubernetes-validations"]}
    assert set(rules) == {".fields", ".threshold"}
    assert shadow["required"] == ["mode"]
    assert shadow["properties"]["judgeURL"]["pattern"].startswith("^https?")
