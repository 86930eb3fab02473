"""The HTTPRoute router: only two backendRefs' weights change; everything else stays as written."""

from __future__ import annotations

import copy
from typing import Any

import jsonpatch  # type: ignore[import-untyped]
import pytest

from agent_rollout.api import Weights
from agent_rollout.traffic.gatewayapi import GatewayAPIRouter, read_weights, weight_patch

ROUTER = GatewayAPIRouter(http_route="triage", legacy_backend="rules", candidate_backend="agent")


def route(legacy: int | None = 100, candidate: int | None = 0) -> dict[str, Any]:
    def ref(name: str, weight: int | None) -> dict[str, Any]:
        out: dict[str, Any] = {"name": name, "port": 80}
        if weight is not None:
            out["weight"] = weight
        return out

    return {
        "parentRefs": [{"name": "gw"}],
        "hostnames": ["triage.example.com"],
        "rules": [
            {
                "matches": [{"path": {"type": "PathPrefix", "value": "/admin"}}],
                "backendRefs": [ref("admin", 1)],
            },
            {
                "matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
                "filters": [
                    {
                        "type": "RequestHeaderModifier",
                        "requestHeaderModifier": {"add": [{"name": "x", "value": "y"}]},
                    }
                ],
                "backendRefs": [ref("rules", legacy), ref("agent", candidate), ref("mirror-sink", 0)],
            },
        ],
    }


def apply(spec: dict[str, Any], ops: list[dict[str, Any]]) -> dict[str, Any]:
    doc = jsonpatch.apply_patch({"spec": spec}, ops)
    return dict(doc["spec"])


def test_reads_percent_weights() -> None:
    assert read_weights(route(90, 10), ROUTER).weights == Weights(legacy=90, candidate=10)


def test_default_weight_is_one_per_gateway_api() -> None:
    assert read_weights(route(None, None), ROUTER).weights == Weights(legacy=50, candidate=50)


def test_missing_route_and_missing_backend_are_errors_naming_them() -> None:
    assert "not found" in (read_weights(None, ROUTER).error or "")
    spec = route()
    spec["rules"][1]["backendRefs"].pop(1)
    reading = read_weights(spec, ROUTER)
    assert reading.weights is None and "'agent'" in (reading.error or "")


def test_patch_changes_only_the_two_weights() -> None:
    before = route(100, 0)
    after = apply(before, weight_patch(before, ROUTER, Weights(legacy=75, candidate=25)))
    expected = copy.deepcopy(before)
    expected["rules"][1]["backendRefs"][0]["weight"] = 75
    expected["rules"][1]["backendRefs"][1]["weight"] = 25
    assert after == expected
    assert read_weights(after, ROUTER).weights == Weights(legacy=75, candidate=25)


def test_patch_adds_weights_that_were_left_to_default() -> None:
    before = route(None, None)
    after = apply(before, weight_patch(before, ROUTER, Weights(legacy=100, candidate=0)))
    assert read_weights(after, ROUTER).weights == Weights(legacy=100, candidate=0)


def test_patch_fails_when_the_route_was_reordered_meanwhile() -> None:
    before = route(100, 0)
    ops = weight_patch(before, ROUTER, Weights(legacy=50, candidate=50))
    reordered = copy.deepcopy(before)
    refs = reordered["rules"][1]["backendRefs"]
    refs[0], refs[1] = refs[1], refs[0]
    with pytest.raises(jsonpatch.JsonPatchTestFailed):
        apply(reordered, ops)


def test_rules_that_disagree_read_as_drift() -> None:
    spec = route(90, 10)
    spec["rules"].append(copy.deepcopy(spec["rules"][1]))
    spec["rules"][2]["backendRefs"][1]["weight"] = 50
    assert read_weights(spec, ROUTER).weights is None
    healed = apply(spec, weight_patch(spec, ROUTER, Weights(legacy=90, candidate=10)))
    assert read_weights(healed, ROUTER).weights == Weights(legacy=90, candidate=10)
