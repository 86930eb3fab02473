"""Manifests of the objects e2e tests need: an agent's Deployment and Service, and a weighted HTTPRoute.

Plain dicts (like dask-kubernetes' builders), so tests can tweak them before creating.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# Never pulled: kwok fakes the kubelet, so the image only has to be a valid reference.
SIM_AGENT_IMAGE = "registry.invalid/agent-rollout/sim-agent:e2e"
SERVICE_PORT = 80
# Which simulated agent serves a pod: the readiness bridge (e2e/sim/readiness.py) matches pods by it.
VERSION_LABEL = "agent-rollout.dev/version"


def deployment(name: str, *, version: str, replicas: int = 1, image: str = SIM_AGENT_IMAGE) -> dict[str, Any]:
    labels = {"app.kubernetes.io/name": name, VERSION_LABEL: version}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app.kubernetes.io/name": name}},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "containers": [{"name": "agent", "image": image, "ports": [{"containerPort": 8080}]}],
                    # No real kubelet: nothing would ever kill the pod gracefully, so do not wait for it.
                    "terminationGracePeriodSeconds": 0,
                },
            },
        },
    }


def service(name: str, *, selector: Mapping[str, str] | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name},
        "spec": {
            "selector": dict(selector or {"app.kubernetes.io/name": name}),
            "ports": [{"name": "http", "port": SERVICE_PORT, "targetPort": 8080}],
        },
    }


def backend_refs(weights: Mapping[str, int]) -> list[dict[str, Any]]:
    return [{"name": svc, "port": SERVICE_PORT, "weight": w} for svc, w in weights.items()]


def httproute(name: str, weights: Mapping[str, int], *, gateway: str | None = None) -> dict[str, Any]:
    """One rule splitting traffic between Services by weight; parentRefs only when a Gateway is named."""
    spec: dict[str, Any] = {"rules": [{"backendRefs": backend_refs(weights)}]}
    if gateway:
        spec["parentRefs"] = [{"name": gateway}]
    return {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": name},
        "spec": spec,
    }
