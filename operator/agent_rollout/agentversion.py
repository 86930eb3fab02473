"""Which agent a decision is about: read from the candidate Deployment, never guessed.

An agent's behaviour changes with more than its image: the model behind it, its prompt and its tools
change it too, often without a new image. The operator records all four with every decision. The
image is the pod template's containers' images (name=image, in order; a digest when the template pins
one); the other three come from documented annotations on the pod template (so changing one is a new
template revision, which restarts the rollout):

    agentrollout.io/model-version    e.g. gpt-4.1-2025-04-14
    agentrollout.io/prompt-version   e.g. triage-v12 or a commit
    agentrollout.io/tools-version    e.g. tools-2026.03.1

A missing one is shown as "unknown". Who changed the template last is read from
agentrollout.io/template-changed-by on the Deployment, which only the chart's admission policy writes
(charts/agent-rollout/templates/approval-policy.yaml); forbidSelfApproval relies on it.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from typing import Any

from agent_rollout.api import GROUP, UNKNOWN, AgentVersion

MODEL_ANNOTATION = f"{GROUP}/model-version"
PROMPT_ANNOTATION = f"{GROUP}/prompt-version"
TOOLS_ANNOTATION = f"{GROUP}/tools-version"
CHANGED_BY_ANNOTATION = f"{GROUP}/template-changed-by"
_VALUE_LIMIT = 253


def _text(value: Any) -> str:
    return str(value)[:_VALUE_LIMIT] if isinstance(value, str) and value.strip() else UNKNOWN


def agent_version(template: Mapping[str, Any] | None, revision: str | None = None) -> AgentVersion:
    """The agent version of a pod template; "unknown" for every part it does not state."""
    template = template or {}
    annotations = (template.get("metadata") or {}).get("annotations") or {}
    containers = (template.get("spec") or {}).get("containers") or []
    images = [
        f"{c.get('name', '?')}={c['image']}" if len(containers) > 1 else str(c["image"])
        for c in containers
        if isinstance(c, Mapping) and isinstance(c.get("image"), str) and c["image"]
    ]
    return _shared(
        ", ".join(images)[:_VALUE_LIMIT] if images else UNKNOWN,
        _text(annotations.get(MODEL_ANNOTATION)),
        _text(annotations.get(PROMPT_ANNOTATION)),
        _text(annotations.get(TOOLS_ANNOTATION)),
        revision,
    )


@lru_cache(maxsize=4096)
def _shared(image: str, model: str, prompt: str, tools: str, revision: str | None) -> AgentVersion:
    """One object per distinct version: the Deployment informer keeps one per Deployment, and a fleet
    of rollouts mostly runs a few versions (a version costs ~1 KiB; decisions take a copy)."""
    return AgentVersion(image=image, model=model, prompt=prompt, tools=tools, revision=revision)


def changed_by(metadata: Mapping[str, Any] | None) -> str | None:
    value = ((metadata or {}).get("annotations") or {}).get(CHANGED_BY_ANNOTATION)
    return value if isinstance(value, str) and value else None
