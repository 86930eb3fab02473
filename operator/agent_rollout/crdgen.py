"""Generate the AgentRollout CRD from the pydantic models (`make crds`).

Pydantic emits JSON Schema 2020-12 with $refs and anyOf-null for optional fields; Kubernetes wants a
*structural* OpenAPI v3.0 schema: no $ref, a type on every node, no types inside anyOf/oneOf. This
module does that translation, and adds CEL rules (x-kubernetes-validations) for the cross-field rules
the apiserver can check, so a bad spec is refused at `kubectl apply` with a message naming the field.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from agent_rollout import api
from agent_rollout.traffic import registry

# Cross-field rules the apiserver enforces; keyed by the pydantic model they belong to. spec.traffic's
# rule is made from the router registry when the CRD is generated (_rules).
_CEL_RULES: dict[str, list[dict[str, str]]] = {
    "Analysis": [
        {
            "rule": "!has(self.interval) || duration(self.interval) >= duration('5s')",
            "message": "spec.analysis.interval must be at least 5s",
            "fieldPath": ".interval",
        },
    ],
    "Step": [
        {
            "rule": "(has(self.setWeight) ? 1 : 0) + (has(self.pause) ? 1 : 0) + (has(self.evaluate) ? 1 : 0)"
            " + (has(self.approval) ? 1 : 0) + (has(self.shadow) ? 1 : 0) == 1",
            "message": "each step needs exactly one of setWeight, pause, evaluate, approval or shadow",
        },
    ],
    "AgentRolloutSpec": [
        {
            "rule": f"self.steps.filter(s, has(s.approval)).size() <= {api.MAX_APPROVAL_STEPS}",
            "message": f"at most {api.MAX_APPROVAL_STEPS} approval steps",
            "fieldPath": ".steps",
        },
    ],
    "ShadowCompare": [
        {
            "rule": "self.mode != 'exact' || !has(self.fields) || size(self.fields) == 0",
            "message": "fields need mode json or text (exact compares whole bodies)",
            "fieldPath": ".fields",
        },
        {
            "rule": "self.mode == 'text' || !has(self.threshold)",
            "message": "threshold applies to mode text only",
            "fieldPath": ".threshold",
        },
    ],
    "Gate": [
        {
            "rule": "has(self.template) != has(self.query)",
            "message": "a gate needs exactly one of template or query",
        },
    ],
}

_DESCRIPTION = (
    "Progressive delivery of an AI agent: shifts traffic from a legacy Deployment to a candidate "
    "in steps, gated on Prometheus, with automatic rollback."
)
_DROP_KEYS = {"title", "default", "examples", "$defs"}


def _structural(node: Any, defs: dict[str, Any]) -> Any:
    if isinstance(node, list):
        return [_structural(item, defs) for item in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        name = node["$ref"].rsplit("/", 1)[-1]
        resolved = _structural(defs[name], defs)
        rules = _rules(name)
        if rules:
            resolved["x-kubernetes-validations"] = rules
        # A description next to a $ref describes the field, not the referenced type.
        if "description" in node:
            resolved["description"] = node["description"]
        return resolved
    if "anyOf" in node:
        # Optional[X] -> X: absence of the field is how "null" is spelled in a CRD.
        branches = [b for b in node["anyOf"] if b.get("type") != "null"]
        if len(branches) != 1:
            raise ValueError(f"cannot make a structural schema from anyOf {node['anyOf']}")
        merged = {k: v for k, v in node.items() if k != "anyOf"}
        merged.update(branches[0])
        return _structural(merged, defs)
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DROP_KEYS:
            continue
        if key in ("exclusiveMinimum", "exclusiveMaximum") and not isinstance(value, bool):
            # JSON Schema 2020 numeric form -> OpenAPI 3.0 boolean form.
            bound = "minimum" if key == "exclusiveMinimum" else "maximum"
            out[bound] = value
            out[key] = True
            continue
        if key == "const":
            out["enum"] = [value]
            continue
        if key == "additionalProperties" and value is False:
            # Structural schemas forbid it; unknown fields are refused by kubectl's strict field validation.
            continue
        if key == "properties":
            out[key] = {name: _structural(sub, defs) for name, sub in value.items()}
            continue
        out[key] = _structural(value, defs)
    if "enum" in out and "type" not in out:
        out["type"] = "string"
    return out


def openapi_schema(model: type[BaseModel]) -> dict[str, Any]:
    raw = model.model_json_schema(by_alias=True, mode="validation")
    defs = raw.get("$defs", {})
    schema: dict[str, Any] = _structural(raw, defs)
    rules = _rules(model.__name__)
    if rules:
        schema["x-kubernetes-validations"] = rules
    return schema


def _rules(model: str) -> list[dict[str, str]]:
    if model == api.Traffic.__name__:
        return [{"rule": registry.cel_rule(), "message": registry.one_router_message()}]
    return _CEL_RULES.get(model, [])


def crd() -> dict[str, Any]:
    spec_schema = openapi_schema(api.AgentRolloutSpec)
    status_schema = openapi_schema(api.AgentRolloutStatus)
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{api.PLURAL}.{api.GROUP}"},
        "spec": {
            "group": api.GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": api.KIND,
                "plural": api.PLURAL,
                "singular": api.SINGULAR,
                "shortNames": api.SHORT_NAMES,
                "categories": ["all"],
            },
            "versions": [
                {
                    "name": api.VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    # Field selectors the operator lists by (Kubernetes 1.31+; older apiservers drop
                    # this and the operator waits for the list of every rollout instead).
                    "selectableFields": [
                        {"jsonPath": f".{api.ABORT_FIELD}"},
                        *({"jsonPath": f".{registry.claim_field(r)}"} for r in registry.routers().values()),
                    ],
                    "additionalPrinterColumns": [
                        {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
                        {"name": "Step", "type": "string", "jsonPath": ".status.step"},
                        {
                            "name": "Candidate",
                            "type": "integer",
                            "jsonPath": ".status.weights.candidate",
                            "description": "Percent of traffic on the candidate",
                        },
                        {"name": "Message", "type": "string", "jsonPath": ".status.message", "priority": 1},
                        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
                    ],
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": _DESCRIPTION,
                            "required": ["spec"],
                            "properties": {
                                "apiVersion": {"type": "string"},
                                "kind": {"type": "string"},
                                "metadata": {"type": "object"},
                                "spec": spec_schema,
                                "status": status_schema,
                            },
                        }
                    },
                }
            ],
        },
    }


def render() -> str:
    header = "# Generated from operator/agent_rollout/api.py by `make crds`. Do not edit by hand.\n"
    return header + yaml.safe_dump(crd(), sort_keys=False, width=120)


_ROOT = Path(__file__).resolve().parents[2]
CRD_PATH = _ROOT / "crds" / f"{api.PLURAL}.{api.GROUP}.yaml"
# Helm installs CRDs from the chart's own crds/ folder; it gets the same generated file.
CHART_CRD_PATH = _ROOT / "charts" / "agent-rollout" / "crds" / CRD_PATH.name


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Write or check the AgentRollout CRD generated from the models."
    )
    parser.add_argument("--check", action="store_true", help="exit 1 when crds/ differs from the models")
    parser.add_argument("--out", type=Path, default=CRD_PATH)
    args = parser.parse_args(argv)
    text = render()
    targets = [args.out] if args.out != CRD_PATH else [CRD_PATH, CHART_CRD_PATH]
    if args.check:
        stale = [t for t in targets if not t.exists() or t.read_text() != text]
        for target in stale:
            print(f"{target} is out of date: run `make crds`", file=sys.stderr)
        return 1 if stale else 0
    for target in targets:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        print(f"wrote {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
