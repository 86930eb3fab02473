"""Traffic routers through their protocol and registry (traffic/router.py, traffic/registry.py).

The proof that a second router is one module plus its tests: `WeightSplit` below is a made-up CRD with
two weight fields, defined only here, registered for the test, and driven by the real Reconciler and
Controller (its own informer, beside an HTTPRoute of the same name) without any other operator module
knowing it.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import queue
from collections import defaultdict
from collections.abc import Callable, Iterator
from typing import Any

import jsonpatch
import pytest
from pydantic import BaseModel, ConfigDict, ValidationError
from pydantic.alias_generators import to_camel

from agent_rollout import api, crdgen
from agent_rollout.api import Weights
from agent_rollout.controller import Controller
from agent_rollout.domain import SpecProblem
from agent_rollout.kube import Conflict, Kind
from agent_rollout.reconcile import Reconciler
from agent_rollout.sentinel import Sentinel
from agent_rollout.traffic import gatewayapi, registry
from agent_rollout.traffic.router import Resource, TrafficReading, TrafficRouter
from agent_rollout.traffic.value import Mirror, MirrorReading, TrafficState
from agent_rollout.validation import validate
from tests.fakes import EventLog, FakeClock
from tests.specs import CANDIDATE, LEGACY, ROUTE, analysis_dict, spec_dict
from tests.test_deletion import FinalizingKube
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


# ---------------------------------------------------------------- through the real controller


def selected(kind: Kind, obj: dict[str, Any]) -> bool:
    """Whether an object is in a kind's field selection (`a.b=value,...`, as the apiserver compares a
    CRD's selectable fields: booleans as true/false)."""
    for term in (kind.field_selector or "").split(","):
        if not term:
            continue
        path, _, wanted = term.partition("=")
        value: Any = obj
        for part in path.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        if (str(value).lower() if isinstance(value, bool) else value) != wanted:
            return False
    return True


class Cluster:
    """The API server behind a fake ListWatchClient: objects by (plural, namespace, name); every write
    and edit comes back through the watch of its kind, as it would from a real apiserver."""

    def __init__(self) -> None:
        self.objects: dict[str, dict[tuple[str, str], dict[str, Any]]] = defaultdict(dict)
        self._events: dict[Kind, queue.Queue[dict[str, Any]]] = {}
        self._version = 100

    def put(self, plural: str, obj: dict[str, Any]) -> None:
        self._version += 1
        obj["metadata"]["resourceVersion"] = str(self._version)
        meta = obj["metadata"]
        self.objects[plural][(meta["namespace"], meta["name"])] = obj
        for kind, events in list(self._events.items()):
            if kind.plural == plural:  # as the apiserver: an object leaving a selection is DELETED
                kept = selected(kind, obj)
                events.put({"type": "MODIFIED" if kept else "DELETED", "object": copy.deepcopy(obj)})

    def spec(self, plural: str, name: str) -> dict[str, Any]:
        return copy.deepcopy(self.objects[plural][(NS, name)]["spec"])

    # -- kube.ListWatchClient

    def list_page(self, kind: Kind, namespace: str | None, limit: int, token: str | None) -> dict[str, Any]:
        self._events.setdefault(kind, queue.Queue())  # each kind (and selection) watched hears every change
        items = [
            copy.deepcopy(o)
            for (ns, _), o in self.objects[kind.plural].items()
            if namespace in (None, ns) and selected(kind, o)
        ]
        return {"metadata": {"resourceVersion": str(self._version)}, "items": items}

    def watch(
        self, kind: Kind, namespace: str | None, version: str, timeout_s: int
    ) -> Iterator[dict[str, Any]]:
        while True:
            try:
                yield self._events[kind].get(timeout=0.2)
            except queue.Empty:
                return  # the server ends a quiet watch; the informer watches again (or stops)


class ClusterKube(FinalizingKube):
    """The operator's writes, to the cluster's objects: routed objects by their router's resource."""

    def __init__(self, cluster: Cluster) -> None:
        super().__init__(rollouts=cluster.objects[api.PLURAL])
        self.cluster = cluster

    def _echo(self, namespace: str, name: str) -> None:
        self.cluster.put(api.PLURAL, self.rollouts[(namespace, name)])

    async def add_finalizer(self, namespace: str, name: str, *args: Any) -> None:
        await super().add_finalizer(namespace, name, *args)
        self._echo(namespace, name)

    async def patch_rollout_status(
        self, namespace: str, name: str, patch: dict[str, Any], priority: int = 2
    ) -> dict[str, Any]:
        stored = await super().patch_rollout_status(namespace, name, patch)
        self._echo(namespace, name)
        return stored

    async def patch_route(
        self, resource: Resource, namespace: str, name: str, ops: list[dict[str, Any]]
    ) -> None:
        self.route_resources.append(resource)
        stored = self.cluster.objects[resource.plural][(namespace, name)]
        try:
            patched = jsonpatch.apply_patch(stored, ops)
        except (jsonpatch.JsonPatchTestFailed, jsonpatch.JsonPatchConflict) as e:
            raise Conflict(f"{resource.kind} {namespace}/{name} changed while patching: {e}") from e
        self.cluster.put(resource.plural, patched)


def deployment(name: str) -> dict[str, Any]:
    template = {"spec": {"containers": [{"name": "agent", "image": f"{name}:1"}]}}
    return {
        "metadata": {"namespace": NS, "name": name},
        "spec": {"replicas": 1, "template": template},
        "status": {"availableReplicas": 1, "readyReplicas": 1},
    }


def rollout(name: str, created: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": f"{api.GROUP}/{api.VERSION}",
        "kind": api.KIND,
        "metadata": {"namespace": NS, "name": name, "generation": 1, "creationTimestamp": created},
        "spec": spec,
    }


async def until(condition: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, f"not reached within {timeout} s: {what}"
        await asyncio.sleep(0.02)


def test_a_second_routers_resource_is_watched_and_routed_apart_from_an_httproute_of_the_same_name(
    weight_split: TrafficRouter, caplog: pytest.LogCaptureFixture
) -> None:
    """Through the real Controller: the WeightSplit resource gets its own informer; an older rollout
    owning an HTTPRoute named like the split does not own the split; a change of either object wakes
    only the rollout routing through it."""
    cluster = Cluster()
    for name in (LEGACY, CANDIDATE):
        cluster.put("deployments", deployment(name))
    same_name = route_object()
    same_name["metadata"]["name"] = SPLIT
    cluster.put("httproutes", same_name)
    cluster.put("weightsplits", split_object())
    gateway_traffic = {
        "gatewayAPI": {"httpRoute": SPLIT, "legacyBackend": LEGACY, "candidateBackend": CANDIDATE}
    }
    pause = {"pause": {}}  # waits for a human: only a wake-up reconciles it again within the test
    cluster.put(
        api.PLURAL,
        rollout(
            "older",
            "2026-01-01T00:00:00Z",
            spec_dict(traffic=gateway_traffic, steps=[{"setWeight": 10}, pause]),
        ),
    )
    cluster.put(
        api.PLURAL, rollout(NAME, "2026-02-01T00:00:00Z", split_spec(steps=[{"setWeight": 20}, pause]))
    )
    kube = ClusterKube(cluster)
    reconciler = Reconciler(
        kube=kube, gateway_for=lambda url, timeout: None, events=EventLog(), clock=FakeClock()
    )
    controller = Controller(reconciler, Sentinel(clock=FakeClock()), kube, cluster, workers=2)  # type: ignore[arg-type]

    def status(name: str) -> dict[str, Any]:
        return dict(cluster.objects[api.PLURAL][(NS, name)].get("status") or {})

    def weights(plural: str) -> tuple[int, int]:
        spec = cluster.spec(plural, SPLIT)
        if plural == "weightsplits":
            return spec["legacyWeight"], spec["candidateWeight"]
        legacy, candidate = spec["rules"][0]["backendRefs"]
        return legacy["weight"], candidate["weight"]

    def paused(name: str) -> bool:
        return status(name).get("currentStep") == 1 and controller.scheduler.pending() == 0

    async def scenario() -> None:
        with caplog.at_level(logging.INFO, logger="agent_rollout.controller"):
            await controller.run()
        try:
            assert set(controller.routes) == {gatewayapi.ROUTER.resource, weight_split.resource}
            await until(lambda: paused(NAME) and paused("older"), "both rollouts in their pause")
            assert weights("weightsplits") == (80, 20) and weights("httproutes") == (90, 10)
            assert status(NAME)["weights"] == {"legacy": 80, "candidate": 20}  # read back from the split
            assert set(kube.route_resources) == {gatewayapi.ROUTER.resource, weight_split.resource}

            # Someone edits the split: its watch wakes its rollout, not a timer (30 s away, no analysis).
            before = len(kube.route_resources)
            edited = copy.deepcopy(cluster.objects["weightsplits"][(NS, SPLIT)])
            edited["spec"] = {"legacyWeight": 30, "candidateWeight": 70}
            cluster.put("weightsplits", edited)
            await until(lambda: weights("weightsplits") == (80, 20), "the split written back")
            assert kube.route_resources[before:] == [weight_split.resource]  # the HTTPRoute is not touched

            # Someone edits the HTTPRoute of the same name: the rollout owning it writes it back alone.
            edited = copy.deepcopy(cluster.objects["httproutes"][(NS, SPLIT)])
            edited["spec"]["rules"][0]["backendRefs"][1]["weight"] = 0
            cluster.put("httproutes", edited)
            await until(lambda: weights("httproutes") == (90, 10), "the HTTPRoute written back")
            assert weights("weightsplits") == (80, 20)
        finally:
            await controller.stop()

    asyncio.run(scenario())
    assert "watching 2 AgentRollouts, 2 Deployments, 1 HTTPRoutes, 1 WeightSplits" in caplog.text
