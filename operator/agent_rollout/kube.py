"""The only module that talks to the Kubernetes API.

The official client is synchronous, so every call runs on a bounded thread pool: the event loop
never blocks, and thousands of rollouts cannot open thousands of threads or connections.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import heapq
import itertools
import json
import logging
import os
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar, cast

import kubernetes
import urllib3
from kubernetes.client.exceptions import ApiException

from agent_rollout import agentversion, api, evaluation
from agent_rollout.domain import DeploymentState
from agent_rollout.leader import LeaseConflict
from agent_rollout.traffic.router import Resource

T = TypeVar("T")
log = logging.getLogger(__name__)

POOL_SIZE = 16
EVENT_SOURCE = "agent-rollout"


class Conflict(Exception):
    """The object changed under us (a JSON patch `test` failed, or 409); retry on fresh data."""


class RouteWriteError(Exception):
    """The API server did not take a route write. `permanent`: refused by RBAC, validation or
    admission (403, 400, 422), so the same write fails again until someone changes something;
    otherwise (5xx, 429, a dropped connection) it may pass on the next try."""

    def __init__(self, message: str, permanent: bool) -> None:
        super().__init__(message)
        self.permanent = permanent


class SecretUnavailable(Exception):
    """A Secret or its key cannot be read (missing, or RBAC: see the chart's notifications values)."""


PERMANENT_STATUSES = frozenset({400, 403, 422})


# What a call waiting for the API budget is: a route write moves traffic (a rollback, an abort, a step
# a pause ended), so it goes before every waiting status, finalizer or Job write; a new rollout's first
# status (planner.first_sight: one write tells its author it was seen and whether its spec is valid)
# goes before the rest, so 10,000 rollouts created at once are all acknowledged before any of them
# takes the budget for its later steps.
TRAFFIC = 0
FIRST_STATUS = 1
OTHER = 2
# A status write that records no decision and follows no route write (measured values refreshed, a
# message): last, so at 10,000 rollouts the live ones' periodic refreshes never hold back a new
# rollout's start or a step's record.
REFRESH = 3


class RateLimiter:
    """A token bucket: at most `qps` calls a second on average, `burst` at once. The one place that
    paces the operator's API calls, so 10,000 rollouts waking together queue here, not at the
    apiserver (which would answer 429, or slow every other client down). Waiting calls are served by
    priority, then first come first served: at 10,000 rollouts the budget was the queue, and a
    rollback's route write waited behind thousands of status writes."""

    def __init__(self, qps: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        if not (qps > 0 and burst >= 1):
            raise ValueError(f"need qps > 0 and burst >= 1, got {qps!r}, {burst!r}")
        self.qps, self.burst, self._clock = qps, burst, clock
        self._tokens, self._at = float(burst), clock()
        self._waiting: list[tuple[int, int, asyncio.Future[None]]] = []
        self._order = itertools.count()
        self._granting: asyncio.Task[None] | None = None

    async def acquire(self, priority: int = OTHER) -> None:
        self._refill()
        if not self._waiting and self._tokens >= 1:
            self._tokens -= 1
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiting, (priority, next(self._order), waiter))
        if self._granting is None:
            self._granting = asyncio.get_running_loop().create_task(self._grant())
        await waiter

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._at) * self.qps)
        self._at = now

    async def _grant(self) -> None:
        """Hand each token, as it comes, to the most urgent caller still waiting."""
        try:
            while self._waiting:
                self._refill()
                if self._tokens < 1:
                    await asyncio.sleep((1 - self._tokens) / self.qps)
                    self._refill()
                    self._tokens = max(self._tokens, 1.0)
                while self._waiting and self._tokens >= 1:
                    _, _, waiter = heapq.heappop(self._waiting)
                    if waiter.done():
                        continue  # its caller was cancelled
                    self._tokens -= 1
                    waiter.set_result(None)
        finally:
            self._granting = None


class Slots:
    """At most `size` API calls in flight; waiting calls get a slot by priority, then first come first
    served. Without a client-side rate (client_settings), this is the queue: the apiserver's own
    priority and fairness paces the operator, and a rollback's route write still goes before every
    status write waiting here (the thread pool's own queue is first in, first out)."""

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError(f"need at least one slot, got {size!r}")
        self._free = size
        self._waiting: list[tuple[int, int, asyncio.Future[None]]] = []
        self._order = itertools.count()

    async def acquire(self, priority: int = OTHER) -> None:
        if self._free > 0 and not self._waiting:
            self._free -= 1
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiting, (priority, next(self._order), waiter))
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release()  # handed a slot as it was cancelled: pass it on
            raise

    def release(self) -> None:
        while self._waiting:
            _, _, waiter = heapq.heappop(self._waiting)
            if not waiter.done():
                waiter.set_result(None)
                return
        self._free += 1


def client_settings() -> tuple[float, int]:
    """(qps, burst) of the decisions' writes (routes, status) from AGENT_ROLLOUT_KUBE_QPS /
    AGENT_ROLLOUT_KUBE_BURST. By default (QPS 0) no client-side rate: the calls in flight (Slots) are
    the only bound and the apiserver's priority and fairness paces the operator, as SIG API Machinery
    advises and controller-runtime does since v0.21 (the chart's admission policy needs Kubernetes
    1.30, where priority and fairness is GA). At 10,000 new rollouts on this repo's 2-core cluster a
    100 QPS rate (Flagger's order) made the first statuses take 110 s; without it 55 s. A positive QPS
    sets a token bucket too (burst: AGENT_ROLLOUT_KUBE_BURST)."""
    qps = float(os.environ.get("AGENT_ROLLOUT_KUBE_QPS", "0"))
    burst = int(os.environ.get("AGENT_ROLLOUT_KUBE_BURST", "200"))
    return qps, burst


def event_settings() -> tuple[float, int]:
    """(qps, burst) of Events, a budget apart from the decisions' (AGENT_ROLLOUT_EVENT_QPS/_BURST)."""
    qps = float(os.environ.get("AGENT_ROLLOUT_EVENT_QPS", "20"))
    burst = int(os.environ.get("AGENT_ROLLOUT_EVENT_BURST", "100"))
    return qps, burst


MAX_EVENTS_WAITING = 1000  # Events queued for their budget; more are dropped (status.history keeps all)


MAX_THROTTLED_RETRIES = 5


class KubeClient:
    def __init__(
        self,
        client: kubernetes.client.ApiClient,
        pool_size: int = POOL_SIZE,
        limiter: RateLimiter | None = None,
    ) -> None:
        # The urllib3 pool is built with the ApiClient; from_environment sizes it before that.
        self._custom = kubernetes.client.CustomObjectsApi(client)
        self._core = kubernetes.client.CoreV1Api(client)
        self._pool = ThreadPoolExecutor(max_workers=pool_size, thread_name_prefix="kube")
        qps, burst = client_settings()
        # No client-side rate when the QPS is 0 or less (client_settings): only the slots bound calls.
        self._limiter = limiter or (RateLimiter(qps, burst) if qps > 0 else None)
        self._slots = Slots(pool_size)
        self._event_limiter = RateLimiter(*event_settings())
        self._posting: set[asyncio.Task[None]] = set()
        self.events_dropped = 0

    @classmethod
    def from_environment(
        cls, pool_size: int = POOL_SIZE, kubeconfig: str | None = None, identity: str | None = None
    ) -> KubeClient:
        return cls(_api_client(pool_size, kubeconfig, identity), pool_size=pool_size)

    async def _run(self, fn: Callable[[], T], priority: int = OTHER) -> T:
        """One API call in the thread pool, paced by the rate limiter, retried when the apiserver
        answers 429 (after its Retry-After, else with a doubling backoff)."""
        for attempt in range(MAX_THROTTLED_RETRIES + 1):
            await self._slots.acquire(priority)
            try:
                if self._limiter is not None:
                    await self._limiter.acquire(priority)
                return await asyncio.get_running_loop().run_in_executor(self._pool, fn)
            except ApiException as e:
                if e.status != 429 or attempt == MAX_THROTTLED_RETRIES:
                    raise
                backoff = _retry_after(e, attempt)
            finally:
                self._slots.release()  # not held while it backs off
            await asyncio.sleep(backoff)
        raise AssertionError("unreachable")

    async def patch_rollout_status(
        self, namespace: str, name: str, patch: dict[str, Any], priority: int = OTHER
    ) -> dict[str, Any]:
        """JSON merge patch on the status subresource; returns the object as stored."""
        result = await self._run(
            lambda: self._custom.patch_namespaced_custom_object_status(
                api.GROUP, api.VERSION, namespace, api.PLURAL, name, {"status": patch}
            ),
            priority,
        )
        return cast(dict[str, Any], result)

    async def add_finalizer(
        self, namespace: str, name: str, finalizers: list[str], resource_version: str, finalizer: str
    ) -> None:
        """Our finalizer added to those the rollout has, pinned to the resourceVersion they were read at
        (a merge patch replaces the list whole: one added meanwhile must not be lost)."""
        patch = {"metadata": {"finalizers": [*finalizers, finalizer], "resourceVersion": resource_version}}
        await self._patch_rollout(namespace, name, patch, "application/merge-patch+json")

    async def remove_finalizer(
        self, namespace: str, name: str, finalizers: list[str], finalizer: str
    ) -> bool:
        """Our finalizer removed, guarded by a `test` that it is still where we read it; False when the
        rollout was gone already (nothing left to release)."""
        at = f"/metadata/finalizers/{finalizers.index(finalizer)}"
        ops = [{"op": "test", "path": at, "value": finalizer}, {"op": "remove", "path": at}]
        try:
            await self._patch_rollout(namespace, name, ops, "application/json-patch+json")
        except ApiException as e:
            # Gone: an earlier release of ours went through and the watch had not told the store yet.
            if e.status != 404:
                raise
            return False
        return True

    async def _patch_rollout(self, namespace: str, name: str, body: Any, content_type: str) -> None:
        try:
            await self._run(
                lambda: self._custom.patch_namespaced_custom_object(
                    api.GROUP,
                    api.VERSION,
                    namespace,
                    api.PLURAL,
                    name,
                    body,
                    field_manager=api.FIELD_MANAGER,
                    _content_type=content_type,
                )
            )
        except ApiException as e:
            detail = _api_error_text(e)
            if e.status == 409 or (e.status == 422 and _is_failed_test(detail)):
                raise Conflict(f"AgentRollout {namespace}/{name} changed while patching: {detail}") from e
            raise

    async def patch_route(
        self, resource: Resource, namespace: str, name: str, ops: list[dict[str, Any]]
    ) -> None:
        """JSON patch of a routed object (`resource`: its router's), guarded by the router's `test` ops."""
        kind = resource.kind
        try:
            await self._run(
                lambda: self._custom.patch_namespaced_custom_object(
                    resource.group,
                    resource.version,
                    namespace,
                    resource.plural,
                    name,
                    ops,
                    field_manager=api.FIELD_MANAGER,
                    # The client would guess merge-patch for any body; a list is a JSON patch.
                    _content_type="application/json-patch+json",
                ),
                TRAFFIC,
            )
        except ApiException as e:
            detail = _api_error_text(e)
            if e.status == 409 or (e.status == 422 and _is_failed_test(detail)):
                raise Conflict(f"{kind} {namespace}/{name} changed while patching: {detail}") from e
            raise RouteWriteError(
                f"{kind} {namespace}/{name}: {e.status} {e.reason}: {detail}",
                permanent=e.status in PERMANENT_STATUSES,
            ) from e
        except (OSError, urllib3.exceptions.HTTPError) as e:
            raise RouteWriteError(f"{kind} {namespace}/{name}: {type(e).__name__}: {e}", False) from e

    async def create_job(self, manifest: dict[str, Any]) -> None:
        """Create an evaluation Job; one of that name already there is the same Job (its name is
        derived from rollout, step, revision and attempt), so a repeat after a crash starts no second."""
        namespace = manifest["metadata"]["namespace"]
        try:
            await self._run(
                lambda: self._custom.create_namespaced_custom_object(
                    "batch", "v1", namespace, "jobs", manifest, field_manager=api.FIELD_MANAGER
                )
            )
        except ApiException as e:
            if e.status != 409:
                raise

    async def termination_message(self, namespace: str, job: str) -> str | None:
        """The result an evaluation Job's pod left (evaluation.termination_message), read once it ended."""
        # The body is read in the pool's thread too: read on the event loop, a slow answer would stall it.
        pods = await self._run(
            lambda: json.loads(
                self._core.list_namespaced_pod(
                    namespace,
                    label_selector=f"batch.kubernetes.io/job-name={job}",
                    _preload_content=False,
                    _request_timeout=(10, 30),
                ).data  # type: ignore[attr-defined]
            )
        )
        return evaluation.termination_message(pods)

    async def read_secret_key(self, namespace: str, name: str, key: str) -> str:
        """One key of a Secret, decoded (a notification sink's webhook URL). A read the operator may not
        make, a missing Secret or key: SecretUnavailable, naming them (never the value)."""
        try:
            secret = await self._run(lambda: self._core.read_namespaced_secret(name, namespace))
        except ApiException as e:
            raise SecretUnavailable(f"Secret {namespace}/{name}: {e.status} {_api_error_text(e)}") from e
        except (OSError, urllib3.exceptions.HTTPError) as e:
            raise SecretUnavailable(f"Secret {namespace}/{name}: {type(e).__name__}") from e
        value = (secret.data or {}).get(key)
        if value is None:
            raise SecretUnavailable(f"Secret {namespace}/{name} has no key {key!r}")
        return base64.b64decode(value).decode()

    def post_event_soon(self, involved: Mapping[str, Any], type: str, reason: str, message: str) -> None:
        """Post a core/v1 Event on the rollout in the background, on a budget of its own.

        The decision it reports is already routed and recorded in status.history; its Event must never
        take an API call from the next decision. Like client-go's event broadcaster, a full backlog
        drops Events (counted and logged) instead of growing without bound."""
        if len(self._posting) >= MAX_EVENTS_WAITING:
            self.events_dropped += 1
            if self.events_dropped % 100 == 1:
                log.warning("%d Events dropped: more decisions than the Event budget", self.events_dropped)
            return
        meta = involved.get("metadata") or {}
        ref = {
            "apiVersion": involved.get("apiVersion"),
            "kind": involved.get("kind"),
            "name": meta.get("name"),
            "namespace": meta.get("namespace"),
            "uid": meta.get("uid"),
            "resourceVersion": meta.get("resourceVersion"),
        }
        task = asyncio.get_running_loop().create_task(self._post_event(ref, type, reason, message))
        self._posting.add(task)
        task.add_done_callback(self._posted)

    def _posted(self, task: asyncio.Task[None]) -> None:
        self._posting.discard(task)
        error = None if task.cancelled() else task.exception()
        if isinstance(error, ApiException):
            # One line with the apiserver's message: e.g. a namespace being deleted (a rollout's finalizer
            # released while its namespace goes) refuses every new Event, and the log should say so.
            log.warning(
                "could not post an Event: %s %s: %s", error.status, error.reason, _api_error_text(error)
            )
        elif error is not None:
            log.warning("could not post an Event: %r", error)

    async def _post_event(self, ref: dict[str, Any], type: str, reason: str, message: str) -> None:
        await self._event_limiter.acquire()
        now = datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")
        event = {
            "metadata": {"generateName": f"{ref['name']}.", "namespace": ref["namespace"]},
            "involvedObject": ref,
            "type": type,
            "reason": reason,
            "message": message,
            "source": {"component": EVENT_SOURCE},
            "reportingComponent": EVENT_SOURCE,
            "reportingInstance": EVENT_SOURCE,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        body = kubernetes.client.CoreV1Event.from_dict(event)
        assert body is not None  # from_dict returns None only for None
        namespace = str(ref["namespace"])

        def post() -> None:
            # Not parsed: the stored Event as a model would cost more than posting it. But read to its
            # end, or urllib3 never gives the connection back: each Event cost a new TLS connection
            # (a handshake for the operator and for the apiserver), and drained the pool for the
            # status writes after it (e2e/test_kube_client.py).
            response: Any = self._core.create_namespaced_event(namespace, body, _preload_content=False)
            response.drain_conn()
            response.release_conn()

        await asyncio.get_running_loop().run_in_executor(self._pool, post)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def user_agent(identity: str | None) -> str:
    """`agent-rollout/<replica>`: the apiserver's audit log tells the replicas' requests apart by it (and
    takes `agent-rollout` as the field manager of writes that name none)."""
    return f"{api.FIELD_MANAGER}/{identity or 'unknown'}"


def _api_client(
    pool_size: int, kubeconfig: str | None = None, identity: str | None = None
) -> kubernetes.client.ApiClient:
    configuration = kubernetes.client.Configuration()
    try:
        kubernetes.config.load_incluster_config(client_configuration=configuration)
    except kubernetes.config.ConfigException:
        kubernetes.config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)
    # One connection per thread, set before the pool exists: set afterwards (as it was) it stayed at
    # urllib3's default, and the operator logged "connection pool is full" under load.
    configuration.connection_pool_maxsize = pool_size
    client = kubernetes.client.ApiClient(configuration)
    client.user_agent = user_agent(identity)
    return client


class LeaseClient:
    """The operator's Lease (leader.py), read and written from the elector's own thread (blocking calls,
    never on the event loop) over a connection of its own: a renewal must not queue behind status writes.
    Every write replaces the resourceVersion it read, or fails with LeaseConflict."""

    def __init__(
        self, client: kubernetes.client.ApiClient, namespace: str, name: str, timeout: float
    ) -> None:
        self._coordination = kubernetes.client.CoordinationV1Api(client)
        self.namespace, self.name = namespace, name
        self._timeout = (timeout, timeout)

    @classmethod
    def from_environment(
        cls, namespace: str, name: str, identity: str, timeout: float, kubeconfig: str | None = None
    ) -> LeaseClient:
        return cls(_api_client(1, kubeconfig, identity), namespace, name, timeout)

    def get(self) -> dict[str, Any] | None:
        try:
            response = self._coordination.read_namespaced_lease(
                self.name, self.namespace, _preload_content=False, _request_timeout=self._timeout
            )
        except ApiException as e:
            if e.status == 404:
                return None
            raise
        lease: dict[str, Any] = json.loads(cast(Any, response).data)  # raw: _preload_content=False
        return lease

    def create(self, body: dict[str, Any]) -> dict[str, Any]:
        body = {**body, "metadata": {"name": self.name, "namespace": self.namespace}}
        return self._write(
            lambda: self._coordination.create_namespaced_lease(
                self.namespace, cast(Any, body), _preload_content=False, _request_timeout=self._timeout
            )
        )

    def replace(self, body: dict[str, Any]) -> dict[str, Any]:
        body = {
            **body,
            "metadata": {**body.get("metadata", {}), "name": self.name, "namespace": self.namespace},
        }
        return self._write(
            lambda: self._coordination.replace_namespaced_lease(
                self.name,
                self.namespace,
                cast(Any, body),
                _preload_content=False,
                _request_timeout=self._timeout,
            )
        )

    def _write(self, call: Callable[[], Any]) -> dict[str, Any]:
        try:
            response = call()
        except ApiException as e:
            if e.status == 409:  # created or written by another replica since we read it
                raise LeaseConflict(_api_error_text(e)) from e
            raise
        lease: dict[str, Any] = json.loads(response.data)
        return lease


@dataclass(frozen=True)
class Kind:
    """A resource the operator lists and watches."""

    group: str
    version: str
    plural: str
    label_selector: str | None = None  # only the objects carrying this label (e.g. our own Jobs)
    field_selector: str | None = None  # e.g. metadata.name=X: one object (the comparator's rollout)
    # Listed at resourceVersion 0: the apiserver's watch cache answers, a moment behind etcd (the watch
    # from the list's version brings what it missed). A field-selected list read from etcd reads every
    # object of the kind to pick the few: at a 10,000-rollout restart the aborted rollouts' list took
    # longer than the whole list it ran beside. Only for small selections: no pages from the cache.
    from_cache: bool = False

    def __str__(self) -> str:
        return f"{self.plural}.{self.group}"


DEPLOYMENTS = Kind("apps", "v1", "deployments")


def routed_kind(resource: Resource) -> Kind:
    """The kind a router's routed objects are listed and watched as (one informer per resource)."""
    return Kind(resource.group, resource.version, resource.plural)


ROLLOUTS = Kind(api.GROUP, api.VERSION, api.PLURAL)
# The rollouts a human aborted, by the CRD's selectable field: a few, listed in milliseconds.
ABORTED = Kind(api.GROUP, api.VERSION, api.PLURAL, field_selector=f"{api.ABORT_FIELD}=true", from_cache=True)


def claiming(field: str, name: str) -> Kind:
    """The rollouts whose `field` (a selectable claim field, traffic.registry) names object `name`."""
    return Kind(api.GROUP, api.VERSION, api.PLURAL, field_selector=f"{field}={name}", from_cache=True)


JOBS = Kind("batch", "v1", "jobs", label_selector=evaluation.ROLLOUT_LABEL)  # evaluation Jobs only


class Expired(Exception):
    """The apiserver no longer has the resourceVersion (410 Gone): list again."""


class ListWatchClient:
    """Blocking list and watch calls for the informer threads (informer.py), never for the event loop.

    Raw JSON dicts, not the client's model classes: a model per object costs far more time and memory
    than the few fields the operator keeps. Its own connection pool: a watch holds its connection for
    minutes and must not take one from the status and route writes."""

    def __init__(self, client: kubernetes.client.ApiClient) -> None:
        self._custom = kubernetes.client.CustomObjectsApi(client)

    @classmethod
    def from_environment(
        cls, connections: int, kubeconfig: str | None = None, identity: str | None = None
    ) -> ListWatchClient:
        return cls(_api_client(connections, kubeconfig, identity))

    def _get(self, kind: Kind, namespace: str | None, args: dict[str, Any], expired: str) -> Any:
        """A list or watch request; a 410 Gone is Expired(`expired`): the caller lists again."""
        if kind.label_selector is not None:
            args = {**args, "label_selector": kind.label_selector}
        if kind.field_selector is not None:
            args = {**args, "field_selector": kind.field_selector}
        try:
            # The custom-objects paths (/apis/GROUP/VERSION/...) serve built-in kinds of named groups too.
            if namespace is None:
                return self._custom.list_cluster_custom_object(kind.group, kind.version, kind.plural, **args)
            return self._custom.list_namespaced_custom_object(
                kind.group, kind.version, namespace, kind.plural, **args
            )
        except ApiException as e:
            if e.status == 410:
                raise Expired(f"{kind}: {expired}") from e
            raise

    def list_page(
        self, kind: Kind, namespace: str | None, limit: int, continue_token: str | None
    ) -> dict[str, Any]:
        """One page of a list (the same snapshot across pages, through the continue token)."""
        args: dict[str, Any] = {"limit": limit, "_preload_content": False, "_request_timeout": (10, 120)}
        if continue_token:
            args["_continue"] = continue_token
        elif kind.from_cache:
            args["resource_version"] = "0"
        response = self._get(kind, namespace, args, expired="list continue token expired")
        page: dict[str, Any] = json.loads(response.data)
        return page

    def read(self, kind: Kind, namespace: str, name: str) -> dict[str, Any] | None:
        """One object, None when there is none: only for the few rollouts acted on before the first
        lists are in (controller.Controller's early aborts); everything else reads the informers."""
        try:
            response = self._custom.get_namespaced_custom_object(
                kind.group,
                kind.version,
                namespace,
                kind.plural,
                name,
                _preload_content=False,
                _request_timeout=(10, 30),
            )
        except ApiException as e:
            if e.status == 404:
                return None
            raise
        obj: dict[str, Any] = json.loads(response.data)  # type: ignore[attr-defined]
        return obj

    def watch(
        self, kind: Kind, namespace: str | None, resource_version: str, timeout_s: int
    ) -> Iterator[dict[str, Any]]:
        """Watch events from `resource_version` until the server ends the watch after `timeout_s`;
        bookmarks included, so a quiet kind still moves its resourceVersion forward."""
        args: dict[str, Any] = {
            "watch": True,
            "resource_version": resource_version,
            "allow_watch_bookmarks": True,
            "timeout_seconds": timeout_s,
            "_preload_content": False,
            # A connection that goes silent longer than the server's own timeout is dead.
            "_request_timeout": (10, timeout_s + 30),
        }
        response = self._get(kind, namespace, args, expired=f"resourceVersion {resource_version} too old")
        try:
            for line in kubernetes.watch.watch.iter_resp_lines(response):
                if not line:
                    continue
                event: dict[str, Any] = json.loads(line)
                if event.get("type") == "ERROR":
                    status = event.get("object") or {}
                    if status.get("code") == 410:
                        raise Expired(f"{kind}: {status.get('message', 'resourceVersion too old')}")
                    raise RuntimeError(f"{kind}: watch error {status.get('code')}: {status.get('message')}")
                yield event
        finally:
            # Also when the consumer stops early: a half-read stream must not go back into the pool.
            response.close()
            response.release_conn()


def _retry_after(error: ApiException, attempt: int) -> float:
    headers = error.headers or {}
    try:
        return min(float(str(headers.get("Retry-After", ""))), 30.0)
    except ValueError:
        return min(0.5 * 2.0**attempt, 30.0)


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
    name: str,
    spec: dict[str, Any] | None,
    status: dict[str, Any] | None,
    metadata: dict[str, Any] | None = None,
) -> DeploymentState:
    spec, status = spec or {}, status or {}
    revision = template_hash(spec.get("template"))
    return DeploymentState(
        name=name,
        exists=True,
        template_hash=revision,
        replicas=int(spec.get("replicas", 1) or 0),
        available_replicas=int(status.get("availableReplicas", 0) or 0),
        ready_replicas=int(status.get("readyReplicas", 0) or 0),
        # Without the revision, so Deployments running the same agent share one (decisions add it).
        agent_version=agentversion.agent_version(spec.get("template")),
        changed_by=agentversion.changed_by(metadata),
    )
