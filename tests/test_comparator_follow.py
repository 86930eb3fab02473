"""The comparator follows its rollout: the step's `compare` while a shadow step with one is live, its
flags otherwise; a change applies to requests arriving after it; an unreadable rollout keeps the last."""

from __future__ import annotations

import asyncio
import copy
import threading
import time
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest
from kubernetes.client.exceptions import ApiException

from agent_rollout.comparator.app import Settings, parse_args
from agent_rollout.comparator.compare import Comparison, Mode
from agent_rollout.comparator.follow import Follower, Rule, parse_rollout_ref, step_rule
from agent_rollout.kube import Expired, Kind
from tests.test_comparator_service import COMPARISONS, FakeAgent, answering, comparator, wait_for_counts

JSON_LABEL = {"mode": "json", "fields": ["/label"]}


def rollout(
    compare: dict[str, Any] | None = JSON_LABEL, phase: str = "Progressing", step: int = 1
) -> dict[str, Any]:
    shadow: dict[str, Any] = {"percent": 20}
    if compare is not None:
        shadow["compare"] = compare
    return {
        "metadata": {"name": "support", "namespace": "team-a", "resourceVersion": "7"},
        "spec": {"steps": [{"evaluate": {"job": {"image": "e"}}}, {"shadow": shadow}, {"setWeight": 100}]},
        "status": {"phase": phase, "currentStep": step},
    }


def test_the_step_decides_only_while_the_rollout_is_live_on_a_shadow_step_with_compare() -> None:
    assert step_rule(rollout()) == Rule(
        Comparison(Mode.JSON, ("/label",)), None, "spec.steps[1].shadow.compare"
    )
    text = step_rule(rollout({"mode": "text", "threshold": 0.6, "judgeURL": "http://judge/x"}, "Paused"))
    assert text is not None and text.comparison == Comparison(Mode.TEXT, (), 0.6)
    assert text.judge_url == "http://judge/x"
    defaulted = step_rule(rollout({"mode": "text"}))
    assert defaulted is not None and defaulted.comparison.threshold == Comparison().threshold
    for other in (
        None,
        {},
        rollout(compare=None),  # a shadow step without compare: the flags
        rollout(step=0),  # not a shadow step
        rollout(step=2),
        rollout(step=7),
        rollout(phase="Pending"),
        rollout(phase="Promoted"),
        rollout(phase="RolledBack"),
        {**rollout(), "status": {}},  # no status yet: Pending
        rollout({"mode": "exact", "fields": ["/label"]}),  # invalid (the operator fails it): never guessed
        rollout({"mode": "json", "fields": "label"}),
        rollout({"mode": "fuzzy"}),
        {**rollout(), "status": {"phase": "Progressing", "currentStep": True}},
    ):
        assert step_rule(other) is None, other


def test_the_rollout_is_named_namespace_slash_name() -> None:
    assert parse_rollout_ref("team-a/support") == ("team-a", "support")
    for bad in ("support", "/support", "team-a/", "a/b/c"):
        with pytest.raises(ValueError, match="NAMESPACE/NAME"):
            parse_rollout_ref(bad)
    settings = parse_args(["--legacy-url", "http://l", "--candidate-url", "http://c", "--rollout", "a/b"])
    assert settings.rollout == "a/b" and settings.kubeconfig is None
    with pytest.raises(ValueError):
        Settings("http://l", "http://c", rollout="b")


def test_a_comparison_change_applies_to_requests_arriving_after_it() -> None:
    async def scenario() -> None:
        # Same label, different bodies: a mismatch byte for byte, a match on /label.
        gate = asyncio.Event()
        seen_by_legacy = 0

        async def slow_legacy(_: Any, __: bytes) -> tuple[int, Any]:
            nonlocal seen_by_legacy
            seen_by_legacy += 1
            if seen_by_legacy == 1:
                await gate.wait()  # the first request is still being compared when the rule changes
            return 200, {"label": "refund", "text": "Refund issued."}

        legacy = await FakeAgent(slow_legacy).start()
        candidate = await FakeAgent(answering({"label": "refund", "text": "We refunded you."})).start()
        running = await comparator(legacy, candidate)
        try:
            async with aiohttp.ClientSession() as session:
                async with session.post(running.url + "/ask", data=b"{}") as resp:
                    assert resp.status == 202
                while seen_by_legacy < 1:
                    await asyncio.sleep(0.01)
                running.comparator.follow(rollout())
                async with session.post(running.url + "/ask", data=b"{}") as resp:
                    assert resp.status == 202
                await wait_for_counts(session, running, {(COMPARISONS, "match"): 1})
                gate.set()
                # The first arrived under the flags (exact): it stays a mismatch.
                await wait_for_counts(session, running, {(COMPARISONS, "mismatch"): 1})
                metrics = await (await session.get(running.admin_url + "/metrics")).text()
                assert 'agent_shadow_step_comparison{namespace="support",version="v2"} 1.0' in metrics
                running.comparator.follow(rollout(phase="Promoted"))  # the step is over: the flags again
                assert running.comparator.rule == running.comparator.default_rule
                async with session.post(running.url + "/ask", data=b"{}") as resp:
                    assert resp.status == 202
                await wait_for_counts(session, running, {(COMPARISONS, "mismatch"): 2})
        finally:
            await running.close()
            await legacy.close()
            await candidate.close()

    asyncio.run(scenario())


class FakeListWatch:
    """The apiserver as the follower sees it: a scripted list, then events, or failures."""

    def __init__(self) -> None:
        self.body: dict[str, Any] | None = rollout()
        self.failing: Exception | None = None
        self.events: list[dict[str, Any]] = []
        self.kinds: list[Kind] = []
        self.lists = 0
        self.changed = threading.Event()

    def list_page(self, kind: Kind, namespace: str | None, limit: int, token: str | None) -> dict[str, Any]:
        self.kinds.append(kind)
        self.lists += 1
        if self.failing is not None:
            raise self.failing
        items = [copy.deepcopy(self.body)] if self.body is not None else []
        return {"metadata": {"resourceVersion": "7"}, "items": items}

    def watch(
        self, kind: Kind, namespace: str | None, version: str, timeout_s: int
    ) -> Iterator[dict[str, Any]]:
        if self.failing is not None:
            raise self.failing
        while self.events:
            yield self.events.pop(0)
        self.changed.wait(0.05)
        self.changed.clear()
        raise Expired("watch ended")  # list again: the scripted body may have changed


def test_an_unreadable_rollout_keeps_the_last_comparison_and_shows_it_once_per_streak(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def scenario() -> None:
        api = FakeListWatch()
        heard: list[dict[str, Any] | None] = []
        readable: list[bool] = []
        follower = Follower(
            api,  # type: ignore[arg-type]
            "team-a",
            "support",
            heard.append,
            readable.append,
            first_backoff_s=0.05,
        )
        follower.start()
        try:
            await until(lambda: heard and step_rule(heard[-1]) is not None)
            assert api.kinds[0].field_selector == "metadata.name=support"  # one object: its Role can name it
            api.failing = ApiException(status=403, reason="Forbidden")
            await until(lambda: readable == [False])
            lists = api.lists
            await until(lambda: api.lists >= lists + 2)  # retried, with backoff...
            assert readable == [False]  # ...and reported once for the whole streak
            assert step_rule(heard[-1]) is not None  # nothing heard meanwhile: the last rule stands
            warnings = [r for r in caplog.records if "unreadable" in r.getMessage()]
            assert len(warnings) == 1 and "HTTP 403 Forbidden" in warnings[0].getMessage()
            api.failing = None
            api.body = rollout(phase="Promoted")
            await until(lambda: readable == [False, True] and step_rule(heard[-1]) is None)
            api.events.append({"type": "DELETED", "object": rollout()})
            api.changed.set()
            await until(lambda: None in heard)
        finally:
            follower.stop()

    asyncio.run(scenario())


async def until(condition: Any, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)
