"""`kubectl agentrollout history|approve`: the decision record as a table or JSON, and the approve verb.

Pure functions of the AgentRollout as read; cli.py does the I/O. The approve verb is a plain merge
patch on the status subresource, so a script or an Argo CD action does exactly the same:

    kubectl patch agentrollout NAME --subresource=status --type=merge \\
      -p '{"status":{"requests":{"approve":{"reason":"...","revision":"<status.candidateRevision>"}}}}'

The apiserver's admission (the chart's policies) stamps who sent it; the caller never names itself.
"""

from __future__ import annotations

import json
from typing import Any

from agent_rollout import api

COLUMNS = ("TIME", "STEP", "REASON", "ACTOR", "IMAGE", "MODEL", "PROMPT", "TOOLS", "MESSAGE")


def history_rows(obj: dict[str, Any]) -> list[dict[str, Any]]:
    """Every decision status.history keeps, oldest first, with the rollout it belongs to."""
    meta = obj.get("metadata") or {}
    status = obj.get("status") or {}
    return [
        {"namespace": meta.get("namespace"), "agentrollout": meta.get("name"), **d}
        for d in status.get("history") or []
    ]


def history_json(obj: dict[str, Any]) -> str:
    return json.dumps(history_rows(obj), indent=2)


def _actor(decision: dict[str, Any]) -> str:
    actor = str(decision.get("actor") or api.OPERATOR)
    groups = [g for g in decision.get("actorGroups") or [] if not g.startswith("system:")]
    return f"{actor} ({', '.join(groups)})" if groups else actor


def history_table(obj: dict[str, Any], width: int = 60) -> str:
    """One line per decision; texts longer than `width` are cut (-o json has them whole)."""
    rows = []
    for d in history_rows(obj):
        version = d.get("agentVersion") or {}
        message = str(d.get("message", ""))
        rows.append(
            (
                str(d.get("time", "")),
                str(int(d.get("step", 0)) + 1),
                str(d.get("reason", "")),
                _actor(d),
                str(version.get("image", api.UNKNOWN)),
                str(version.get("model", api.UNKNOWN)),
                str(version.get("prompt", api.UNKNOWN)),
                str(version.get("tools", api.UNKNOWN)),
                message if len(message) <= width else message[: width - 3] + "...",
            )
        )
    if not rows:
        meta = obj.get("metadata") or {}
        return f"agentrollout {meta.get('namespace')}/{meta.get('name')} has no decisions yet"
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(COLUMNS)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(COLUMNS, widths, strict=True)).rstrip()]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return "\n".join(lines)


def approve_patch(obj: dict[str, Any], reason: str) -> dict[str, Any]:
    """The approval of the candidate revision as read: it never counts for another revision."""
    request: dict[str, Any] = {"reason": reason}
    revision = (obj.get("status") or {}).get("candidateRevision")
    if revision:
        request["revision"] = revision
    return {"status": {"requests": {"approve": request}}}


def approve_refusal(obj: dict[str, Any]) -> str | None:
    """Why approving now would be refused, as far as the rollout as read tells (advisory: admission and
    the operator decide); None when it may count."""
    meta, spec = obj.get("metadata") or {}, obj.get("spec") or {}
    status = obj.get("status") or {}
    ref = f"agentrollout {meta.get('namespace')}/{meta.get('name')}"
    phase = status.get("phase") or api.Phase.PENDING.value
    steps = spec.get("steps") or []
    index = int(status.get("currentStep") or 0)
    if phase not in (api.Phase.PROGRESSING.value, api.Phase.PAUSED.value):
        return f"error: cannot approve {ref}: it is {phase}, not waiting for approval"
    if not 0 <= index < len(steps) or "approval" not in steps[index]:
        return f"error: cannot approve {ref}: step {index + 1}/{len(steps)} is not an approval step"
    return None
