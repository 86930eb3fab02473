"""The traffic routers the operator knows, by their key under spec.traffic.

`api.Traffic` accepts exactly one registered key and parses its section with that router's model; the
CRD's schema of spec.traffic and its CEL rule are generated from this registry (crdgen.py), and the
controller runs one informer per resource in `resources()` (rollouts, claims and wake-ups keyed by that
resource), so a new router is one module in traffic/ plus one `register` line below (and its tests),
and, outside the package:
- the chart's RBAC for its resource: `list`, `watch` and `patch` on it, beside httproutes in
  charts/agent-rollout/templates/_helpers.tpl (agent-rollout.namespacedRules);
- its CRD installed wherever the operator runs: the controller reconciles nothing before every
  informer has its first list, and a resource the apiserver does not serve never lists.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from agent_rollout.traffic.router import Resource, TrafficRouter

_ROUTERS: dict[str, TrafficRouter] = {}


def register(router: TrafficRouter) -> TrafficRouter:
    if router.key in _ROUTERS:
        raise ValueError(f"a traffic router is already registered as {router.key!r}")
    _ROUTERS[router.key] = router
    return router


@contextmanager
def registered(router: TrafficRouter) -> Iterator[TrafficRouter]:
    """A router registered for the duration of a block (tests: the CRD is generated without it)."""
    register(router)
    try:
        yield router
    finally:
        del _ROUTERS[router.key]


def routers() -> Mapping[str, TrafficRouter]:
    return dict(_ROUTERS)


def router(key: str) -> TrafficRouter:
    return _ROUTERS[key]


def keys_text() -> str:
    return ", ".join(_ROUTERS)


def one_router_message() -> str:
    return f"spec.traffic needs exactly one router ({keys_text()})"


def cel_rule() -> str:
    """The CEL rule for spec.traffic: exactly one registered key is set."""
    return " + ".join(f"(has(self.{key}) ? 1 : 0)" for key in _ROUTERS) + " == 1"


def resources() -> tuple[Resource, ...]:
    """Every resource a registered router routes through, once: what the controller watches."""
    return tuple(dict.fromkeys(r.resource for r in _ROUTERS.values()))


def routed_object(raw_traffic: Any) -> tuple[TrafficRouter, str] | None:
    """The router and object name an unparsed spec.traffic section names (the controller's index,
    which does not parse whole specs); None when it names no one object of a registered router."""
    if not isinstance(raw_traffic, dict):
        return None
    named = [(r, raw_traffic[key]) for key, r in _ROUTERS.items() if key in raw_traffic]
    if len(named) != 1 or not isinstance(named[0][1], dict):
        return None
    found, section = named[0]
    name = section.get(found.object_field)
    return (found, name) if isinstance(name, str) else None


def _register_builtin() -> None:
    # Imported here, not at the top: the routers' models build on api, which imports this registry
    # when it first parses a spec.
    from agent_rollout.traffic import gatewayapi

    register(gatewayapi.ROUTER)


_register_builtin()


def claim_field(router: TrafficRouter) -> str:
    """The field naming a router's object, selectable in the CRD (crdgen.py): the rollouts claiming one
    object are listed by it, without the list of every rollout (an abort at a restart, controller.py)."""
    return f"spec.traffic.{router.key}.{router.object_field}"


def claim_fields(resource: Resource) -> tuple[str, ...]:
    """The claim fields of every router routing through `resource`."""
    return tuple(claim_field(r) for r in _ROUTERS.values() if r.resource == resource)
