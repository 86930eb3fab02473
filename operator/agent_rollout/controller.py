"""The operator's shell: informers (rollouts, Deployments, evaluation Jobs, and one per resource the
registered traffic routers route through, e.g. HTTPRoutes) feed one scheduler, whose workers run the
reconciler.

What wakes a rollout: a change a human or Git makes to it (spec, a verb), a change of a Deployment
or route it names, the fast check seeing a hard bound breached, its own timer (a pause's end, the
analysis interval). Our own status writes come back through the watch and wake nothing. Nothing is
reconciled before every informer has its first list: a rollout planned on a half-filled store would
see its Deployments as missing.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from agent_rollout import api, evaluation, metrics
from agent_rollout.clock import parse_time
from agent_rollout.deletion import FINALIZER, Finalizer
from agent_rollout.domain import DeploymentState
from agent_rollout.drill import drill_due
from agent_rollout.informer import Informer, Key
from agent_rollout.intent import ANNOTATION
from agent_rollout.kube import (
    ABORTED,
    DEPLOYMENTS,
    JOBS,
    ROLLOUTS,
    Conflict,
    Kind,
    KubeClient,
    ListWatchClient,
    claiming,
    deployment_state,
    routed_kind,
)
from agent_rollout.pacer import BUDGET, Pacer
from agent_rollout.reconcile import Reconciler, WrittenStatus
from agent_rollout.scheduler import AT_REST, LIVE, NEW, NOW, URGENCY_NAMES, Scheduler
from agent_rollout.sentinel import Sentinel
from agent_rollout.traffic import registry
from agent_rollout.traffic.router import Resource

log = logging.getLogger(__name__)

# The kinds the controller lists and watches (rollouts, the aborted ones on their own until every list
# is in, Deployments, evaluation Jobs, and each routed resource of the registered routers): each holds
# one watch connection per namespace.
INFORMER_KINDS = 4 + len(registry.resources())
# Rollouts reconciled at once. A reconcile mostly waits (on a building block Prometheus is computing,
# on the API budget), and waiters of one block share its answer, so a waiting worker costs a coroutine.
# With 32, 10,000 live rollouts on a 30s interval kept every worker waiting on a busy Prometheus
# (333 reconciles a second, each waiting a second or more), and new rollouts, ranked after live ones,
# waited for a free worker for minutes.
WORKERS = 256
# Aborts acted on before the first lists are in, each reading its two Deployments and its route by GET
# (at 10,000 rollouts listing 40,000 objects takes seconds, and an abort must not wait for them). More
# than this at once wait for the lists: a mass abort is a reason to read everything anyway.
EARLY_ABORTS = 50
# GETs of those aborts' targets at once, on the list/watch client, whose pool has a connection each
# (besides the watches'): unbounded, five aborts at a 10,000-rollout restart logged "connection pool
# is full" on a pool sized for the watches only.
EARLY_READS = 8
# The aborted rollouts' own watch lasts until every list is in; a short server timeout lets its thread
# see that it was stopped soon after (it holds a connection of the pool until then).
ABORTED_WATCH_S = 30


@dataclass(frozen=True, slots=True)
class StoredRollout:
    """A rollout as the store keeps it: its JSON (a fraction of the memory of the parsed dict; parsed
    again for each reconcile, which costs microseconds) and what the shell decides on without it."""

    raw: bytes
    attention: tuple[Any, ...]  # what a human or Git changes; our own status writes do not
    urgency: int
    route: str | None  # the routed object's name
    route_resource: Resource | None  # its router's resource (one object shared by every rollout)
    deployments: tuple[str, ...]
    created: str
    deleting: bool
    finalized: bool  # carries our finalizer (deletion.py)
    gauge: metrics.RolloutGauge  # what the metrics collector reads at scrape time

    @classmethod
    def of(cls, obj: dict[str, Any]) -> StoredRollout:
        meta = obj.get("metadata") or {}
        meta.pop("managedFields", None)  # the biggest part of most objects, and never read
        obj.setdefault("apiVersion", f"{api.GROUP}/{api.VERSION}")  # list items may come without them
        obj.setdefault("kind", api.KIND)
        spec = obj.get("spec") or {}
        status = obj.get("status") or {}
        verbs = tuple(status.get(v) is True for v in ("abort", "promote", "retry", "recordBaseline"))
        routed = registry.routed_object(spec.get("traffic"))
        names = [(spec.get(side) or {}).get("deployment") for side in ("legacy", "candidate")]
        return cls(
            raw=json.dumps(obj, separators=(",", ":")).encode(),
            attention=(meta.get("generation"), *verbs),
            urgency=_urgency(meta, status, any(verbs)),
            route=routed[1] if routed is not None else None,
            route_resource=routed[0].resource if routed is not None else None,
            deployments=tuple(sorted({n for n in names if isinstance(n, str)})),
            created=str(meta.get("creationTimestamp") or ""),
            deleting=bool(meta.get("deletionTimestamp")),
            finalized=FINALIZER in (meta.get("finalizers") or ()),
            gauge=_gauge(status, _candidate_version(spec), _drill_due(spec, status)),
        )

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = json.loads(self.raw)
        return body

    @property
    def aborting(self) -> bool:
        """A human's abort waits in status.abort (consumed by the reconcile that routes it)."""
        return self.attention[1] is True


def _urgency(meta: dict[str, Any], status: dict[str, Any], verb: bool) -> int:
    if verb or (status and meta.get("generation") != status.get("observedGeneration")):
        return NOW
    phase = status.get("phase")
    if phase in (api.Phase.PROGRESSING, api.Phase.PAUSED):
        return LIVE
    if phase in (None, api.Phase.PENDING):
        return NEW
    return AT_REST


def _candidate_version(spec: dict[str, Any]) -> str | None:
    """The candidate's value of the version label in the agents' own metrics, as the templates read it:
    analysis.metrics.candidateVersion, else the candidate Deployment's name."""
    analysis = spec.get("analysis") or {}
    named = (analysis.get("metrics") or {}).get("candidateVersion") if isinstance(analysis, dict) else None
    version = named if isinstance(named, str) else (spec.get("candidate") or {}).get("deployment")
    return version if isinstance(version, str) else None


def _drill_due(spec: dict[str, Any], status: dict[str, Any]) -> float | None:
    """When a rollout that requires drills (readiness.requireDrill) needs its next passed one
    (drill.drill_due), 0 if none passed; None when it requires none (or the spec is unreadable)."""
    required = ((spec.get("readiness") or {}).get("requireDrill") or {}) if isinstance(spec, dict) else {}
    if not isinstance(required, dict) or not required:
        return None
    finished = (status.get("passedDrill") or {}).get("finishedAt")
    try:
        due = drill_due(str(required.get("maxAge", "30d")), finished if isinstance(finished, str) else None)
    except ValueError:
        return None
    return due.timestamp() if due is not None else 0.0


def _gauge(
    status: dict[str, Any], candidate_version: str | None = None, drill_due: float | None = None
) -> metrics.RolloutGauge:
    phase = status.get("phase")
    weights = status.get("weights") or {}
    candidate = weights.get("candidate") if isinstance(weights, dict) else None
    started_at = status.get("stepStartedAt")
    started = parse_time(started_at) if isinstance(started_at, str) else None
    return metrics.RolloutGauge(
        # The enum's own string, shared by every rollout, not a copy per parsed status.
        phase=(_PHASES.get(phase) if isinstance(phase, str) else None) or api.Phase.PENDING.value,
        candidate_weight=candidate if isinstance(candidate, int) else 0,
        step_started=started.timestamp() if started is not None else None,
        candidate_version=candidate_version,
        drill_due=drill_due,
    )


_PHASES = {p.value: p.value for p in api.Phase}


def _observe_queue_wait(urgency: int, seconds: float) -> None:
    metrics.QUEUE_WAIT_SECONDS.labels(URGENCY_NAMES.get(urgency, str(urgency))).observe(seconds)


def _aborted_only(obj: dict[str, Any]) -> StoredRollout | None:
    """The aborted rollouts' store keeps only aborted ones, whatever a list or watch brings."""
    stored = StoredRollout.of(obj)
    return stored if stored.aborting else None


def _oldest(claims: dict[str, str] | None) -> str | None:
    """A routed object's owner among the rollouts claiming it, {name: creationTimestamp}: the oldest,
    then the first by name, the same answer in every reconcile."""
    return min((created, name) for name, created in claims.items())[1] if claims else None


def _owner_of(
    owned: tuple[Resource, str, str], owner: str | None
) -> Callable[[Resource, str, str], str | None]:
    """A route-owner lookup that knows one routed object's owner (an early abort's own route)."""

    def lookup(resource: Resource, namespace: str, route: str) -> str | None:
        return owner if (resource, namespace, route) == owned else None

    return lookup


def _routed(rollout: StoredRollout) -> tuple[Resource, str] | None:
    return (rollout.route_resource, rollout.route) if rollout.route_resource and rollout.route else None


def project_deployment(obj: dict[str, Any]) -> DeploymentState:
    meta = obj.get("metadata") or {}
    return deployment_state(str(meta.get("name")), obj.get("spec"), obj.get("status"), meta)


def project_route(obj: dict[str, Any]) -> dict[str, Any]:
    """Only what the router reads: the spec, our write-ahead record, and what a patch must pin."""
    meta = obj.get("metadata") or {}
    annotations = meta.get("annotations")
    metadata: dict[str, Any] = {"resourceVersion": meta.get("resourceVersion")}
    if annotations is not None:
        metadata["annotations"] = {ANNOTATION: annotations[ANNOTATION]} if ANNOTATION in annotations else {}
    return {"spec": obj.get("spec") or {}, "metadata": metadata}


class Controller:
    def __init__(
        self,
        reconciler: Reconciler,
        sentinel: Sentinel,
        kube: KubeClient,
        client: ListWatchClient,
        namespaces: Sequence[str] | None = None,
        workers: int = WORKERS,
        leading: asyncio.Event | None = None,
        pace: float = BUDGET,
    ) -> None:
        """`pace`: seconds of routine reconciles one turn of the event loop starts (pacer.py); 0: unpaced."""
        self._reconciler = reconciler
        # Set once this replica holds the lease (leader.py); None: no leader election, always leading.
        self._leading = leading
        self._sentinel = sentinel
        self._kube = kube
        self.scheduler: Scheduler[Key] = Scheduler(
            self._reconcile,
            workers,
            urgency_of=self._urgency_of,
            waited=_observe_queue_wait,
            pacer=Pacer(pace) if pace > 0 else None,
        )
        self.rollouts: Informer[StoredRollout] = Informer(
            ROLLOUTS, client, StoredRollout.of, self._rollout_changed, namespaces
        )
        # The aborted rollouts alone (a field selector on status.abort), listed beside every rollout at
        # start: an abort at a restart need not wait for the list of them all (5.7 s of the 8.3 s it
        # took at 10,000). Stopped once every list is in, when `rollouts` has them all.
        self.aborted: Informer[StoredRollout] = Informer(
            ABORTED,
            client,
            _aborted_only,
            self._aborted_changed,
            namespaces,
            watch_timeout_s=ABORTED_WATCH_S,
            on_readable=self._aborted_readable,
        )
        self.deployments: Informer[DeploymentState] = Informer(
            DEPLOYMENTS, client, project_deployment, self._target_changed("deployment"), namespaces
        )
        # One informer per routed resource: a router on its own resource needs nothing else here.
        self.routes: dict[Resource, Informer[dict[str, Any]]] = {
            resource: Informer(
                routed_kind(resource), client, project_route, self._target_changed(str(resource)), namespaces
            )
            for resource in registry.resources()
        }
        # Only Jobs labelled as our evaluation Jobs: a change wakes the rollout named in the label.
        self.jobs: Informer[evaluation.JobState] = Informer(
            JOBS, client, evaluation.project_job, self._job_changed, namespaces
        )
        # (kind, namespace, name) -> the rollouts naming that Deployment ("deployment") or routed object
        # (its resource, as plural.group: two routers' objects may share a name in one namespace).
        self._targets: dict[tuple[str, str, str], set[str]] = {}
        # (resource, namespace, route) -> {rollout: creationTimestamp}: the oldest one owns the object.
        self._claims: dict[tuple[str, str, str], dict[str, str]] = {}
        self._written: dict[Key, WrittenStatus] = {}
        self._finalizer = Finalizer(kube, kube.post_event_soon)
        # Finalizer added, the watch has not brought it yet (so it is not added twice meanwhile).
        self._finalized: set[Key] = set()
        self.listed = asyncio.Event()  # every informer has its first list (`synced`; heap.py waits for it)
        # Rollouts not reconciled yet since start: when none is left, the start-up pass is over (logged
        # with its duration, the figure an operator restart is judged by).
        self._unvisited: set[Key] = set()
        self._started = 0.0
        self._client = client
        # Aborts reconciled before every informer has its first list (_abort_early), by rollout.
        self._early: dict[Key, asyncio.Task[None]] = {}
        self._early_open = False  # the rollouts are listed (claims known), the rest may not be
        self._early_reads = asyncio.Semaphore(EARLY_READS)
        self._opening: asyncio.Task[None] | None = None

    async def run(self) -> None:
        self._started = time.monotonic()
        informers = self._informers()
        # The rollouts are listed first, on their own: an abort waits for them only (_open_early), and
        # at 10,000 rollouts their list shared the apiserver and the GIL with 20,000 Deployments and
        # 10,000 routes, and an abort patched at a restart reached the route 12.7 s after start.
        self.aborted.start()
        self.rollouts.start()
        opening = self._opening = asyncio.get_running_loop().create_task(self._open_early())
        await self.rollouts.synced.wait()
        for informer in informers:
            if informer is not self.rollouts:
                informer.start()
        await asyncio.gather(*(i.synced.wait() for i in informers))
        self.listed.set()
        self.aborted.stop()
        log.info(
            "watching %d AgentRollouts, %d Deployments, %s; reconciling, most urgent first",
            len(self.rollouts),
            len(self.deployments),
            ", ".join(f"{len(informer)} {resource.kind}s" for resource, informer in self.routes.items()),
        )
        if self._leading is not None and not self._leading.is_set():
            # A standby keeps its informers warm and writes nothing (no reconcile: no route, status or
            # Event); a leader that loses the lease ends the process (leader.py), so this never goes back.
            log.info("standby: waiting for the lease before reconciling anything")
            await self._leading.wait()
            log.info("leading: reconciling, most urgent first")
            self._started = time.monotonic()  # the start-up pass of a takeover counts from the takeover
        # The aborts found when the rollouts were listed (and this replica leads) are always taken on
        # GET reads, whether or not the other lists came first: one rule at every start. One still
        # running finishes before the scheduler may reconcile the same rollout.
        await opening
        await asyncio.gather(*self._early.values(), return_exceptions=True)
        self._early.clear()
        self._unvisited = {key for key, _ in self.rollouts.items()}
        self.scheduler.start()

    @property
    def synced(self) -> bool:
        return self.listed.is_set()

    @property
    def active(self) -> bool:
        """Listed everything and leads: what the alert receiver waits for before it takes alerts."""
        return self.synced and (self._leading is None or self._leading.is_set())

    async def stop(self) -> None:
        if self._opening is not None:
            self._opening.cancel()
        for task in self._early.values():
            task.cancel()
        self.aborted.stop()
        for informer in self._informers():
            informer.stop()
        await self.scheduler.stop()

    def wake(self, key: Key) -> None:
        """Reconcile now (the fast check saw a hard bound breached)."""
        if key in self.scheduler:
            self.scheduler.wake(key, NOW)

    def gauges(self) -> Iterator[tuple[Key, metrics.RolloutGauge]]:
        """Every stored rollout's gauge values (metrics.StoreCollector, at scrape time)."""
        for key, stored in self.rollouts.items():
            yield key, stored.gauge

    def queued(self) -> int:
        return self.scheduler.pending()

    def _informers(self) -> tuple[Informer[Any], ...]:
        return (self.rollouts, self.deployments, *self.routes.values(), self.jobs)

    def route(self, resource: Resource, namespace: str, name: str) -> dict[str, Any] | None:
        """A routed object as its resource's informer has it (reconcile.RouteLookup)."""
        informer = self.routes.get(resource)
        return informer.get(namespace, name) if informer is not None else None

    def route_owner(self, resource: Resource, namespace: str, route: str) -> str | None:
        return _oldest(self._claims.get((str(resource), namespace, route)))

    # -- reconcile

    async def _reconcile(self, key: Key) -> float | None:
        try:
            return await self._reconcile_stored(key)
        finally:
            if self._unvisited:
                self._unvisited.discard(key)
                if not self._unvisited:
                    log.info(
                        "start-up pass done: every rollout reconciled once, %.1f s after start",
                        time.monotonic() - self._started,
                    )

    async def _open_early(self) -> None:
        """Aborts need not wait for the lists (_abort_early): once this replica leads, every aborted
        rollout listed so far, and each one the watch brings, is reconciled on reads of its own."""
        if self._leading is not None:
            await self._leading.wait()  # a standby writes nothing
        self._early_open = True
        for key, _ in list(self.aborted.items()):
            self._abort_early(key)
        # An apiserver that cannot select rollouts by status.abort (before Kubernetes 1.31): the aborts
        # are found in the list of every rollout instead.
        await self.rollouts.synced.wait()
        if not self.aborted.synced.is_set():
            for key, stored in list(self.rollouts.items()):
                if stored.aborting:
                    self._abort_early(key)

    def _aborted_changed(self, key: Key, before: StoredRollout | None, after: StoredRollout | None) -> None:
        if after is not None and self._early_open and not self.synced:
            self._abort_early(key)

    def _aborted_readable(self, error: Exception | None) -> None:
        if getattr(error, "status", None) == 400:  # "field label not supported": an older apiserver
            log.warning(
                "this apiserver cannot list AgentRollouts by %s (Kubernetes 1.31+ can): an abort at a "
                "start waits for the list of every rollout",
                api.ABORT_FIELD,
            )
            self.aborted.stop()

    def _abort_early(self, key: Key) -> None:
        if key in self._early or len(self._early) >= EARLY_ABORTS:
            return
        self._early[key] = asyncio.get_running_loop().create_task(self._reconcile_early(key))

    async def _reconcile_early(self, key: Key) -> None:
        """One reconcile of an aborted rollout on its Deployments and route read by GET (and, before
        every rollout is listed, the route's owner from the rollouts claiming it, listed by field): the
        planner decides as always (legacy missing, another rollout's route: no route write)."""
        listed = self.rollouts.synced.is_set()
        stored = (self.rollouts if listed else self.aborted).get(*key)
        if stored is None or stored.deleting:
            return
        namespace = key[0]

        async def get(kind: Kind, name: str) -> dict[str, Any] | None:
            async with self._early_reads:
                return await asyncio.to_thread(self._client.read, kind, namespace, name)

        route_owner: Callable[[Resource, str, str], str | None] = self.route_owner
        try:
            states = await asyncio.gather(*(get(DEPLOYMENTS, d) for d in stored.deployments))
            route = None
            if stored.route is not None and stored.route_resource is not None:
                route = await get(routed_kind(stored.route_resource), stored.route)
                if not listed:
                    async with self._early_reads:
                        claims = await asyncio.to_thread(
                            self._claims_listed, stored.route_resource, namespace, stored.route
                        )
                    route_owner = _owner_of((stored.route_resource, namespace, stored.route), _oldest(claims))
        except Exception as e:  # the lists will bring them; the abort is reconciled then
            log.warning("%s/%s: abort before the first lists: reading its targets failed: %s", *key, e)
            return
        deployments = {
            name: project_deployment(obj)
            for name, obj in zip(stored.deployments, states, strict=True)
            if obj is not None
        }
        routed = project_route(route) if route is not None else None

        def route_lookup(resource: Resource, ns: str, name: str) -> dict[str, Any] | None:
            same = (resource, ns, name) == (stored.route_resource, namespace, stored.route)
            return routed if same else None

        log.info("%s/%s: abort reconciled before the first lists are in", *key)
        try:
            await self._reconcile_stored(
                key,
                lambda ns, name: deployments.get(name) if ns == namespace else None,
                route_lookup,
                stored,
                route_owner,
            )
        except Exception:
            log.exception("%s/%s: abort before the first lists failed; it is reconciled after them", *key)

    async def _reconcile_stored(
        self,
        key: Key,
        deployments: Callable[[str, str], DeploymentState | None] | None = None,
        routes: Callable[[Resource, str, str], dict[str, Any] | None] | None = None,
        stored: StoredRollout | None = None,
        route_owner: Callable[[Resource, str, str], str | None] | None = None,
    ) -> float | None:
        """One reconcile on the informers' stores, or (before they are in) on what is given."""
        deployments = deployments or self.deployments.get
        routes = routes or self.route
        route_owner = route_owner or self.route_owner
        stored = stored or self.rollouts.get(*key)
        if stored is None:
            return None
        body = stored.body()
        if stored.deleting:
            return await self._finalizer.release(body, deployments, routes, route_owner)
        if stored.finalized:
            self._finalized.discard(key)  # the watch has it: no entry kept per rollout for nothing

        async def finalize() -> None:
            # Before any route write: a deletion from now on waits for traffic to be sent to legacy.
            # Not before: a rollout that never moved traffic has nothing to undo, and at 10,000 new
            # rollouts a finalizer write each, ahead of their first status, was a third of start-up.
            if not stored.finalized and key not in self._finalized:
                await self._finalizer.add(body)
                self._finalized.add(key)

        written = self._written.setdefault(key, WrittenStatus())
        started = time.monotonic()
        try:
            delay = await self._reconciler.reconcile(
                body,
                deployments=deployments,
                routes=routes,
                written=written,
                route_owner=route_owner,
                planned=lambda spec, status, source: self._sentinel.update(key, spec, status, source),
                jobs=self.jobs.get,
                before_route_write=finalize,
            )
            self.scheduler.deadline(key, written.decision_in)
            return delay
        except Conflict as e:  # the finalizer's write: the rollout changed since it was read
            log.info("%s/%s: %s; will retry on fresh data", *key, e)
            return 1.0
        except Exception:
            metrics.RECONCILE_ERRORS.inc()
            raise
        finally:
            metrics.RECONCILE_SECONDS.observe(time.monotonic() - started)

    def _claims_listed(self, resource: Resource, namespace: str, route: str) -> dict[str, str]:
        """The rollouts claiming a routed object, {name: creationTimestamp}, listed by its claim field
        (in a thread): the same claims the index of every rollout would hold."""
        claims: dict[str, str] = {}
        for field in registry.claim_fields(resource):
            token: str | None = None
            while True:
                page = self._client.list_page(claiming(field, route), namespace, 500, token)
                for obj in page.get("items") or ():
                    # The index's own reading of a claim, without parsing a whole StoredRollout.
                    routed = registry.routed_object((obj.get("spec") or {}).get("traffic"))
                    if routed is not None and (routed[0].resource, routed[1]) == (resource, route):
                        meta = obj.get("metadata") or {}
                        claims[str(meta.get("name"))] = str(meta.get("creationTimestamp") or "")
                token = (page.get("metadata") or {}).get("continue")
                if not token:
                    break
        return claims

    def _urgency_of(self, key: Key) -> int:
        """The rank of a run its timer made due (a decision falling due, such as a pause's end, has a
        timer of its own that ranks it DUE: Scheduler.deadline)."""
        stored = self.rollouts.get(*key)
        return AT_REST if stored is None else stored.urgency

    # -- change handlers (on the event loop)

    def _rollout_changed(self, key: Key, before: StoredRollout | None, after: StoredRollout | None) -> None:
        namespace, name = key
        if before is not None:
            self._index(namespace, name, before, add=False)
        if after is not None:
            self._index(namespace, name, after, add=True)
        if after is None:
            self._unvisited.discard(key)
            self.scheduler.forget(key)
            self._sentinel.forget(key)
            self._written.pop(key, None)
            self._finalized.discard(key)
        elif before is None:
            self.scheduler.wake(key, after.urgency)
        elif after.attention != before.attention or after.deleting != before.deleting:
            self.scheduler.wake(key, NOW)
        # (Once the aborted rollouts are listed on their own, their own watch brings each abort.)
        early = self._early_open and not self.synced and not self.aborted.synced.is_set()
        if after is not None and after.aborting and early:
            self._abort_early(key)
        # A claim that came or went may hand the routed object to another rollout.
        routed = [_routed(r) if r is not None else None for r in (before, after)]
        if (before is None or after is None or routed[0] != routed[1]) and self.synced:
            for resource, route in {r for r in routed if r is not None}:
                self._wake_targets((str(resource), namespace, route), but=name)

    def _index(self, namespace: str, name: str, rollout: StoredRollout, add: bool) -> None:
        targets = [("deployment", namespace, d) for d in rollout.deployments]
        if rollout.route is not None and rollout.route_resource is not None:
            target = (str(rollout.route_resource), namespace, rollout.route)
            targets.append(target)
            claims = self._claims.setdefault(target, {})
            if add:
                claims[name] = rollout.created
            else:
                claims.pop(name, None)
                if not claims:
                    del self._claims[target]
        for target in targets:
            names = self._targets.setdefault(target, set())
            if add:
                names.add(name)
            else:
                names.discard(name)
                if not names:
                    del self._targets[target]

    def _target_changed(self, kind: str) -> Any:
        def changed(key: Key, before: Any, after: Any) -> None:
            # Before the first lists are in, every rollout is due anyway (and ranked by urgency).
            if self.synced:
                self._wake_targets((kind, *key))

        return changed

    def _job_changed(
        self, key: Key, before: evaluation.JobState | None, after: evaluation.JobState | None
    ) -> None:
        job = after or before
        if self.synced and job is not None and job.rollout:
            self.scheduler.wake((key[0], job.rollout), NOW)

    def _wake_targets(self, target: tuple[str, str, str], but: str | None = None) -> None:
        for name in self._targets.get(target, ()):
            if name != but:
                self.scheduler.wake((target[1], name), NOW)
