"""Follow an HTTPRoute's backend weights and RequestMirror filters through a WATCH on the apiserver."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from kubernetes import client, watch

log = logging.getLogger(__name__)

GATEWAY_GROUP = "gateway.networking.k8s.io"
HTTPROUTE_VERSION = "v1"
HTTPROUTE_PLURAL = "httproutes"
WATCH_TIMEOUT_S = 2  # short server-side timeouts let the watcher notice stop() quickly


@dataclass(frozen=True)
class Mirror:
    """A RequestMirror filter: numerator/denominator of the requests also go to `service`.

    backend None: a filter of the rule (every request of the rule); otherwise a filter of that
    backendRef, applied only to the requests routed to it.
    """

    service: str
    numerator: int = 1
    denominator: int = 1
    backend: str | None = None

    @property
    def share(self) -> float:
        return self.numerator / self.denominator

    def applies_to(self, service: str) -> bool:
        return self.backend is None or self.backend == service


@dataclass(frozen=True)
class RouteWeights:
    """One observed state of the route. generation counts changes seen by this watcher (0 = none yet)."""

    generation: int
    weights: Mapping[str, int]  # backend Service name -> weight, in backendRefs order
    observed_at: float  # time.monotonic() when the watcher saw it
    resource_version: str = ""
    mirrors: tuple[Mirror, ...] = ()
    services: tuple[str, ...] = field(init=False)
    cumulative: tuple[int, ...] = field(init=False)

    def __post_init__(self) -> None:
        running, cumulative = 0, []
        for w in self.weights.values():
            running += w
            cumulative.append(running)
        object.__setattr__(self, "services", tuple(self.weights))
        object.__setattr__(self, "cumulative", tuple(cumulative))

    @property
    def total(self) -> int:
        return self.cumulative[-1] if self.cumulative else 0


def weights_from_route(route: Mapping[str, Any] | None) -> dict[str, int]:
    """Weights of the first rule's Service backendRefs (the rule a canary route splits on).

    Gateway API defaults a missing weight to 1; weight 0 means no traffic. Repeated names add up.
    """
    if not route:
        return {}
    rules = route.get("spec", {}).get("rules") or []
    if not rules:
        return {}
    out: dict[str, int] = {}
    for ref in rules[0].get("backendRefs") or []:
        if not _is_service(ref):
            continue
        out[ref["name"]] = out.get(ref["name"], 0) + int(ref.get("weight", 1))
    return out


def _is_service(ref: Mapping[str, Any]) -> bool:
    return ref.get("kind", "Service") == "Service" and ref.get("group", "") in ("", "core")


def _mirrors(filters: Any, backend: str | None) -> list[Mirror]:
    """The RequestMirror filters of a filter list, as a gateway reads them.

    Gateway API: percent N mirrors N/100, fraction numerator/denominator (denominator defaults
    to 100), neither mirrors every request. Mirrors to anything but a Service are ignored, as the
    weights ignore such backends.
    """
    out: list[Mirror] = []
    for f in filters or []:
        spec = f.get("requestMirror") or {}
        ref = spec.get("backendRef") or {}
        if f.get("type") != "RequestMirror" or not ref.get("name") or not _is_service(ref):
            continue
        if "percent" in spec:
            numerator, denominator = int(spec["percent"]), 100
        elif "fraction" in spec:
            numerator = int(spec["fraction"]["numerator"])
            denominator = int(spec["fraction"].get("denominator", 100))
        else:
            numerator, denominator = 1, 1
        out.append(Mirror(ref["name"], numerator, denominator, backend))
    return out


def mirrors_from_route(route: Mapping[str, Any] | None) -> tuple[Mirror, ...]:
    """The RequestMirror filters of the first rule (the one weights_from_route reads) and its backendRefs."""
    if not route:
        return ()
    rules = route.get("spec", {}).get("rules") or []
    if not rules:
        return ()
    out = _mirrors(rules[0].get("filters"), None)
    for ref in rules[0].get("backendRefs") or []:
        if _is_service(ref):
            out += _mirrors(ref.get("filters"), ref["name"])
    return tuple(out)


class RouteWatcher:
    """A daemon thread that calls on_change(weights, mirrors, resource_version) whenever either differs."""

    def __init__(
        self,
        api_client: client.ApiClient,
        namespace: str,
        name: str,
        on_change: Callable[[dict[str, int], tuple[Mirror, ...], str], None],
    ) -> None:
        self._api = client.CustomObjectsApi(api_client)
        self._namespace = namespace
        self._name = name
        self._on_change = on_change
        self._stop = threading.Event()
        self._last: tuple[dict[str, int], tuple[Mirror, ...]] | None = None
        self._thread = threading.Thread(target=self._run, name=f"route-watch-{namespace}/{name}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout_s: float = WATCH_TIMEOUT_S + 1.0) -> None:
        self._stop.set()
        self._thread.join(timeout_s)

    def _apply(self, route: Mapping[str, Any] | None, resource_version: str) -> None:
        state = (weights_from_route(route), mirrors_from_route(route))
        if state != self._last:
            self._last = state
            self._on_change(*state, resource_version)

    def _list(self) -> str:
        listing: Any = self._api.list_namespaced_custom_object(
            GATEWAY_GROUP,
            HTTPROUTE_VERSION,
            self._namespace,
            HTTPROUTE_PLURAL,
            field_selector=f"metadata.name={self._name}",
        )
        items = listing.get("items") or []
        rv = str(listing["metadata"]["resourceVersion"])
        self._apply(items[0] if items else None, rv)
        return rv

    def _run(self) -> None:
        rv: str | None = None
        while not self._stop.is_set():
            try:
                if rv is None:
                    rv = self._list()
                w = watch.Watch()  # type: ignore[no-untyped-call]
                for event in w.stream(  # type: ignore[no-untyped-call]
                    self._api.list_namespaced_custom_object,
                    GATEWAY_GROUP,
                    HTTPROUTE_VERSION,
                    self._namespace,
                    HTTPROUTE_PLURAL,
                    field_selector=f"metadata.name={self._name}",
                    resource_version=rv,
                    allow_watch_bookmarks=True,
                    timeout_seconds=WATCH_TIMEOUT_S,
                    _request_timeout=WATCH_TIMEOUT_S + 5,
                ):
                    kind, obj = event["type"], event["object"]
                    if kind == "ERROR":
                        rv = None  # usually 410 Gone: our resourceVersion is too old; list again
                        break
                    rv = str(obj["metadata"]["resourceVersion"])
                    if kind in ("ADDED", "MODIFIED"):
                        self._apply(obj, rv)
                    elif kind == "DELETED":
                        self._apply(None, rv)
                    if self._stop.is_set():
                        w.stop()  # type: ignore[no-untyped-call]
            except Exception as e:  # apiserver restarts, 410 raised as ApiException, timeouts
                log.debug("watch of httproute %s/%s failed: %s", self._namespace, self._name, e)
                rv = None
                self._stop.wait(0.2)
