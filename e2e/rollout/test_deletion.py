"""Deleting an AgentRollout mid-rollout: traffic goes to legacy before the deletion completes.

The operator's finalizer (deletion.py) holds the deletion until the route sends all traffic to legacy,
also while the operator is down: the deletion waits and completes when it is back. With
`spec.onDelete: keepWeights` the route is left as it is. The Deployments are never touched.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from kubernetes import client

from agent_rollout import api
from agent_rollout.deletion import FINALIZER
from e2e.rollout.scene import CANDIDATE, LEGACY, OperatorProcess, Scene, wait_until

ERROR_GATE = {"name": "error-rate", "template": "errorRate", "max": 0.05, "window": "30s"}
STEPS: list[dict[str, Any]] = [{"setWeight": 30}, {"pause": {}}, {"setWeight": 100}]


def paused_at_30(s: Scene, name: str, **spec: Any) -> None:
    manifest = s.rollout_manifest(name, steps=STEPS, minSamples=5, gates=[ERROR_GATE])
    manifest["spec"].update(spec)
    s.apply(manifest)
    s.wait_for_phase(name, "Paused", timeout_s=60)
    assert s.route_weights() == {LEGACY: 70, CANDIDATE: 30}
    assert s.rollout(name)["metadata"]["finalizers"] == [FINALIZER]


def delete(s: Scene, name: str) -> None:
    s.kube.custom.delete_namespaced_custom_object(api.GROUP, api.VERSION, s.namespace, api.PLURAL, name)


def gone(s: Scene, name: str) -> bool:
    try:
        s.rollout(name)
    except client.ApiException as e:
        if e.status == 404:
            return True
        raise
    return False


def replicas(s: Scene) -> dict[str, Any]:
    return {
        n: s.kube.apps.read_namespaced_deployment(n, s.namespace).spec.replicas for n in (LEGACY, CANDIDATE)
    }


def test_deleting_a_rollout_mid_rollout_sends_all_traffic_to_legacy_before_it_is_gone(
    scene: Callable[..., Scene],
) -> None:
    s = scene(rps=10)
    paused_at_30(s, "deleted")
    before = replicas(s)
    delete(s, "deleted")
    wait_until("the rollout gone", lambda: gone(s, "deleted"), 30)
    assert s.route_weights() == {LEGACY: 100, CANDIDATE: 0}
    assert replicas(s) == before  # the Deployments are never scaled, emptied or deleted
    assert "Deleted" in s.event_reasons("deleted")


def test_a_deletion_while_the_operator_is_down_waits_and_completes_when_it_returns(
    scene: Callable[..., Scene], operator: OperatorProcess
) -> None:
    s = scene(rps=10)
    paused_at_30(s, "orphaned")
    operator.stop()
    try:
        delete(s, "orphaned")
        time.sleep(3)  # nothing may happen meanwhile: there is nobody to send traffic to legacy
        waiting = s.rollout("orphaned")
        assert waiting["metadata"].get("deletionTimestamp") and waiting["metadata"]["finalizers"] == [
            FINALIZER
        ]
        assert s.route_weights() == {LEGACY: 70, CANDIDATE: 30}
    finally:
        operator.start()
    wait_until("the rollout gone once the operator is back", lambda: gone(s, "orphaned"), 60)
    assert s.route_weights() == {LEGACY: 100, CANDIDATE: 0}


def test_on_delete_keep_weights_leaves_the_route_as_it_is(scene: Callable[..., Scene]) -> None:
    s = scene(rps=10)
    paused_at_30(s, "kept", onDelete="keepWeights")
    delete(s, "kept")
    wait_until("the rollout gone", lambda: gone(s, "kept"), 30)
    assert s.route_weights() == {LEGACY: 70, CANDIDATE: 30}
