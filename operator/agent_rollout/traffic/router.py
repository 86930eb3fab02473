"""What the operator needs of a traffic router (after Argo Rollouts' traffic-routing interface).

A router is one module in traffic/ that knows one kind of routed object (a Gateway API HTTPRoute, a
mesh's split, ...): which resource the operator indexes and watches, which object a rollout's
`spec.traffic.<key>` section names, the traffic state that object carries, and the guarded JSON patch
from that state to the one the planner wants. It is pure: the shell reads the object from its
informer and sends the patch through kube.py; the router never does I/O. Registering it
(traffic/registry.py) is all the API model, the CRD and the shell need to accept it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from pydantic import BaseModel

from agent_rollout.api import Weights
from agent_rollout.domain import SpecProblem
from agent_rollout.traffic.value import Mirror, MirrorReading, TrafficState


@dataclass(frozen=True)
class Resource:
    """The API resource of a router's routed objects: what the operator lists, watches and patches."""

    group: str
    version: str
    plural: str
    kind: str

    def __str__(self) -> str:
        return f"{self.plural}.{self.group}"


@dataclass(frozen=True)
class TrafficReading:
    """The traffic state a routed object carries. `weights` None with no `error`: the object routes
    in a way that is not one state (rules that disagree), which writing the wanted state heals.
    `mirror_conflict`: a mirror identical to one a shadow step of this rollout would add, that the
    operator did not write; it is never adopted (nor removed), and the shadow step waits on it."""

    weights: Weights | None
    error: str | None = None
    mirror: MirrorReading = field(default_factory=MirrorReading)
    mirror_conflict: str | None = None


class TrafficRouter(Protocol):
    """One kind of routed object. `config` is the parsed `spec.traffic.<key>` section, an instance of
    `config_model`; a router receives only its own."""

    @property
    def key(self) -> str:
        """Its key under spec.traffic, e.g. gatewayAPI."""

    @property
    def config_model(self) -> type[BaseModel]:
        """The pydantic model of spec.traffic.<key>; the CRD's schema of that section comes from it."""

    @property
    def resource(self) -> Resource: ...

    @property
    def object_field(self) -> str:
        """The field of spec.traffic.<key> (as spelled on the wire) naming the routed object: the
        controller indexes rollouts by it without parsing the whole spec."""

    @property
    def supports_mirror(self) -> bool:
        """Whether it can mirror a share of legacy's requests (shadow steps)."""

    def object_name(self, config: Any) -> str: ...

    def backends(self, config: Any) -> tuple[str, str]:
        """The legacy and candidate Service names it routes between."""

    def read(
        self,
        obj_spec: dict[str, Any] | None,
        config: Any,
        mirrors: tuple[Mirror, ...] = (),
        others: tuple[Mirror, ...] = (),
        namespace: str | None = None,
    ) -> TrafficReading:
        """The state `obj_spec` (the object's spec; None: no such object) carries. `mirrors`: the
        mirrors the operator wrote (its write-ahead record says so), read as ours; `others`: mirrors
        a shadow step may add, reported as a conflict when the object already carries one of them."""

    def patch(
        self,
        obj_spec: dict[str, Any],
        config: Any,
        want: TrafficState,
        mirrors: tuple[Mirror, ...] = (),
        namespace: str | None = None,
    ) -> list[dict[str, Any]]:
        """JSON patch ops from `obj_spec` as read to `want`, removing only `mirrors` of ours; empty
        when nothing would change."""

    def problems(self, config: Any, path: str) -> list[SpecProblem]:
        """Rules of its own section the schema cannot express, each naming its field under `path`
        (spec.traffic.<key>)."""
