"""The comparator follows one AgentRollout: during a shadow step with `compare`, that is the comparison.

Started with `--rollout NAMESPACE/NAME`, the comparator watches that one rollout (a list and watch
field-selected on metadata.name, so its Role may name the rollout and nothing else) on a thread of its
own, and hands each change to the event loop, which swaps the comparison for requests that arrive
after it. `step_rule` decides, pure: the current step's `shadow.compare` while the rollout is live on a
shadow step that has one; otherwise None, which means the comparator's own flags.

The rollout being unreadable (RBAC, the apiserver away) keeps the last comparison known: a mirrored
request in flight is compared as before rather than by a default nobody asked for during the step.
It is visible as the gauge agent_shadow_rollout_unreadable and one log line per streak of failures.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from agent_rollout import api
from agent_rollout.comparator.compare import Comparison, Mode
from agent_rollout.informer import Informer, short_error
from agent_rollout.kube import Kind, ListWatchClient

log = logging.getLogger(__name__)

WATCH_TIMEOUT_S = 300  # the server ends each watch after this; the follower watches again from there
MAX_BACKOFF_S = 30.0
_LIVE = frozenset({api.Phase.PROGRESSING.value, api.Phase.PAUSED.value})


@dataclass(frozen=True)
class Rule:
    """A comparison and the judge of the pairs it calls different (None: no judge)."""

    comparison: Comparison
    judge_url: str | None = None
    source: str = "flags"  # where it came from, for the log: "flags", or the step (spec.steps[1])

    def describe(self) -> str:
        """Mode, fields and threshold only: never content, and the judge's URL only as set or not."""
        c = self.comparison
        text = f"mode {c.mode.value}"
        if c.fields:
            text += " fields " + ",".join(c.fields)
        if c.mode is Mode.TEXT:
            text += f" threshold {c.threshold:g}"
        return text + (" with a judge" if self.judge_url else "") + f" ({self.source})"


def parse_rollout_ref(text: str) -> tuple[str, str]:
    """NAMESPACE/NAME -> (namespace, name); ValueError on anything else."""
    namespace, sep, name = text.partition("/")
    if not sep or not namespace or not name or "/" in name:
        raise ValueError(f"--rollout must be NAMESPACE/NAME, got {text!r}")
    return namespace, name


def rule_of(compare: api.ShadowCompare, source: str) -> Rule:
    """A step's comparison; ValueError when it cannot apply (validation refuses such a spec)."""
    threshold = Comparison().threshold if compare.threshold is None else compare.threshold
    return Rule(Comparison(compare.mode, tuple(compare.fields), threshold), compare.judge_url, source)


def step_rule(rollout: Mapping[str, Any] | None) -> Rule | None:
    """The comparison the rollout's current step asks for, or None: the comparator's own.

    None unless the rollout is live (Progressing or Paused) on a shadow step whose `compare` parses
    and applies; a rollout being written by a newer operator, or an invalid one (which the operator
    fails), must not make the comparator guess."""
    if not rollout:
        return None
    status = rollout.get("status") or {}
    index = status.get("currentStep", 0)
    if status.get("phase") not in _LIVE or not isinstance(index, int) or isinstance(index, bool):
        return None
    steps = (rollout.get("spec") or {}).get("steps") or []
    if not isinstance(steps, list) or not 0 <= index < len(steps) or not isinstance(steps[index], dict):
        return None
    shadow = steps[index].get("shadow")
    raw = shadow.get("compare") if isinstance(shadow, dict) else None
    if raw is None:
        return None
    compare = api.parse_alone(api.ShadowCompare, raw)
    if compare is None:
        return None
    try:
        return rule_of(compare, f"spec.steps[{index}].shadow.compare")
    except ValueError:
        return None


class Follower:
    """Lists, then watches, the one rollout (the operator's Informer, field-selected to its name);
    every outcome is handed to the loop.

    on_rollout(body or None) hears each change of the rollout (None: it does not exist, or is gone);
    on_readable(bool) hears each change between readable and not, and the informer logs a failure
    once per streak. Both run on the event loop."""

    def __init__(
        self,
        client: ListWatchClient,
        namespace: str,
        name: str,
        on_rollout: Callable[[dict[str, Any] | None], None],
        on_readable: Callable[[bool], None],
        watch_timeout_s: int = WATCH_TIMEOUT_S,
        first_backoff_s: float = 1.0,
    ) -> None:
        self.namespace, self.name = namespace, name
        kind = Kind(api.GROUP, api.VERSION, api.PLURAL, field_selector=f"metadata.name={name}")
        self._informer: Informer[dict[str, Any]] = Informer(
            kind,
            client,
            lambda obj: obj,
            lambda key, before, after: on_rollout(after),
            [namespace],
            watch_timeout_s=watch_timeout_s,
            on_readable=self._readable,
            first_backoff_s=first_backoff_s,
            max_backoff_s=MAX_BACKOFF_S,
        )

        self._on_readable = on_readable

    def _readable(self, error: Exception | None) -> None:
        if error is None:
            log.info("rollout %s/%s readable again", self.namespace, self.name)
        else:
            log.warning(
                "rollout %s/%s unreadable (%s); keeping the last comparison, retrying",
                self.namespace,
                self.name,
                short_error(error),
            )
        self._on_readable(error is None)

    def start(self) -> None:
        self._informer.start()

    def stop(self) -> None:
        self._informer.stop()
