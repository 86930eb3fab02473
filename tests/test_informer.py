"""The informer: ready only after its first list, follows watch events, tells listeners only real
changes of what it keeps, and a relist after a lost watch deletes what went meanwhile.
(The real apiserver behind it is proven by the e2e suite, which runs every rollout through it.)"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Iterator
from typing import Any

from agent_rollout.informer import Informer
from agent_rollout.kube import DEPLOYMENTS, Expired, Kind

END = object()


def _obj(name: str, replicas: int, version: str, label: str = "a") -> dict[str, Any]:
    return {
        "metadata": {
            "namespace": "support",
            "name": name,
            "resourceVersion": version,
            "labels": {"x": label},
        },
        "spec": {"replicas": replicas},
    }


class FakeListWatch:
    """Pages and watch events a test hands out one by one, from the informer's thread."""

    def __init__(self, pages: list[list[dict[str, Any]]]) -> None:
        self.lists: queue.Queue[list[list[dict[str, Any]]]] = queue.Queue()
        self.lists.put(pages)
        self.events: queue.Queue[Any] = queue.Queue()
        self.watched_from: list[str] = []
        self._pages: list[list[dict[str, Any]]] = []

    def list_page(self, kind: Kind, namespace: str | None, limit: int, token: str | None) -> dict[str, Any]:
        if token is None:
            self._pages = list(self.lists.get(timeout=5))
        page = self._pages.pop(0)
        more = {"continue": "next"} if self._pages else {}
        return {"metadata": {"resourceVersion": "10", **more}, "items": page}

    def watch(
        self, kind: Kind, namespace: str | None, version: str, timeout_s: int
    ) -> Iterator[dict[str, Any]]:
        self.watched_from.append(version)
        while True:
            event = self.events.get(timeout=5)
            if event is END:
                return
            if isinstance(event, Exception):
                raise event
            yield event


def _replicas(obj: dict[str, Any]) -> int:
    return int(obj["spec"]["replicas"])


async def _until(condition: Any, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached"
        await asyncio.sleep(0.005)


def test_lists_then_follows_and_relists_after_a_lost_watch() -> None:
    async def test() -> None:
        client = FakeListWatch([[_obj("a", 1, "5"), _obj("b", 2, "6")], [_obj("c", 3, "7")]])
        changes: list[tuple[str, int | None, int | None]] = []
        informer: Informer[int] = Informer(
            DEPLOYMENTS,
            client,  # type: ignore[arg-type]
            _replicas,
            lambda key, before, after: changes.append((key[1], before, after)),
        )
        informer.start()
        await asyncio.wait_for(informer.synced.wait(), 5)
        assert {k[1]: v for k, v in informer.items()} == {"a": 1, "b": 2, "c": 3}  # both pages
        changes.clear()

        client.events.put({"type": "MODIFIED", "object": _obj("a", 1, "11", label="b")})  # nothing we keep
        client.events.put({"type": "MODIFIED", "object": _obj("b", 0, "12")})
        client.events.put({"type": "DELETED", "object": _obj("c", 3, "13")})
        client.events.put({"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "20"}}})
        client.events.put(END)  # the server ends the watch; the informer watches on from 20
        await _until(lambda: client.watched_from == ["10", "20"])
        assert changes == [("b", 2, 0), ("c", 3, None)]
        assert informer.get("support", "c") is None

        # The watch is lost (410): "a" was deleted and "d" created while nobody watched.
        client.lists.put([[_obj("b", 0, "30"), _obj("d", 4, "31")]])
        client.events.put(Expired("too old"))
        await _until(lambda: informer.get("support", "d") == 4)
        assert informer.get("support", "a") is None
        assert changes[2:] == [("a", 1, None), ("d", None, 4)]
        informer.stop()
        client.events.put(END)

    asyncio.run(test())


def test_not_ready_until_the_first_list_is_in() -> None:
    async def test() -> None:
        gate = threading.Event()

        class SlowList(FakeListWatch):
            def list_page(self, *args: Any) -> dict[str, Any]:
                gate.wait(5)
                return super().list_page(*args)

        client = SlowList([[_obj("a", 1, "5")]])
        informer: Informer[int] = Informer(DEPLOYMENTS, client, _replicas)  # type: ignore[arg-type]
        informer.start()
        await asyncio.sleep(0.1)
        assert not informer.synced.is_set() and informer.get("support", "a") is None
        gate.set()
        await asyncio.wait_for(informer.synced.wait(), 5)
        assert informer.get("support", "a") == 1
        informer.stop()
        client.events.put(END)

    asyncio.run(test())
