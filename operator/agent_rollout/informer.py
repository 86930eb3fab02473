"""List, then watch, one resource kind into a compact in-memory store (client-go's reflector and
store, for the few fields the operator reads).

Why not kopf's indices: each indexed object is a readiness toggle in kopf, and every object with a
non-index handler waits for all of them; each new toggle wakes every waiter, which re-checks all
toggles. With 10,000 rollouts and 20,000 Deployments that is quadratic: measured, 79% of the stuck
operator's start-up went to it and no rollout got a status in 27 minutes. Here readiness is one flag
per kind ("the first list is in"), and an object costs one dict entry of what the operator reads.

The blocking list and watch calls run on one thread per kind and namespace; every change is applied
on the event loop, so the store is only ever touched from the loop and needs no lock.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Generic, TypeVar

from agent_rollout.kube import Expired, Kind, ListWatchClient

log = logging.getLogger(__name__)

T = TypeVar("T")
Key = tuple[str, str]  # (namespace, name)
# (key, before, after): None for "absent". Called on the event loop, only when the projection changed.
OnChange = Callable[[Key, Any, Any], None]
# The error when a list or watch fails after success, None once a list succeeds after failures: once
# per streak, on the event loop.
OnReadable = Callable[[Exception | None], None]

PAGE_SIZE = 500  # objects per list page: bounded memory while a big kind is listed
WATCH_TIMEOUT_S = 300  # the server ends each watch after this; the informer watches again from there
MAX_BACKOFF_S = 5.0  # an apiserver that comes back is seen within seconds; a failing list costs little


class Informer(Generic[T]):
    """One kind, in the given namespaces (None: cluster-wide). `project` keeps only what the operator
    reads of an object (None: do not keep it); `on_change` hears every change of a projection."""

    def __init__(
        self,
        kind: Kind,
        client: ListWatchClient,
        project: Callable[[dict[str, Any]], T | None],
        on_change: OnChange | None = None,
        namespaces: Sequence[str] | None = None,
        watch_timeout_s: int = WATCH_TIMEOUT_S,
        on_readable: OnReadable | None = None,
        first_backoff_s: float = 1.0,
        max_backoff_s: float = MAX_BACKOFF_S,
    ) -> None:
        self.kind = kind
        self._client = client
        self._project = project
        self._on_change = on_change
        self._scopes: tuple[str | None, ...] = tuple(namespaces) if namespaces else (None,)
        self._watch_timeout_s = watch_timeout_s
        self._on_readable = on_readable
        self._first_backoff_s, self._max_backoff_s = first_backoff_s, max_backoff_s
        self._items: dict[Key, T] = {}
        self._listed: set[str | None] = set()
        self.synced = asyncio.Event()  # every scope's first list is in the store
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []

    def get(self, namespace: str, name: str) -> T | None:
        return self._items.get((namespace, name))

    def items(self) -> Iterable[tuple[Key, T]]:
        return self._items.items()

    def __len__(self) -> int:
        return len(self._items)

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        for scope in self._scopes:
            thread = threading.Thread(
                target=self._reflect,
                args=(scope, loop),
                name=f"informer-{self.kind.plural}-{scope or 'all'}",
                daemon=True,  # a watch blocked on the network must not hold the process at exit
            )
            self._threads.append(thread)
            thread.start()

    def stop(self) -> None:
        self._stopping.set()

    # -- on the informer thread

    def _reflect(self, scope: str | None, loop: asyncio.AbstractEventLoop) -> None:
        backoff, failing = self._first_backoff_s, False
        while not self._stopping.is_set():
            try:
                version = self._list(scope, loop)
                if failing:
                    log.info("%s: listing works again", self.kind)
                    self._readable(loop, None)
                backoff, failing = self._first_backoff_s, False
                while not self._stopping.is_set():
                    version = self._watch(scope, version, loop)
            except Expired as e:
                log.info("%s: %s; listing again", self.kind, e)
            except Exception as e:  # the apiserver away, a dropped connection: list again after a pause
                if self._stopping.is_set():
                    return
                if not failing:  # once per streak: an apiserver away for hours must not flood the log
                    log.warning(
                        "%s: list/watch failed (%s); retrying with backoff", self.kind, short_error(e)
                    )
                    self._readable(loop, e)
                failing = True
                self._stopping.wait(backoff)
                backoff = min(backoff * 2, self._max_backoff_s)

    def _readable(self, loop: asyncio.AbstractEventLoop, error: Exception | None) -> None:
        if self._on_readable is not None:
            loop.call_soon_threadsafe(self._on_readable, error)

    def _list(self, scope: str | None, loop: asyncio.AbstractEventLoop) -> str:
        """The whole kind in one consistent snapshot, page by page; returns its resourceVersion."""
        items: dict[Key, T] = {}
        token: str | None = None
        version = ""
        started, pages = time.monotonic(), 0
        while True:
            pages += 1
            page = self._client.list_page(self.kind, scope, PAGE_SIZE, token)
            metadata = page.get("metadata") or {}
            version = version or str(metadata.get("resourceVersion") or "")
            for obj in page.get("items") or ():
                projected = self._project(obj)
                if projected is not None:
                    items[_key(obj)] = projected
            token = metadata.get("continue")
            if not token:
                break
        # At 10,000 rollouts the first lists are the start-up's first seconds, before any status.
        log.info(
            "%s%s: listed %d in %.1f s (%d pages)",
            self.kind,
            f" in {scope}" if scope else "",
            len(items),
            time.monotonic() - started,
            pages,
        )
        loop.call_soon_threadsafe(self._replace, scope, items)
        return version

    def _watch(self, scope: str | None, version: str, loop: asyncio.AbstractEventLoop) -> str:
        """Apply events until the server ends the watch; returns the resourceVersion to go on from."""
        for event in self._client.watch(self.kind, scope, version, self._watch_timeout_s):
            if self._stopping.is_set():
                break
            obj = event.get("object") or {}
            version = str((obj.get("metadata") or {}).get("resourceVersion") or version)
            kind = event.get("type")
            if kind == "BOOKMARK":
                continue
            projected = None if kind == "DELETED" else self._project(obj)
            loop.call_soon_threadsafe(self._put, _key(obj), projected)
        return version

    # -- on the event loop

    def _replace(self, scope: str | None, listed: dict[Key, T]) -> None:
        """A (re)list: objects gone meanwhile are deleted, the rest put."""
        gone = [k for k in self._items if (scope is None or k[0] == scope) and k not in listed]
        for key in gone:
            self._put(key, None)
        for key, value in listed.items():
            self._put(key, value)
        self._listed.add(scope)
        if len(self._listed) == len(self._scopes):
            self.synced.set()

    def _put(self, key: Key, value: T | None) -> None:
        before = self._items.get(key)
        if value is None:
            self._items.pop(key, None)
        else:
            self._items[key] = value
        if before != value and self._on_change is not None:
            try:
                self._on_change(key, before, value)
            except Exception:  # a bug in a listener must not stop the store from following the cluster
                log.exception("%s: change handler failed for %s/%s", self.kind, *key)


def short_error(error: Exception) -> str:
    """An error in one line: an ApiException's status and reason (not its body), else its repr."""
    status = getattr(error, "status", None)  # an ApiException: its status and reason, not its body
    if status is not None:
        return f"HTTP {status} {getattr(error, 'reason', '')}".strip()
    return repr(error)


def _key(obj: dict[str, Any]) -> Key:
    metadata = obj.get("metadata") or {}
    return str(metadata.get("namespace") or ""), str(metadata.get("name") or "")
