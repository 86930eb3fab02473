"""The only module that talks to the Kubernetes API.

The official client is synchronous, so every call runs on a bounded thread pool: the event loop
never blocks, and thousands of rollouts cannot open thousands of threads or connections.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar, cast

import kubernetes
import urllib3
from kubernetes.client.exceptions import ApiException

from agent_rollout import api
from agent_rollout.domain import DeploymentState
from agent_rollout.traffic import gatewayapi

T = TypeVar("T")

POOL_SIZE = 16


class Conflict(Exception):
    """The object changed under us (a JSON patch `test` failed, or 409); retry on fresh data."""


class RouteWriteError(Exception):
    """The API server did not take a route write. `permanent`: refused by RBAC, validation or
    admission (403, 400, 422), so the same write fails again until someone changes something;
    otherwise (5xx, 429, a dropped connection) it may pass on the next try."""

    def __init__(self, message: str, permanent: bool) -> None:
        super().__init__(message)
        self.permanent = permanent


PERMANENT_STATUSES = frozenset({400, 403, 422})


class KubeClient:
    def __init__(self, client: kubernetes.client.ApiClient, pool_size: int = POOL_SIZE) -> None:
        client.configuration.connection_pool_maxsize = pool_size
        self._custom = kubernetes.client.CustomObjectsApi(client)
        self._pool = ThreadPoolExecutor(max_workers=pool_size, thread_name_prefix="kube")

    @classmethod
    def from_environment(cls) -> KubeClient:
        try:
            kubernetes.config.load_incluster_config()
        except kubernetes.config.ConfigException:
            kubernetes.config.load_kube_config()
        return cls(kubernetes.client.ApiClient())

    async def _run(self, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn)

    async def patch_rollout_status(self, namespace: str, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        """JSON merge patch on the status subresource; returns the object as stored."""
        result = await self._run(
            lambda: self._custom.patch_namespaced_custom_object_status(
                api.GROUP, api.VERSION, namespace, api.PLURAL, name, {"status": patch}
            )
        )
        return cast(dict[str, Any], result)

    async def patch_route(self, namespace: str, name: str, ops: list[dict[str, Any]]) -> None:
        """JSON patch: only the weights, guarded by `test` ops on the backendRef names."""
        try:
            await self._run(
                lambda: self._custom.patch_namespaced_custom_object(
                    gatewayapi.GROUP,
                    gatewayapi.VERSION,
                    namespace,
                    gatewayapi.PLURAL,
                    name,
                    ops,
                    field_manager=api.FIELD_MANAGER,
                    # The client would guess merge-patch for any body; a list is a JSON patch.
                    _content_type="application/json-patch+json",
                )
            )
        except ApiException as e:
            detail = _api_error_text(e)
            if e.status == 409 or (e.status == 422 and _is_failed_test(detail)):
                raise Conflict(f"HTTPRoute {namespace}/{name} changed while patching: {detail}") from e
            raise RouteWriteError(
                f"HTTPRoute {namespace}/{name}: {e.status} {e.reason}: {detail}",
                permanent=e.status in PERMANENT_STATUSES,
            ) from e
        except (OSError, urllib3.exceptions.HTTPError) as e:
            raise RouteWriteError(f"HTTPRoute {namespace}/{name}: {type(e).__name__}: {e}", False) from e

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def _api_error_text(error: ApiException) -> str:
    """The API server's own message (from its Status body), bounded for conditions and Events."""
    text = str(error.reason or "")
    try:
        body = json.loads(error.body or "")
        text = str(body.get("message") or text)
    except (ValueError, TypeError, AttributeError):
        pass
    return text[:400]


def _is_failed_test(detail: str) -> bool:
    # A JSON patch whose `test` op failed is a 422 too; only its message tells it from a refusal.
    lowered = detail.lower()
    return "test" in lowered and ("fail" in lowered or "testing value" in lowered)


# Pod-template annotations that restart pods without changing the agent: `kubectl rollout restart`
# sets the first. A change to them is not a new candidate revision, so it does not restart a rollout.
RESTART_ANNOTATIONS = frozenset({"kubectl.kubernetes.io/restartedAt"})


def template_hash(template: dict[str, Any] | None) -> str | None:
    """Identity of a Deployment's pod template: a new image, model, prompt or tool set changes it
    (anything in the template but the restart annotations)."""
    if template is None:
        return None
    identity = template
    annotations = (template.get("metadata") or {}).get("annotations") or {}
    if RESTART_ANNOTATIONS & annotations.keys():
        # Hash as if never restarted; templates without the annotation hash exactly as they always did.
        kept = {k: v for k, v in annotations.items() if k not in RESTART_ANNOTATIONS}
        metadata = {k: v for k, v in template["metadata"].items() if k != "annotations"}
        if kept:
            metadata["annotations"] = kept
        identity = {**template, "metadata": metadata}
    canonical = json.dumps(identity, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def deployment_state(
    name: str, spec: dict[str, Any] | None, status: dict[str, Any] | None
) -> DeploymentState:
    spec, status = spec or {}, status or {}
    return DeploymentState(
        name=name,
        exists=True,
        template_hash=template_hash(spec.get("template")),
        replicas=int(spec.get("replicas", 1) or 0),
        available_replicas=int(status.get("availableReplicas", 0) or 0),
    )
