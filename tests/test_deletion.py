"""Deleting a rollout: the rule (deletion.on_deletion) and the finalizer's shell against in-memory fakes."""

from __future__ import annotations

import asyncio
import copy

import jsonpatch

from agent_rollout.api import OnDelete, Phase, Weights
from agent_rollout.deletion import ALL_TO_LEGACY, FINALIZER, Finalizer, on_deletion
from agent_rollout.domain import DeploymentState, RouteIntent
from agent_rollout.intent import ANNOTATION, encode
from agent_rollout.kube import Conflict
from agent_rollout.traffic import gatewayapi
from agent_rollout.traffic.value import Mirror
from tests.fakes import EventLog, FakeKube
from tests.specs import CANDIDATE, LEGACY, ROUTE, spec_dict
from tests.test_reconcile import NS, route_object

NAME = "ticket-triage"
MID = Weights(legacy=70, candidate=30)


def test_a_rollout_deleted_mid_rollout_sends_all_traffic_to_legacy_first() -> None:
    decision = on_deletion(None, MID, route_found=True, legacy_exists=True, claimed_by=None)
    assert decision.weights == ALL_TO_LEGACY
    decision = on_deletion(
        OnDelete.ROUTE_TO_LEGACY, MID, route_found=True, legacy_exists=True, claimed_by=None
    )
    assert decision.weights == ALL_TO_LEGACY


def test_keep_weights_or_nothing_to_move_releases_at_once() -> None:
    cases = [
        (OnDelete.KEEP_WEIGHTS, MID, True, True, None, "keepWeights"),
        (None, ALL_TO_LEGACY, True, True, None, "already on legacy"),
        (None, None, False, True, None, "no route"),
        (None, MID, True, True, "older", "rollout older's"),
        (None, MID, True, False, None, "legacy Deployment does not exist"),  # never route to nothing
    ]
    for on_delete, weights, found, legacy, claimed, why in cases:
        decision = on_deletion(on_delete, weights, found, legacy, claimed)
        assert decision.weights is None and why in decision.message, decision


class FinalizingKube(FakeKube):
    async def add_finalizer(
        self, namespace: str, name: str, finalizers: list[str], resource_version: str, finalizer: str
    ) -> None:
        stored = self.rollouts[(namespace, name)]
        if stored["metadata"]["resourceVersion"] != resource_version:
            raise Conflict("changed")
        stored["metadata"]["finalizers"] = [*finalizers, finalizer]
        stored["metadata"]["resourceVersion"] = self._next_version()

    async def remove_finalizer(
        self, namespace: str, name: str, finalizers: list[str], finalizer: str
    ) -> bool:
        stored = self.rollouts[(namespace, name)]
        at = f"/metadata/finalizers/{finalizers.index(finalizer)}"
        ops = [{"op": "test", "path": at, "value": finalizer}, {"op": "remove", "path": at}]
        self.rollouts[(namespace, name)] = jsonpatch.apply_patch(stored, ops)
        return True


def deployments(namespace: str, name: str) -> DeploymentState | None:
    return DeploymentState(name, exists=True) if name in (LEGACY, CANDIDATE) else None


def scene(candidate: int, on_delete: str | None = None) -> tuple[FinalizingKube, Finalizer, EventLog]:
    kube = FinalizingKube()
    spec = spec_dict(steps=[{"setWeight": 30}, {"setWeight": 100}])
    if on_delete is not None:
        spec["onDelete"] = on_delete
    kube.create_rollout({"metadata": {"namespace": NS, "name": NAME, "generation": 1}, "spec": spec})
    kube.routes[(NS, ROUTE)] = route_object(100 - candidate, candidate)
    events = EventLog()
    return kube, Finalizer(kube, events), events


def release(kube: FinalizingKube, finalizer: Finalizer) -> float | None:
    return asyncio.run(
        finalizer.release(
            kube.rollout(NS, NAME),
            deployments,
            lambda resource, ns, name: kube.route_view(ns, name),
            lambda resource, ns, r: NAME,
        )
    )


def weights(kube: FakeKube) -> list[int]:
    spec = kube.route_spec(NS, ROUTE)
    assert spec is not None
    return [ref["weight"] for ref in spec["rules"][0]["backendRefs"]]


def test_the_finalizer_is_released_only_after_the_route_sends_all_traffic_to_legacy() -> None:
    kube, finalizer, events = scene(candidate=30)
    kube.routes[(NS, ROUTE)]["metadata"]["annotations"] = {ANNOTATION: '{"rollout":"ticket-triage"}'}
    asyncio.run(finalizer.add(kube.rollout(NS, NAME)))
    assert kube.rollout(NS, NAME)["metadata"]["finalizers"] == [FINALIZER]

    kube.route_refusal = Conflict("someone edited the route")
    assert release(kube, finalizer) is not None  # not released: traffic is still on the candidate
    assert kube.rollout(NS, NAME)["metadata"]["finalizers"] == [FINALIZER]
    assert weights(kube) == [70, 30]

    kube.route_refusal = None
    assert release(kube, finalizer) is None
    assert weights(kube) == [100, 0]
    assert kube.rollout(NS, NAME)["metadata"]["finalizers"] == []
    assert events.reasons() == ["Deleted"]


def test_the_deleted_rollouts_write_ahead_record_leaves_the_route_with_it() -> None:
    kube, finalizer, _ = scene(candidate=30)
    record = '{"rollout":"ticket-triage","sequence":7,"phase":"Progressing","step":0,"weights":[70,30]}'
    kube.routes[(NS, ROUTE)]["metadata"]["annotations"] = {ANNOTATION: record, "team": "support"}
    asyncio.run(finalizer.add(kube.rollout(NS, NAME)))
    assert release(kube, finalizer) is None
    # A rollout created again under this name must not resume from the deleted one's record.
    assert kube.routes[(NS, ROUTE)]["metadata"]["annotations"] == {"team": "support"}


def test_keep_weights_releases_without_touching_the_route() -> None:
    kube, finalizer, _ = scene(candidate=30, on_delete="keepWeights")
    asyncio.run(finalizer.add(kube.rollout(NS, NAME)))
    assert release(kube, finalizer) is None
    assert weights(kube) == [70, 30] and kube.writes_of("route") == []
    assert kube.rollout(NS, NAME)["metadata"]["finalizers"] == []


def test_someone_elses_finalizer_is_kept() -> None:
    kube, finalizer, _ = scene(candidate=0)
    kube.edit_rollout(NS, NAME, lambda r: r["metadata"].__setitem__("finalizers", ["example.com/backup"]))
    asyncio.run(finalizer.add(kube.rollout(NS, NAME)))
    assert kube.rollout(NS, NAME)["metadata"]["finalizers"] == ["example.com/backup", FINALIZER]
    assert release(kube, finalizer) is None
    assert kube.rollout(NS, NAME)["metadata"]["finalizers"] == ["example.com/backup"]


def test_a_finalizer_added_on_a_stale_read_is_a_conflict_not_an_overwrite() -> None:
    kube, finalizer, _ = scene(candidate=0)
    stale = kube.rollout(NS, NAME)
    kube.edit_rollout(NS, NAME, lambda r: r["metadata"].__setitem__("finalizers", ["example.com/backup"]))
    try:
        asyncio.run(finalizer.add(stale))
    except Conflict:
        pass
    else:
        raise AssertionError("a stale finalizer list was written over a newer one")
    assert kube.rollout(NS, NAME)["metadata"]["finalizers"] == ["example.com/backup"]


def shadow_scene(on_delete: str | None) -> tuple[FinalizingKube, Finalizer]:
    """Deleted during a shadow step: the route mirrors to the comparator, beside a user's own filter."""
    kube, finalizer, _ = scene(candidate=0, on_delete=on_delete)
    stored = kube.rollouts[(NS, NAME)]
    shadow = {"shadow": {"percent": 20, "duration": "10m"}}
    stored["spec"]["steps"] = [shadow, {"setWeight": 30}]
    rule = kube.routes[(NS, ROUTE)]["spec"]["rules"][0]
    ours = Mirror("agent-rollout-comparator", 8080, 20)
    rule["filters"] = [USER_FILTER, gatewayapi.mirror_filter(ours)]
    # The write-ahead record the operator writes in the same patch as its filter: what makes it ours.
    record = RouteIntent(
        NAME, 3, Phase.PROGRESSING, 0, Weights(legacy=100, candidate=0), None, None, "", "", ours
    )
    kube.routes[(NS, ROUTE)]["metadata"]["annotations"] = {ANNOTATION: encode(record)}
    asyncio.run(finalizer.add(kube.rollout(NS, NAME)))
    return kube, finalizer


def test_a_mirror_the_operator_did_not_write_stays_when_the_rollout_is_deleted() -> None:
    """Identical to a shadow step's, but no write-ahead record of ours names it: someone else's."""
    kube, finalizer = shadow_scene(None)
    del kube.routes[(NS, ROUTE)]["metadata"]["annotations"]
    filters = copy.deepcopy(kube.routes[(NS, ROUTE)]["spec"]["rules"][0]["filters"])
    assert release(kube, finalizer) is None
    spec = kube.route_spec(NS, ROUTE)
    assert spec is not None and spec["rules"][0]["filters"] == filters
    assert kube.rollout(NS, NAME)["metadata"]["finalizers"] == []


USER_FILTER = {
    "type": "RequestHeaderModifier",
    "requestHeaderModifier": {"set": [{"name": "x", "value": "1"}]},
}


def test_a_rollout_deleted_in_a_shadow_step_takes_its_mirror_and_only_it_with_it() -> None:
    for on_delete in (None, "keepWeights"):
        kube, finalizer = shadow_scene(on_delete)
        assert release(kube, finalizer) is None
        spec = kube.route_spec(NS, ROUTE)
        assert spec is not None and spec["rules"][0]["filters"] == [USER_FILTER], on_delete
        assert weights(kube) == [100, 0]
        assert kube.rollout(NS, NAME)["metadata"]["finalizers"] == []


def test_a_route_whose_annotations_are_null_does_not_stop_the_deletion() -> None:
    kube, finalizer, _ = scene(candidate=30)
    kube.routes[(NS, ROUTE)]["metadata"]["annotations"] = None  # as `kubectl edit` can leave it
    asyncio.run(finalizer.add(kube.rollout(NS, NAME)))
    assert release(kube, finalizer) is None
    assert weights(kube) == [100, 0]
