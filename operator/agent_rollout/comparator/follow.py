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

import asyncio
import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from agent_rollout import api
from agent_rollout.comparator.compare import Comparison, Mode
from agent_rollout.kube import Expired, Kind, ListWatchClient

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
    """Lists, then watches, the one rollout on a daemon thread; every outcome is handed to the loop.

    on_rollout(body or None) hears the rollout as it is (None: it does not exist); on_readable(bool)
    hears each change between readable and not. Both run on the event loop."""

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
        self._kind = Kind(api.GROUP, api.VERSION, api.PLURAL, field_selector=f"metadata.name={name}")
        self._client = client
        self._on_rollout = on_rollout
        self._on_readable = on_readable
        self._watch_timeout_s = watch_timeout_s
        self._first_backoff_s = first_backoff_s
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._thread = threading.Thread(
            target=self._follow, args=(loop,), name=f"follow-{self.namespace}-{self.name}", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()

    def _follow(self, loop: asyncio.AbstractEventLoop) -> None:
        backoff, failing = self._first_backoff_s, False
        while not self._stopping.is_set():
            try:
                version = self._list(loop)
                if failing:
                    log.info("rollout %s/%s readable again", self.namespace, self.name)
                    loop.call_soon_threadsafe(self._on_readable, True)
                backoff, failing = self._first_backoff_s, False
                while not self._stopping.is_set():
                    version = self._watch(version, loop)
            except Expired:
                continue  # list again at once: nothing failed
            except Exception as e:  # RBAC, the apiserver away, a dropped connection: the last rule stays
                if self._stopping.is_set():
                    return
                if not failing:  # once per streak: a comparator cut off for hours must not flood its log
                    log.warning(
                        "rollout %s/%s unreadable (%s); keeping the last comparison, retrying",
                        self.namespace,
                        self.name,
                        _short(e),
                    )
                    loop.call_soon_threadsafe(self._on_readable, False)
                failing = True
                self._stopping.wait(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF_S)

    def _list(self, loop: asyncio.AbstractEventLoop) -> str:
        page = self._client.list_page(self._kind, self.namespace, 2, None)
        items = [i for i in page.get("items") or () if (i.get("metadata") or {}).get("name") == self.name]
        loop.call_soon_threadsafe(self._on_rollout, items[0] if items else None)
        return str((page.get("metadata") or {}).get("resourceVersion") or "")

    def _watch(self, version: str, loop: asyncio.AbstractEventLoop) -> str:
        for event in self._client.watch(self._kind, self.namespace, version, self._watch_timeout_s):
            if self._stopping.is_set():
                break
            obj = event.get("object") or {}
            version = str((obj.get("metadata") or {}).get("resourceVersion") or version)
            kind = event.get("type")
            if kind == "BOOKMARK":
                continue
            loop.call_soon_threadsafe(self._on_rollout, None if kind == "DELETED" else obj)
        return version


def _short(error: Exception) -> str:
    status = getattr(error, "status", None)  # an ApiException: its status and reason, not its body
    if status is not None:
        return f"HTTP {status} {getattr(error, 'reason', '')}".strip()
    return type(error).__name__
