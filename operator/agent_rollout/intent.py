"""The write-ahead record the operator puts on the route together with the weights.

One annotation on the HTTPRoute, written by the same JSON patch as the weights, so the two can never
disagree. It names the rollout, the status sequence the following status write will carry, and the
state that write records (phase, step, weights, decision). See domain.RouteIntent for why.
"""

from __future__ import annotations

import json
from typing import Any

from agent_rollout import api
from agent_rollout.api import AgentRolloutStatus, Phase, Weights
from agent_rollout.domain import RouteIntent
from agent_rollout.traffic.value import Mirror

ANNOTATION = f"{api.GROUP}/write-ahead"
_MESSAGE_LIMIT = 512  # the decision's message; the annotation stays small whatever the history holds


def intent_for(
    rollout: str, status: AgentRolloutStatus, sequence: int, mirror: Mirror | None = None
) -> RouteIntent:
    last = status.history[-1] if status.history else None
    return RouteIntent(
        rollout=rollout,
        sequence=sequence,
        phase=status.phase,
        step=status.current_step,
        weights=status.weights.model_copy(),
        revision=status.candidate_revision,
        step_started_at=status.step_started_at,
        reason=last.reason if last is not None else "",
        message=(last.message if last is not None else "")[:_MESSAGE_LIMIT],
        mirror=mirror,
    )


def encode(intent: RouteIntent) -> str:
    extra: dict[str, Any] = {}
    if intent.mirror is not None:  # absent otherwise: records of earlier versions read the same
        m = intent.mirror
        extra["mirror"] = {"service": m.service, "port": m.port, "percent": m.percent}
    return json.dumps(
        {
            "rollout": intent.rollout,
            "sequence": intent.sequence,
            "phase": intent.phase.value,
            "step": intent.step,
            "weights": [intent.weights.legacy, intent.weights.candidate],
            "revision": intent.revision,
            "stepStartedAt": intent.step_started_at,
            "reason": intent.reason,
            "message": intent.message,
            **extra,
        },
        separators=(",", ":"),
    )


def our_intent(route: dict[str, Any] | None, rollout: str) -> RouteIntent | None:
    """This rollout's write-ahead record on the route (as the informer stores it), or None."""
    annotations = ((route or {}).get("metadata") or {}).get("annotations") or {}
    found = decode(annotations.get(ANNOTATION))
    return found if found is not None and found.rollout == rollout else None


def decode(text: Any) -> RouteIntent | None:
    """The record, or None for anything that is not one of ours (a hand edit, another version)."""
    if not isinstance(text, str):
        return None
    try:
        raw = json.loads(text)
        legacy, candidate = raw["weights"]
        return RouteIntent(
            rollout=str(raw["rollout"]),
            sequence=int(raw["sequence"]),
            phase=Phase(raw["phase"]),
            step=int(raw["step"]),
            weights=Weights(legacy=legacy, candidate=candidate),
            revision=raw.get("revision"),
            step_started_at=raw.get("stepStartedAt"),
            reason=str(raw.get("reason", "")),
            message=str(raw.get("message", "")),
            mirror=_mirror(raw.get("mirror")),
        )
    except (ValueError, KeyError, TypeError):
        return None


def _mirror(raw: Any) -> Mirror | None:
    if not isinstance(raw, dict):
        return None
    return Mirror(service=str(raw["service"]), port=int(raw["port"]), percent=int(raw["percent"]))


def annotation_patch(route_metadata: dict[str, Any] | None, intent: RouteIntent) -> list[dict[str, Any]]:
    """JSON patch ops that set the annotation, whether or not the route has annotations yet.

    Creating the annotations map replaces whatever map is there, so that case is pinned to the
    resourceVersion we read: annotations someone added meanwhile fail the patch (a conflict, retried
    on fresh data) instead of being wiped.
    """
    metadata = route_metadata or {}
    annotations = metadata.get("annotations")
    if not isinstance(annotations, dict):
        ops: list[dict[str, Any]] = []
        if metadata.get("resourceVersion"):
            ops.append(
                {"op": "test", "path": "/metadata/resourceVersion", "value": metadata["resourceVersion"]}
            )
        ops.append({"op": "add", "path": "/metadata/annotations", "value": {ANNOTATION: encode(intent)}})
        return ops
    key = ANNOTATION.replace("~", "~0").replace("/", "~1")
    return [{"op": "add", "path": f"/metadata/annotations/{key}", "value": encode(intent)}]
