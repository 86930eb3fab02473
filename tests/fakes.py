"""In-memory stand-ins for the Kubernetes API and Prometheus, for tests of the reconcile shell.

`FakeKube` stores whole objects and applies our writes the way the API server would: the status write
as a JSON merge patch (RFC 7386, implemented here independently of agent_rollout.statuspatch so a bug
there cannot hide), the route write as a JSON patch whose failed `test` op is a Conflict. Every write
is recorded in order, so tests assert on what was stored and on how many writes it took.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, TypeVar

import jsonpatch

from agent_rollout.analysis.batch import BatchReader
from agent_rollout.analysis.prometheus import PrometheusGateway, PrometheusUnavailable
from agent_rollout.kube import Conflict, KubeClient
from agent_rollout.traffic.router import Resource

Key = tuple[str, str]
T = TypeVar("T")


def apply_merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: objects merge recursively, null deletes, anything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = apply_merge_patch(result.get(key), value)
    return result


@dataclass(frozen=True)
class Write:
    kind: Literal["status", "route"]
    namespace: str
    name: str
    body: Any  # the merge patch (status) or the JSON patch ops (route)
    priority: int | None = None  # a status write's rank in the API budget (kube.TRAFFIC...REFRESH)


@dataclass
class FakeKube(KubeClient):
    """The API server's storage for AgentRollouts and HTTPRoutes, with resourceVersions."""

    rollouts: dict[Key, dict[str, Any]] = field(default_factory=dict)
    routes: dict[Key, dict[str, Any]] = field(default_factory=dict)
    writes: list[Write] = field(default_factory=list)
    route_resources: list[Resource] = field(default_factory=list)  # the resource of each route patch
    conflicts: int = 0
    # Called just before a status patch is applied: someone else writing "meanwhile".
    before_status_patch: Callable[[], None] | None = None
    # Raised by every route write while set: what the API server answers (RouteWriteError, Conflict).
    route_refusal: Exception | None = None
    # Raised by every status write while set: a crash or a refused write between the two writes.
    status_refusal: Exception | None = None
    # Evaluation Jobs by (namespace, name), and the termination message their pod left.
    jobs: dict[Key, dict[str, Any]] = field(default_factory=dict)
    job_creates: int = 0  # create calls, including those answered 409 AlreadyExists
    pod_messages: dict[Key, str] = field(default_factory=dict)
    _version: int = 1000

    def _next_version(self) -> str:
        self._version += 1
        return str(self._version)

    def create_rollout(self, body: dict[str, Any]) -> None:
        stored = copy.deepcopy(body)
        stored["metadata"]["resourceVersion"] = self._next_version()
        stored["metadata"].setdefault("generation", 1)
        self.rollouts[(stored["metadata"]["namespace"], stored["metadata"]["name"])] = stored

    def rollout(self, namespace: str, name: str) -> dict[str, Any]:
        """The object as a watch would deliver it now (a copy: the shell must not rely on aliasing)."""
        return copy.deepcopy(self.rollouts[(namespace, name)])

    def edit_rollout(self, namespace: str, name: str, change: Callable[[dict[str, Any]], None]) -> None:
        """Someone else (a human, Git) changes the object; the resourceVersion moves."""
        stored = self.rollouts[(namespace, name)]
        change(stored)
        stored["metadata"]["resourceVersion"] = self._next_version()

    def route_spec(self, namespace: str, name: str) -> dict[str, Any] | None:
        stored = self.routes.get((namespace, name))
        return copy.deepcopy(stored["spec"]) if stored is not None else None

    def route_view(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The route as the operator's index holds it: spec, resourceVersion and annotations."""
        stored = self.routes.get((namespace, name))
        if stored is None:
            return None
        return {
            "spec": copy.deepcopy(stored["spec"]),
            "metadata": copy.deepcopy(stored.get("metadata") or {}),
        }

    def writes_of(self, kind: Literal["status", "route"]) -> list[Write]:
        return [w for w in self.writes if w.kind == kind]

    async def patch_rollout_status(
        self, namespace: str, name: str, patch: dict[str, Any], priority: int = 2
    ) -> dict[str, Any]:
        if self.before_status_patch is not None:
            self.before_status_patch()
        if self.status_refusal is not None:
            raise self.status_refusal
        stored = self.rollouts[(namespace, name)]
        stored["status"] = apply_merge_patch(stored.get("status") or {}, copy.deepcopy(patch))
        stored["metadata"]["resourceVersion"] = self._next_version()
        self.writes.append(Write("status", namespace, name, copy.deepcopy(patch), priority))
        return copy.deepcopy(stored)

    async def patch_route(
        self, resource: Resource, namespace: str, name: str, ops: list[dict[str, Any]]
    ) -> None:
        if self.route_refusal is not None:
            raise self.route_refusal
        self.route_resources.append(resource)
        stored = self.routes[(namespace, name)]
        try:
            patched = jsonpatch.apply_patch(stored, ops)
        except (jsonpatch.JsonPatchTestFailed, jsonpatch.JsonPatchConflict) as e:
            # The API server answers 422 here, which kube.KubeClient turns into Conflict.
            self.conflicts += 1
            raise Conflict(f"{resource.kind} {namespace}/{name} changed while patching: {e}") from e
        patched.setdefault("metadata", {})["resourceVersion"] = self._next_version()
        self.routes[(namespace, name)] = patched
        self.writes.append(Write("route", namespace, name, copy.deepcopy(ops)))

    async def create_job(self, manifest: dict[str, Any]) -> None:
        """As the API server: a second create of the same name is AlreadyExists, which the client takes."""
        self.job_creates += 1
        key = (manifest["metadata"]["namespace"], manifest["metadata"]["name"])
        self.jobs.setdefault(key, copy.deepcopy(manifest))

    async def termination_message(self, namespace: str, job: str) -> str | None:
        return self.pod_messages.get((namespace, job))


# A scalar query's answer (a number, or None for an empty result), or a building block's series.
Reply = float | None | list[tuple[dict[str, str], float]]
Answer = Mapping[str, Reply] | Callable[[str], Reply]


class FakePrometheus(PrometheusGateway):
    """Answers PromQL from a dict (an unknown query is a test bug: KeyError) or a function. Only the
    HTTP call is faked: building blocks still go through a BatchReader (ttl 0: nothing is reused
    between reconciles) and every answer through the real parsing."""

    def __init__(self, answer: Answer) -> None:
        super().__init__("http://fake-prometheus:9090", reader=BatchReader(ttl=0, gather=0))
        self.answer = answer
        self.down: str | None = None  # set to make every query fail as PrometheusGateway would
        self.queries: list[str] = []
        # Prometheus' parse error for a query (format_query), None when it parses.
        self.rejects: Callable[[str], str | None] = lambda promql: None
        self.checked: list[str] = []

    async def check(self, promql: str) -> str | None:
        self.checked.append(promql)
        if self.down is not None:
            raise PrometheusUnavailable(self.down)
        return self.rejects(promql)

    async def _run(self, promql: str, parse: Callable[[Any], T], urgent: bool = False) -> T:
        self.queries.append(promql)
        if self.down is not None:
            raise PrometheusUnavailable(self.down)
        # A focused block (Block.focused) is answered as Prometheus would: the whole block's series
        # that its two regex matchers select.
        plain, selects = unfocused(promql)
        reply = self.answer(plain) if callable(self.answer) else self.answer[plain]
        if reply is None:
            return parse([])
        if isinstance(reply, list):
            return parse(
                [{"metric": labels, "value": [0, repr(value)]} for labels, value in reply if selects(labels)]
            )
        return parse([{"metric": {}, "value": [0, repr(reply)]}])


_FOCUS_MATCHERS = re.compile(r',?(\w+)=~"((?:[^"\\]|\\.)*)",(\w+)=~"((?:[^"\\]|\\.)*)"')


def unfocused(promql: str) -> tuple[str, Callable[[Mapping[str, str]], bool]]:
    """The whole block's query of a focused one, and which series its matchers keep."""
    found = _FOCUS_MATCHERS.search(promql)
    if found is None:
        return promql, lambda labels: True
    plain = (promql[: found.start()] + promql[found.end() :]).replace("{}", "")

    def unescape(text: str) -> str:  # a PromQL string's content as the regex it holds
        return re.sub(r"\\(.)", lambda m: {"n": "\n", "r": "\r", "t": "\t"}.get(m[1], m[1]), text)

    wanted = [(found[1], re.compile(unescape(found[2]))), (found[3], re.compile(unescape(found[4])))]
    return plain, lambda labels: all(rx.fullmatch(labels.get(name, "")) for name, rx in wanted)


@dataclass
class FakeClock:
    now: datetime = field(default_factory=lambda: datetime(2026, 3, 1, 12, 0, tzinfo=UTC))

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@dataclass
class EventLog:
    events: list[tuple[str, str, str]] = field(default_factory=list)  # (type, reason, message)

    def __call__(self, body: Mapping[str, Any], type: str, reason: str, message: str) -> None:
        self.events.append((type, reason, message))

    def reasons(self) -> list[str]:
        return [reason for _, reason, _ in self.events]
