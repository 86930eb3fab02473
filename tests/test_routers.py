"""Traffic routers through their protocol and registry (traffic/router.py, traffic/registry.py).

The proof that a second router is one module plus its tests: `WeightSplit` below is a made-up CRD with
two weight fields, defined only here, registered for the test, and driven by the real Reconciler
without any other operator module knowing it.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import pytest
from pydantic import BaseModel, ConfigDict, ValidationError
from pydantic.alias_generators import to_camel

from agent_rollout import api, crdgen
from agent_rollout.api import Weights
from agent_rollout.domain import SpecProblem
from agent_rollout.traffic import gatewayapi, registry
from agent_rollout.traffic.router import Resource, TrafficReading, TrafficRouter
from agent_rollout.traffic.value import Mirror, MirrorReading, TrafficState
from agent_rollout.validation import validate
from tests.specs import CANDIDATE, LEGACY, ROUTE, analysis_dict, spec_dict
from tests.test_reconcile import ERROR_RATE, NAME, NS, World, route_object

SPLIT = "triage-split"


class WeightSplitConfig(BaseModel):
    """spec.traffic.weightSplit: the split object and the Services it splits between."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")
    split: str
    legacy_service: str
    candidate_service: str


class WeightSplit:
    """A router for `WeightSplit` objects: spec {legacyWeight, candidateWeight}, nothing else."""

    key = "weightSplit"
    config_model = WeightSplitConfig
    resource = Resource("split.example.com", "v1", "weightsplits", "WeightSplit")
    object_field = "split"
    supports_mirror = False

    def object_name(self, config: WeightSplitConfig) -> str:
        return config.split

    def backends(self, config: WeightSplitConfig) -> tuple[str, str]:
        return config.legacy_service, config.candidate_service

    def read(
        self,
        obj_spec: dict[str, Any] | None,
        config: WeightSplitConfig,
        mirrors: tuple[Mirror, ...] = (),
        others: tuple[Mirror, ...] = (),
        namespace: str | None = None,
    ) -> TrafficReading:
        if obj_spec is None:
            return TrafficReading(None, f"WeightSplit {config.split} not found")
        legacy, candidate = obj_spec.get("legacyWeight"), obj_spec.get("candidateWeight")
        if not isinstance(legacy, int) or not isinstance(candidate, int) or legacy + candidate != 100:
            return TrafficReading(None)
        return TrafficReading(Weights(legacy=legacy, candidate=candidate), mirror=MirrorReading())

    def patch(
        self,
        obj_spec: dict[str, Any],
        config: WeightSplitConfig,
        want: TrafficState,
        mirrors: tuple[Mirror, ...] = (),
        namespace: str | None = None,
    ) -> list[dict[str, Any]]:
        return [
            {"op": "add", "path": "/spec/legacyWeight", "value": want.weights.legacy},
            {"op": "add", "path": "/spec/candidateWeight", "value": want.weights.candidate},
        ]

    def problems(self, config: WeightSplitConfig, path: str) -> list[SpecProblem]:
        if config.legacy_service == config.candidate_service:
            return [SpecProblem(f"{path}.candidateService", "the same Service as legacyService")]
        return []


@pytest.fixture
def weight_split() -> Iterator[TrafficRouter]:
    with registry.registered(WeightSplit()) as router:
        yield router


def split_spec(**overrides: Any) -> dict[str, Any]:
    traffic = {"weightSplit": {"split": SPLIT, "legacyService": LEGACY, "candidateService": CANDIDATE}}
    return spec_dict(traffic=traffic, **overrides)


def split_object(legacy: int = 100, candidate: int = 0) -> dict[str, Any]:
    return {
        "apiVersion": "split.example.com/v1",
        "kind": "WeightSplit",
        "metadata": {"namespace": NS, "name": SPLIT},
        "spec": {"legacyWeight": legacy, "candidateWeight": candidate},
    }


def test_a_second_router_is_one_module_driven_by_the_reconciler(weight_split: TrafficRouter) -> None:
    steps = [{"setWeight": 20}, {"setWeight": 50}, {"pause": {}}]  # the pause waits for a human
    body = {
        "apiVersion": f"{api.GROUP}/{api.VERSION}",
        "kind": api.KIND,
        "metadata": {"namespace": NS, "name": NAME, "generation": 1},
        "spec": split_spec(steps=steps, analysis=analysis_dict(ERROR_RATE, interval="30s", minSamples=100)),
    }
    world = World(body)
    untouched = copy.deepcopy(world.kube.routes[(NS, ROUTE)])  # an HTTPRoute of the same name is not it
    world.kube.routes[(NS, SPLIT)] = split_object()

    world.tick()
    assert world.kube.routes[(NS, SPLIT)]["spec"] == {"legacyWeight": 80, "candidateWeight": 20}
    assert world.kube.route_resources == [weight_split.resource]
    assert world.condition("TrafficRouted")["reason"] == "WeightsApplied"  # read back through the router
    seen = [world.kube.routes[(NS, SPLIT)]["spec"]]
    for _ in range(10):
        world.tick(advance=60.0)
        if world.kube.routes[(NS, SPLIT)]["spec"] != seen[-1]:
            seen.append(world.kube.routes[(NS, SPLIT)]["spec"])
        if world.status["currentStep"] == 2:
            break
    assert [(s["legacyWeight"], s["candidateWeight"]) for s in seen] == [(80, 20), (50, 50)]
    assert world.status["weights"] == {"legacy": 50, "candidate": 50}

    # Someone edits the split: the router reads the drift back and the operator writes the weights again.
    world.kube.routes[(NS, SPLIT)]["spec"] = {"legacyWeight": 30, "candidateWeight": 70}
    world.tick()
    assert world.kube.routes[(NS, SPLIT)]["spec"] == {"legacyWeight": 50, "candidateWeight": 50}
    assert set(world.kube.route_resources) == {weight_split.resource}
    assert world.kube.routes[(NS, ROUTE)] == untouched


def test_a_router_that_cannot_mirror_refuses_shadow_steps_naming_the_field(
    weight_split: TrafficRouter,
) -> None:
    spec = api.parse_spec(
        split_spec(steps=[{"shadow": {"percent": 10, "duration": "5m"}}, {"setWeight": 20}])
    )
    found = validate(spec)
    assert (
        SpecProblem("spec.steps[0].shadow", "the router spec.traffic.weightSplit cannot mirror requests")
        in found
    )


def test_a_routers_own_rules_name_its_fields(weight_split: TrafficRouter) -> None:
    traffic = {"weightSplit": {"split": SPLIT, "legacyService": LEGACY, "candidateService": LEGACY}}
    found = validate(api.parse_spec(spec_dict(traffic=traffic)))
    assert [p.field for p in found] == ["spec.traffic.weightSplit.candidateService"]


def errors(raw: dict[str, Any]) -> list[tuple[str, str]]:
    with pytest.raises(ValidationError) as caught:
        api.parse_spec(raw)
    return [(".".join(str(p) for p in e["loc"]), e["msg"]) for e in caught.value.errors()]


def test_exactly_one_registered_router_and_its_errors_keep_their_path(weight_split: TrafficRouter) -> None:
    both = {
        "gatewayAPI": {"httpRoute": ROUTE, "legacyBackend": LEGACY, "candidateBackend": CANDIDATE},
        "weightSplit": {"split": SPLIT, "legacyService": LEGACY, "candidateService": CANDIDATE},
    }
    message = "Value error, spec.traffic needs exactly one router (gatewayAPI, weightSplit)"
    assert errors(spec_dict(traffic=both)) == [("traffic", message)]
    assert errors(spec_dict(traffic={})) == [("traffic", message)]
    assert errors(spec_dict(traffic={"linkerd": {}})) == [
        ("traffic.linkerd", "Extra inputs are not permitted")
    ]
    missing = {"weightSplit": {"split": SPLIT, "legacyService": LEGACY}}
    assert errors(spec_dict(traffic=missing)) == [("traffic.weightSplit.candidateService", "Field required")]


def test_an_unregistered_router_is_refused() -> None:
    traffic = {"weightSplit": {"split": SPLIT, "legacyService": LEGACY, "candidateService": CANDIDATE}}
    assert errors(spec_dict(traffic=traffic)) == [("traffic.weightSplit", "Extra inputs are not permitted")]


def test_the_crd_schema_and_rule_come_from_the_registry(weight_split: TrafficRouter) -> None:
    traffic = crdgen.crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    schema = traffic["properties"]["traffic"]
    assert set(schema["properties"]) == {"gatewayAPI", "weightSplit"}
    assert schema["properties"]["weightSplit"]["required"] == ["split", "legacyService", "candidateService"]
    [rule] = schema["x-kubernetes-validations"]
    assert rule["rule"] == "(has(self.gatewayAPI) ? 1 : 0) + (has(self.weightSplit) ? 1 : 0) == 1"
    assert rule["message"] == "spec.traffic needs exactly one router (gatewayAPI, weightSplit)"


def test_the_spec_round_trips_through_its_router_section() -> None:
    raw = spec_dict()
    assert api.parse_spec(raw).traffic.model_dump(by_alias=True) == raw["traffic"]
    assert registry.routed_object(raw["traffic"]) == (gatewayapi.ROUTER, ROUTE)
    assert registry.routed_object({"gatewayAPI": {"httpRoute": 3}}) is None


# ---------------------------------------------------------------- a mirror we did not write

COMPARATOR = Mirror("agent-rollout-comparator", 8080, 20)


def shadow_world(filters: list[dict[str, Any]]) -> World:
    route = route_object()
    route["spec"]["rules"][0]["filters"] = filters
    body = {
        "apiVersion": f"{api.GROUP}/{api.VERSION}",
        "kind": api.KIND,
        "metadata": {"namespace": NS, "name": NAME, "generation": 1},
        "spec": spec_dict(steps=[{"shadow": {"percent": 20, "duration": "10m"}}, {"setWeight": 30}]),
    }
    return World(body, route)


def filters(world: World) -> list[dict[str, Any]]:
    return list(world.kube.routes[(NS, ROUTE)]["spec"]["rules"][0].get("filters") or [])


def test_an_identical_mirror_the_operator_did_not_write_is_neither_adopted_nor_doubled() -> None:
    theirs = gatewayapi.mirror_filter(COMPARATOR)
    world = shadow_world([theirs])
    for _ in range(3):
        world.tick()
        assert filters(world) == [theirs]  # not removed, and no second copy beside it
    routed = world.condition("TrafficRouted")
    assert routed["status"] == "False" and routed["reason"] == "MirrorConflict"
    assert f"HTTPRoute {ROUTE} already has a RequestMirror filter" in routed["message"]
    assert world.status["phase"] == "Progressing" and world.status["currentStep"] == 0
    assert "did not write" in world.status["message"]

    world.kube.routes[(NS, ROUTE)]["spec"]["rules"][0]["filters"] = []  # the user removes theirs
    world.tick()
    assert filters(world) == [gatewayapi.mirror_filter(COMPARATOR)]  # now ours, recorded as ours
    assert world.condition("TrafficRouted")["reason"] == "WeightsApplied"


def test_an_identical_mirror_before_the_shadow_step_is_left_alone() -> None:
    """Before any shadow step nothing of ours should mirror: someone else's filter is not removed."""
    theirs = gatewayapi.mirror_filter(COMPARATOR)
    route = route_object()
    route["spec"]["rules"][0]["filters"] = [theirs]
    steps = [
        {"pause": {"duration": "10m"}},
        {"shadow": {"percent": 20, "duration": "10m"}},
        {"setWeight": 30},
    ]
    body = {
        "apiVersion": f"{api.GROUP}/{api.VERSION}",
        "kind": api.KIND,
        "metadata": {"namespace": NS, "name": NAME, "generation": 1},
        "spec": spec_dict(steps=steps),
    }
    world = World(body, route)
    for _ in range(3):
        world.tick()
        assert filters(world) == [theirs]
    assert world.status["phase"] == "Progressing" and world.status["currentStep"] == 0
