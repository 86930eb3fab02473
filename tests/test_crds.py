"""The CRD in crds/ is generated from the pydantic models; these tests keep the two honest."""

from __future__ import annotations

from typing import Any

import yaml

from agent_rollout import crdgen


def _walk(node: Any, path: str = "") -> list[tuple[str, dict[str, Any]]]:
    out: list[tuple[str, dict[str, Any]]] = []
    if isinstance(node, dict):
        out.append((path, node))
        for key, value in node.items():
            out.extend(_walk(value, f"{path}.{key}"))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            out.extend(_walk(value, f"{path}[{i}]"))
    return out


def test_committed_crd_matches_the_models() -> None:
    assert crdgen.CRD_PATH.read_text() == crdgen.render(), "crds/ drifted from api.py: run `make crds`"
    assert crdgen.CHART_CRD_PATH.read_text() == crdgen.render(), "the chart's CRD drifted: run `make crds`"


def test_schema_is_structural() -> None:
    schema = crdgen.crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for path, node in _walk(schema):
        assert "$ref" not in node, path
        assert "anyOf" not in node and "oneOf" not in node, path
        if "properties" in node:
            assert node.get("type") == "object", path
            assert "additionalProperties" not in node, path
            for name, prop in node["properties"].items():
                assert "type" in prop or "x-kubernetes-preserve-unknown-fields" in prop, f"{path}.{name}"


def test_schema_expresses_the_simple_rules() -> None:
    spec = crdgen.crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    step = spec["properties"]["steps"]["items"]
    assert spec["properties"]["steps"]["minItems"] == 1
    assert step["properties"]["setWeight"]["minimum"] == 0
    assert step["properties"]["setWeight"]["maximum"] == 100
    interval = spec["properties"]["analysis"]["properties"]["interval"]
    assert interval["pattern"].startswith("^")
    rules = [r["rule"] for r in spec["properties"]["analysis"]["x-kubernetes-validations"]]
    assert any("duration('5s')" in r for r in rules)
    assert spec["properties"]["traffic"]["x-kubernetes-validations"]


def test_crd_yaml_round_trips() -> None:
    doc = yaml.safe_load(crdgen.render())
    assert doc["spec"]["names"]["kind"] == "AgentRollout"
    assert doc["spec"]["versions"][0]["subresources"] == {"status": {}}
    columns = [c["name"] for c in doc["spec"]["versions"][0]["additionalPrinterColumns"]]
    assert columns[:3] == ["Phase", "Step", "Candidate"]
