"""Notifications: which decisions are sent, the three bodies, and the delivery's queue, backoff and
failure reporting (against an in-process poster; the real HTTP path is e2e/rollout/test_notifications.py)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from agent_rollout import api, metrics, notify
from agent_rollout.api import NotificationEvent as E
from agent_rollout.kube import SecretUnavailable
from agent_rollout.notifier import DeliveryFailed, Notifier, OperatorConfig
from agent_rollout.notify import Notification, RolloutRef
from tests.test_reconcile import NS, THREE_WEIGHTS, World, rollout_body

ROLLOUT = RolloutRef("support", "ticket-triage", "uid-1")
GATE = api.GateResult(
    name="error-rate", verdict=api.Verdict.FAIL, value=0.2, bound="<= 0.01", samples=240, query="sum(...)"
)


def decision(reason: str, step: int, time: str = "2026-01-01T00:00:00Z", **kw: Any) -> api.Decision:
    return api.Decision(
        time=time, reason=reason, message=f"{reason} at {step}", step=step, weights=api.Weights(), **kw
    )


def status(phase: api.Phase, *history: api.Decision) -> api.AgentRolloutStatus:
    return api.AgentRolloutStatus(phase=phase, history=list(history))


# ---------------------------------------------------------------- which decisions


def test_only_decisions_the_write_added_are_notified_each_once() -> None:
    old = [decision("Started", 0), decision("StepCompleted", 0)]
    before = status(api.Phase.PROGRESSING, *old)
    after = status(api.Phase.PROGRESSING, *old, decision("StepCompleted", 1, time="2026-01-01T00:01:00Z"))

    found = notify.notifications(ROLLOUT, 3, before, after)

    assert [(n.event, n.decision["step"]) for n in found] == [(E.STEP_COMPLETED, 1)]
    assert found[0].id == "uid-1:2026-01-01T00:01:00Z:StepCompleted:1"
    assert notify.notifications(ROLLOUT, 3, after, after) == []  # the next reconcile: nothing new


def test_history_found_at_restart_is_never_sent() -> None:
    # A fresh process plans on the stored status: all of it was decided (and notified) before it started.
    stored = status(api.Phase.ROLLED_BACK, decision("Started", 0), decision("GateFailed", 0))
    assert notify.notifications(ROLLOUT, 3, stored, stored) == []


def test_a_bounded_history_that_dropped_its_oldest_still_yields_only_the_new_one() -> None:
    full = [decision("StepCompleted", i, time=f"2026-01-01T00:{i:02}:00Z") for i in range(20)]
    newest = decision("StepCompleted", 20, time="2026-01-01T00:20:00Z")
    found = notify.new_decisions(full, [*full[1:], newest])
    assert found == [newest]


def test_the_phase_a_decision_ended_in_names_its_event_and_unlisted_reasons_are_quiet() -> None:
    before = status(api.Phase.PAUSED, decision("AwaitingApproval", 2))
    # ApprovalExpired with onExpiry: rollback ends the rollout RolledBack: that is what on-call hears.
    expired = decision("ApprovalExpired", 2, time="2026-01-02T00:00:00Z")
    rolled_back = notify.notifications(
        ROLLOUT, 3, before, status(api.Phase.ROLLED_BACK, *before.history, expired)
    )
    assert [n.event for n in rolled_back] == [E.ROLLED_BACK]
    paused = notify.notifications(ROLLOUT, 3, before, status(api.Phase.PAUSED, *before.history, expired))
    assert [n.event for n in paused] == [E.ESCALATED]
    quiet = decision("MilestoneRecorded", 2, time="2026-01-02T00:00:00Z")
    assert notify.notifications(ROLLOUT, 3, before, status(api.Phase.PAUSED, *before.history, quiet)) == []


def test_every_rollback_reason_and_the_approval_reasons_map_to_an_event() -> None:
    for reason in ("GateFailed", "Aborted", "AlertFired", "InconclusiveLimit", "QueryRejected"):
        assert notify.EVENT_OF_REASON[reason] is E.ROLLED_BACK
    assert notify.EVENT_OF_REASON["AwaitingApproval"] is E.AWAITING_APPROVAL
    assert notify.EVENT_OF_REASON["ApprovalGiven"] is E.APPROVED
    assert notify.EVENT_OF_REASON["ApprovalRefused"] is E.APPROVAL_REFUSED
    assert notify.EVENT_OF_REASON["Promoted"] is E.PROMOTED
    assert set(notify.EVENT_OF_REASON.values()) == set(E)  # every event some decision can raise


def test_reconciles_to_promotion_notify_every_step_once_in_order_and_a_restart_sends_nothing_old() -> None:
    world = World(rollout_body(THREE_WEIGHTS))
    world.kube.rollouts[(NS, "ticket-triage")]["metadata"]["uid"] = "uid-1"
    sent: list[Notification] = []

    def decided(body: Any, spec: Any, before: Any, after: Any) -> None:
        sent.extend(notify.notifications(ROLLOUT, 3, before, after))

    world.reconciler._decided = decided

    def answer(
        promql: str,
    ) -> Any:  # the gate as test_reconcile answers it; the baseline's other signals: none
        try:
            return world.metrics(promql)
        except AssertionError:
            return []

    world.prometheus.answer = answer
    for _ in range(6):
        world.tick()
    assert world.status["phase"] == "Promoted"
    ids = [n.id for n in sent]
    assert sent[-1].event is E.PROMOTED
    assert len(ids) == len(set(ids))
    history = [(d["reason"], d["step"]) for d in world.status["history"]]
    expected = [(r, s) for r, s in history if r in notify.EVENT_OF_REASON]
    assert [(n.decision["reason"], n.decision["step"]) for n in sent] == expected

    # A new process (new shell, new WrittenStatus) on the same stored rollout: nothing is resent.
    restarted = list(sent)
    world.written = type(world.written)()
    world.tick()
    world.tick()
    assert sent == restarted


# ---------------------------------------------------------------- bodies


def a_notification(event: E = E.ROLLED_BACK) -> Notification:
    d = decision("GateFailed", 1, evidence=[GATE])
    return Notification("uid-1:t:GateFailed:1", event, ROLLOUT, "RolledBack", 3, api.dump(d))


def test_webhook_body_carries_the_whole_decision_and_a_stable_id() -> None:
    body = notify.webhook_body(a_notification())
    assert body["id"] == "uid-1:t:GateFailed:1" and body["event"] == "RolledBack"
    assert body["rollout"] == {"namespace": "support", "name": "ticket-triage", "uid": "uid-1"}
    assert body["step"] == "2/3" and body["decision"]["evidence"][0]["value"] == 0.2
    assert body["summary"] == "AgentRollout support/ticket-triage: rolled back to legacy at step 2/3"
    json.dumps(body)  # serialisable as it is


def test_slack_body_has_text_and_blocks_within_slack_limits() -> None:
    n = a_notification()
    long = Notification(n.id, n.event, n.rollout, n.phase, n.steps, {**n.decision, "message": "x" * 5000})
    body = notify.slack_body(long)
    assert body["text"].startswith("AgentRollout support/ticket-triage: rolled back")
    header, message, fields, evidence, context = body["blocks"]
    assert header["type"] == "header" and len(header["text"]["text"]) <= 150
    assert len(message["text"]["text"]) <= 3000 and len(body["text"]) <= 3000
    assert len(fields["fields"]) <= 10 and {"type": "mrkdwn", "text": "*Step*\n2/3"} in fields["fields"]
    assert "error-rate: Fail (0.2, bound <= 0.01, 240 samples)" in evidence["text"]["text"]
    assert context["elements"][0]["text"] == f"id {n.id}"


def test_teams_body_is_a_message_with_one_adaptive_card() -> None:
    body = notify.teams_body(a_notification())
    assert body["type"] == "message"
    (attachment,) = body["attachments"]
    assert attachment["contentType"] == "application/vnd.microsoft.card.adaptive"
    card = attachment["content"]
    assert card["type"] == "AdaptiveCard" and card["version"] == "1.4"
    facts = next(b for b in card["body"] if b["type"] == "FactSet")["facts"]
    assert {"title": "Event", "value": "RolledBack"} in facts and {"title": "Step", "value": "2/3"} in facts
    assert any("error-rate: Fail" in b.get("text", "") for b in card["body"])


def test_backoff_doubles_from_its_base_up_to_its_cap() -> None:
    assert [notify.backoff(a, 1.0, 30.0) for a in range(1, 8)] == [1, 2, 4, 8, 16, 30, 30]


# ---------------------------------------------------------------- delivery


SPEC = api.parse_spec(
    {
        "legacy": {"deployment": "rules"},
        "candidate": {"deployment": "agent"},
        "traffic": {"gatewayAPI": {"httpRoute": "r", "legacyBackend": "rules", "candidateBackend": "agent"}},
        "steps": [{"setWeight": 50}, {"setWeight": 100}],
        "notifications": [
            {
                "name": "oncall",
                "type": "webhook",
                "urlFrom": {"secretKeyRef": {"name": "hook", "key": "url"}},
            },
            {
                "name": "chat",
                "type": "slack",
                "urlFrom": {"secretKeyRef": {"name": "hook", "key": "slack"}},
                "events": ["RolledBack"],
            },
        ],
    }
)
BODY = {
    "apiVersion": f"{api.GROUP}/{api.VERSION}",
    "kind": api.KIND,
    "metadata": {"namespace": "support", "name": "ticket-triage", "uid": "uid-1", "resourceVersion": "7"},
}


class Harness:
    """A Notifier with a scripted poster, secrets in a dict and Events in a list."""

    def __init__(
        self, outcomes: Callable[[str, dict[str, Any]], Coroutine[Any, Any, None]] | None = None, **kw: Any
    ):
        self.posted: list[tuple[str, dict[str, Any], str]] = []
        self.events: list[tuple[str, str, str]] = []
        self.secrets = {
            ("support", "hook", "url"): "http://sink/url",
            ("support", "hook", "slack"): "http://sink/slack",
        }
        self.sleeps: list[float] = []
        self.outcomes = outcomes

        async def read_secret(namespace: str, name: str, key: str) -> str:
            if (namespace, name, key) not in self.secrets:
                raise SecretUnavailable(f"Secret {namespace}/{name}: 403 forbidden")
            return self.secrets[(namespace, name, key)]

        async def post(url: str, payload: bytes, key: str) -> None:
            body = json.loads(payload)
            self.posted.append((url, body, key))
            if self.outcomes is not None:
                await self.outcomes(url, body)

        self.notifier = Notifier(
            read_secret,
            lambda body, type, reason, message: self.events.append((type, reason, message)),
            poster=post,
            **{"backoff": 0.001, "backoff_cap": 0.002, **kw},
        )

    def decide(
        self, *history: api.Decision, phase: api.Phase = api.Phase.PROGRESSING, spec: Any = SPEC
    ) -> None:
        before = status(api.Phase.PROGRESSING, *history[:-1])
        self.notifier.decided(BODY, spec, before, status(phase, *history))


def run(test: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(asyncio.wait_for(test(), timeout=10))


async def drained(h: Harness) -> None:
    await asyncio.gather(*(sink.queue.join() for sink in h.notifier._sinks.values()))
    await h.notifier.close()


def counter(name: str, **labels: str) -> float:
    return metrics.REGISTRY.get_sample_value(name, labels) or 0.0


def test_each_sink_gets_the_events_it_asked_for_in_order_with_the_url_from_its_secret() -> None:
    h = Harness()

    async def test() -> None:
        d1 = decision("StepCompleted", 0, time="t1")
        d2 = decision("GateFailed", 1, time="t2")
        h.decide(d1)
        h.decide(d1, d2, phase=api.Phase.ROLLED_BACK)
        await drained(h)

    run(test)
    to_webhook = [(b["event"], b["decision"]["step"]) for url, b, _ in h.posted if url == "http://sink/url"]
    to_slack = [b["text"] for url, b, _ in h.posted if url == "http://sink/slack"]
    assert to_webhook == [("StepCompleted", 0), ("RolledBack", 1)]
    assert len(to_slack) == 1 and "rolled back" in to_slack[0]
    assert h.events == []


def test_a_failing_sink_is_retried_with_backoff_then_given_up_with_one_event_per_streak() -> None:
    async def refuse(url: str, body: dict[str, Any]) -> None:
        raise DeliveryFailed("connection", "Connection refused")

    h = Harness(refuse, attempts=3)
    only_webhook = SPEC.model_copy(update={"notifications": SPEC.notifications[:1]})
    label = "support/oncall"
    failures = counter("agent_rollout_notification_failures_total", sink=label, reason="connection")
    abandoned = counter("agent_rollout_notification_failures_total", sink=label, reason="abandoned")

    async def test() -> None:
        d1, d2 = decision("StepCompleted", 0, time="t1"), decision("StepCompleted", 1, time="t2")
        h.decide(d1, spec=only_webhook)
        h.decide(d1, d2, spec=only_webhook)
        await drained(h)

    run(test)
    assert [b["decision"]["step"] for _, b, _ in h.posted] == [0, 0, 0, 1, 1, 1]  # order kept across retries
    assert {key for _, _, key in h.posted[:3]} == {"uid-1:t1:StepCompleted:0"}  # one id for every attempt
    assert (
        counter("agent_rollout_notification_failures_total", sink=label, reason="connection") == failures + 6
    )
    assert (
        counter("agent_rollout_notification_failures_total", sink=label, reason="abandoned") == abandoned + 2
    )
    assert len(h.events) == 1  # one Warning per failure streak, not one per attempt
    type_, reason, message = h.events[0]
    assert (type_, reason) == ("Warning", "NotificationFailed")
    assert "support/oncall" in message and "connection" in message and "http://" not in message


def test_a_success_ends_the_streak_so_the_next_failure_is_reported_again() -> None:
    script = iter(["fail", "ok", "fail"])

    async def scripted(url: str, body: dict[str, Any]) -> None:
        if next(script) == "fail":
            raise DeliveryFailed("http", "HTTP 400", retry=False)  # a 4xx is not retried

    h = Harness(scripted)
    only_webhook = SPEC.model_copy(update={"notifications": SPEC.notifications[:1]})

    async def test() -> None:
        ds = [decision("StepCompleted", i, time=f"t{i}") for i in range(3)]
        for i in range(3):
            h.decide(*ds[: i + 1], spec=only_webhook)
        await drained(h)

    run(test)
    assert len(h.posted) == 3
    assert [r for _, r, _ in h.events] == ["NotificationFailed", "NotificationFailed"]


def test_a_hung_sink_fills_its_bounded_queue_drops_are_counted_and_deciding_never_waits() -> None:
    release = asyncio.Event()

    async def hang(url: str, body: dict[str, Any]) -> None:
        await release.wait()

    h = Harness(hang, queue_size=2)
    only_webhook = SPEC.model_copy(update={"notifications": SPEC.notifications[:1]})
    dropped = counter("agent_rollout_notification_failures_total", sink="support/oncall", reason="queue_full")

    async def test() -> None:
        ds = [decision("StepCompleted", i, time=f"t{i}") for i in range(6)]
        h.decide(ds[0], spec=only_webhook)
        await asyncio.sleep(0.01)  # the worker takes the first and hangs on it
        for i in range(1, 6):
            h.decide(*ds[: i + 1], spec=only_webhook)  # returns at once: it only queues
        assert h.notifier.waiting() == 2
        release.set()
        await drained(h)

    run(test)
    assert [b["decision"]["step"] for _, b, _ in h.posted] == [0, 1, 2]
    after = counter("agent_rollout_notification_failures_total", sink="support/oncall", reason="queue_full")
    assert after == dropped + 3
    assert [r for _, r, _ in h.events] == ["NotificationFailed"]


def test_an_unreadable_secret_is_a_failure_naming_the_secret() -> None:
    h = Harness(attempts=2)
    h.secrets.clear()
    only_webhook = SPEC.model_copy(update={"notifications": SPEC.notifications[:1]})

    async def test() -> None:
        h.decide(decision("StepCompleted", 0, time="t1"), spec=only_webhook)
        await drained(h)

    run(test)
    assert h.posted == []
    assert (
        len(h.events) == 1 and "(secret)" in h.events[0][2] and "Secret support/hook: 403" in h.events[0][2]
    )


def test_operator_sinks_read_their_secret_in_the_operator_namespace_and_filter_namespaces() -> None:
    config = OperatorConfig.model_validate(
        {
            "secretNamespace": "agent-rollout",
            "sinks": [
                {
                    "name": "platform",
                    "type": "teams",
                    "urlFrom": {"secretKeyRef": {"name": "teams", "key": "url"}},
                    "events": ["Promoted"],
                    "namespaces": ["support"],
                },
                {
                    "name": "other",
                    "urlFrom": {"secretKeyRef": {"name": "x", "key": "y"}},
                    "namespaces": ["elsewhere"],
                },
            ],
        }
    )
    h = Harness(config=config)
    h.secrets[("agent-rollout", "teams", "url")] = "http://teams"

    async def test() -> None:
        h.decide(decision("Promoted", 1, time="t1"), phase=api.Phase.PROMOTED, spec=None)
        await drained(h)

    run(test)
    assert [(url, b["type"]) for url, b, _ in h.posted] == [("http://teams", "message")]


def test_nothing_configured_costs_nothing() -> None:
    h = Harness()
    no_sinks = SPEC.model_copy(update={"notifications": []})

    async def test() -> None:
        h.decide(decision("StepCompleted", 0, time="t1"), spec=no_sinks)
        assert h.notifier._sinks == {}

    run(test)


@pytest.mark.parametrize("sink_type", list(api.SinkType))
def test_every_sink_type_has_a_body(sink_type: api.SinkType) -> None:
    assert json.dumps(notify.BODY_OF[sink_type](a_notification()))


# ---------------------------------------------------------------- the adapters: Secret and HTTP


class _Secrets:
    def __init__(self, answer: Any) -> None:
        self.answer = answer

    def read_namespaced_secret(self, name: str, namespace: str) -> Any:
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


def test_the_secret_key_is_read_decoded_and_a_refusal_names_the_secret_not_its_value() -> None:
    import base64

    import kubernetes
    from kubernetes.client.exceptions import ApiException

    from agent_rollout.kube import KubeClient, RateLimiter

    client = KubeClient(kubernetes.client.ApiClient(), limiter=RateLimiter(qps=1000, burst=1000))
    url = "https://hooks.slack.com/services/T0/B0/secret-token"
    secret = kubernetes.client.V1Secret(data={"url": base64.b64encode(url.encode()).decode()})
    client._core = _Secrets(secret)  # type: ignore[assignment]
    assert asyncio.run(client.read_secret_key("support", "hooks", "url")) == url
    with pytest.raises(SecretUnavailable, match="has no key 'slack'"):
        asyncio.run(client.read_secret_key("support", "hooks", "slack"))
    client._core = _Secrets(ApiException(status=403, reason="Forbidden"))  # type: ignore[assignment]
    with pytest.raises(SecretUnavailable, match="Secret support/hooks: 403") as refused:
        asyncio.run(client.read_secret_key("support", "hooks", "url"))
    assert "secret-token" not in str(refused.value)


@pytest.mark.parametrize(
    ("status", "reason", "retry"),
    [(200, None, None), (204, None, None), (500, "http", True), (429, "http", True), (404, "http", False)],
)
def test_http_answers_are_delivered_retried_or_given_up(
    status: int, reason: str | None, retry: bool | None
) -> None:
    from aiohttp import ClientSession, web

    from agent_rollout.notifier import post_json

    seen: list[tuple[str, bytes]] = []

    async def hook(request: web.Request) -> web.Response:
        seen.append((request.headers["Idempotency-Key"], await request.read()))
        return web.Response(status=status)

    async def test() -> DeliveryFailed | None:
        app = web.Application()
        app.router.add_post("/hook", hook)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        try:
            async with ClientSession() as session:
                await post_json(session, f"http://127.0.0.1:{port}/hook", b'{"a":1}', "id-1", timeout=5)
        except DeliveryFailed as e:
            return e
        finally:
            await runner.cleanup()
        return None

    failed = asyncio.run(test())
    assert seen == [("id-1", b'{"a":1}')]
    if reason is None:
        assert failed is None
    else:
        assert failed is not None and (failed.reason, failed.retry) == (reason, retry)


def test_an_unusable_url_is_given_up_without_showing_it() -> None:
    from aiohttp import ClientSession

    from agent_rollout.notifier import post_json

    async def test() -> DeliveryFailed:
        async with ClientSession() as session:
            try:
                await post_json(session, "not a url/secret-token", b"{}", "id-1", timeout=1)
            except DeliveryFailed as e:
                return e
        raise AssertionError("delivered to an unusable URL")

    failed = asyncio.run(test())
    assert not failed.retry and "secret-token" not in str(failed)
