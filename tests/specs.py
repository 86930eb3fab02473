"""One AgentRollout spec the unit tests start from; each test changes only what it is about."""

from __future__ import annotations

from typing import Any

LEGACY, CANDIDATE, ROUTE = "triage-rules", "triage-agent", "triage"
PROMETHEUS_URL = "http://prometheus:9090"


def spec_dict(**overrides: Any) -> dict[str, Any]:
    """A valid spec as it would be written in YAML; keyword arguments replace top-level fields."""
    raw: dict[str, Any] = {
        "legacy": {"deployment": LEGACY},
        "candidate": {"deployment": CANDIDATE},
        "traffic": {
            "gatewayAPI": {"httpRoute": ROUTE, "legacyBackend": LEGACY, "candidateBackend": CANDIDATE}
        },
        "steps": [{"setWeight": 5}, {"setWeight": 25}, {"setWeight": 50}],
    }
    raw.update(overrides)
    return raw


def analysis_dict(*gates: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {"prometheus": {"url": PROMETHEUS_URL}, "gates": list(gates), **fields}
