"""The e2e tests' Kubernetes client: the official Python client plus a few create-and-wait helpers."""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast

from kubernetes import client, config

from e2e.cluster import objects
from e2e.sim.route import GATEWAY_GROUP, HTTPROUTE_PLURAL, HTTPROUTE_VERSION


def new_api_client(kubeconfig: Path) -> client.ApiClient:
    """An ApiClient of its own (connection pool included) configured from the kubeconfig file."""
    api_client: client.ApiClient = config.new_client_from_config(  # type: ignore[no-untyped-call]
        config_file=str(kubeconfig)
    )
    return api_client


class KubeApi:
    """`.client` is a plain kubernetes.client.ApiClient; the typed APIs hang off it."""

    def __init__(self, kubeconfig: Path) -> None:
        self.kubeconfig = kubeconfig
        self.client = new_api_client(kubeconfig)
        self.core = client.CoreV1Api(self.client)
        self.apps = client.AppsV1Api(self.client)
        self.custom = client.CustomObjectsApi(self.client)
        self.apiext = client.ApiextensionsV1Api(self.client)

    def close(self) -> None:
        self.client.close()  # type: ignore[no-untyped-call]

    # --- create -------------------------------------------------------------------------------

    def create_deployment(self, namespace: str, name: str, *, version: str, replicas: int = 1) -> Any:
        body = objects.deployment(name, version=version, replicas=replicas)
        # The client serializes plain dicts as they are; its annotations only name the model classes.
        return self.apps.create_namespaced_deployment(namespace, cast(Any, body))

    def create_service(self, namespace: str, name: str, *, selector: Mapping[str, str] | None = None) -> Any:
        return self.core.create_namespaced_service(
            namespace, cast(Any, objects.service(name, selector=selector))
        )

    def create_httproute(
        self, namespace: str, name: str, weights: Mapping[str, int], *, gateway: str | None = None
    ) -> dict[str, Any]:
        body = objects.httproute(name, weights, gateway=gateway)
        route = self.custom.create_namespaced_custom_object(
            GATEWAY_GROUP, HTTPROUTE_VERSION, namespace, HTTPROUTE_PLURAL, body
        )
        return cast(dict[str, Any], route)

    def create_agent_backends(
        self, namespace: str, versions: Mapping[str, str], *, replicas: int = 1
    ) -> None:
        """A Deployment and a Service of the same name per backend; versions maps that name to a version."""
        for name, version in versions.items():
            self.create_deployment(namespace, name, version=version, replicas=replicas)
            self.create_service(namespace, name)

    # --- change and read ----------------------------------------------------------------------

    def get_httproute(self, namespace: str, name: str) -> dict[str, Any]:
        route = self.custom.get_namespaced_custom_object(
            GATEWAY_GROUP, HTTPROUTE_VERSION, namespace, HTTPROUTE_PLURAL, name
        )
        return cast(dict[str, Any], route)

    def set_route_weights(self, namespace: str, name: str, weights: Mapping[str, int]) -> dict[str, Any]:
        """Rewrites the first rule's backendRefs, keeping everything else of the route (as a router would)."""
        route = self.get_httproute(namespace, name)
        route["spec"]["rules"][0]["backendRefs"] = objects.backend_refs(weights)
        updated = self.custom.replace_namespaced_custom_object(
            GATEWAY_GROUP, HTTPROUTE_VERSION, namespace, HTTPROUTE_PLURAL, name, route
        )
        return cast(dict[str, Any], updated)

    def wait_deployment_available(self, namespace: str, name: str, timeout_s: float = 60.0) -> Any:
        deadline = time.monotonic() + timeout_s
        while True:
            dep: Any = self.apps.read_namespaced_deployment_status(name, namespace)
            status = dep.status
            conditions = {c.type: c.status for c in (status.conditions or [])} if status else {}
            available = (status.available_replicas or 0) if status else 0
            if conditions.get("Available") == "True" and available >= (dep.spec.replicas or 0):
                return dep
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"deployment {namespace}/{name} not available after {timeout_s}s: {dep.status}"
                )
            time.sleep(0.2)

    def wait_available_replicas(self, namespace: str, name: str, count: int, timeout_s: float = 30.0) -> Any:
        """Until the Deployment reports exactly `count` available replicas (0: unavailable)."""
        deadline = time.monotonic() + timeout_s
        while True:
            dep: Any = self.apps.read_namespaced_deployment_status(name, namespace)
            if ((dep.status and dep.status.available_replicas) or 0) == count:
                return dep
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"deployment {namespace}/{name}: not {count} available replicas after {timeout_s}s: "
                    f"{dep.status}"
                )
            time.sleep(0.1)
