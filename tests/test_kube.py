"""The Kubernetes adapter's plumbing: pacing, 429 backoff, the connection pool size, refused writes."""

from __future__ import annotations

import asyncio
from pathlib import Path

import kubernetes
import pytest
from kubernetes.client.exceptions import ApiException

from agent_rollout.deletion import FINALIZER
from agent_rollout.kube import OTHER, TRAFFIC, KubeClient, RateLimiter, Slots


def test_throttled_call_is_retried_after_the_servers_retry_after() -> None:
    client = KubeClient(kubernetes.client.ApiClient(), limiter=RateLimiter(qps=1000, burst=1000))
    answers: list[int] = []

    def call() -> str:
        answers.append(429)
        if len(answers) < 3:
            error = ApiException(status=429, reason="Too Many Requests")
            error.headers = {"Retry-After": "0"}
            raise error
        return "stored"

    assert asyncio.run(client._run(call)) == "stored"
    assert len(answers) == 3


def test_other_errors_are_not_retried() -> None:
    client = KubeClient(kubernetes.client.ApiClient(), limiter=RateLimiter(qps=1000, burst=1000))
    calls = 0

    def call() -> None:
        nonlocal calls
        calls += 1
        raise ApiException(status=500, reason="Internal Server Error")

    with pytest.raises(ApiException):
        asyncio.run(client._run(call))
    assert calls == 1


def test_rate_limiter_paces_calls_beyond_the_burst() -> None:
    now = [0.0]
    slept: list[float] = []

    async def run() -> None:
        limiter = RateLimiter(qps=10, burst=2, clock=lambda: now[0])
        real_sleep = asyncio.sleep

        async def fake_sleep(seconds: float) -> None:
            slept.append(seconds)
            now[0] += seconds
            await real_sleep(0)

        asyncio.sleep = fake_sleep  # type: ignore[assignment]
        try:
            for _ in range(4):
                await limiter.acquire()
        finally:
            asyncio.sleep = real_sleep  # type: ignore[assignment]

    asyncio.run(run())
    assert slept == [pytest.approx(0.1), pytest.approx(0.1)]  # two in the burst, then 10 a second


def test_connection_pool_is_sized_before_the_client_builds_it(tmp_path: Path) -> None:
    kubeconfig = tmp_path / "config"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: c\n"
        "clusters: [{name: k, cluster: {server: 'https://127.0.0.1:1'}}]\n"
        "contexts: [{name: c, context: {cluster: k, user: u}}]\nusers: [{name: u, user: {token: t}}]\n"
    )

    client = KubeClient.from_environment(pool_size=24, kubeconfig=str(kubeconfig))

    pool = client._custom.api_client.rest_client.pool_manager
    assert pool.connection_pool_kw["maxsize"] == 24


def test_events_have_a_budget_of_their_own_and_a_full_backlog_drops_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A burst of decisions must not queue its Events in front of the next decision's writes, and a
    backlog of Events must not grow without bound (status.history keeps every decision anyway)."""
    monkeypatch.setattr("agent_rollout.kube.MAX_EVENTS_WAITING", 5)
    monkeypatch.setenv("AGENT_ROLLOUT_EVENT_QPS", "0.001")  # one Event now, the rest wait
    monkeypatch.setenv("AGENT_ROLLOUT_EVENT_BURST", "1")
    client = KubeClient(kubernetes.client.ApiClient(), limiter=RateLimiter(qps=1000, burst=1))
    posted: list[str] = []
    monkeypatch.setattr(
        client._core, "create_namespaced_event", lambda ns, body, **_: posted.append(body.reason)
    )
    rollout = {
        "apiVersion": "agentrollout.io/v1alpha1",
        "kind": "AgentRollout",
        "metadata": {"name": "r", "namespace": "ns", "uid": "u"},
    }

    async def run() -> str:
        for i in range(20):
            client.post_event_soon(rollout, "Normal", f"Decision{i}", "m")
        await asyncio.sleep(0.05)
        # The decisions' own budget is untouched: a write goes through at once.
        return await asyncio.wait_for(client._run(lambda: "route written"), timeout=1)

    assert asyncio.run(run()) == "route written"
    assert posted == ["Decision0"]  # the Event budget's one token
    assert client.events_dropped == 15  # 5 waited for the budget, the other 15 were dropped


def test_releasing_the_finalizer_of_a_rollout_already_gone_is_done_not_an_error() -> None:
    # The store may still hold a rollout whose deletion our previous release completed.
    client = KubeClient(kubernetes.client.ApiClient(), limiter=RateLimiter(qps=1000, burst=1000))
    answers: list[int] = []

    def patch(*args: object, **kwargs: object) -> None:
        answers.append(404)
        raise ApiException(status=404, reason="Not Found")

    client._custom.patch_namespaced_custom_object = patch  # type: ignore[method-assign]
    assert not asyncio.run(client.remove_finalizer("support", "gone", [FINALIZER], FINALIZER))
    assert answers == [404]

    def refused(*args: object, **kwargs: object) -> None:
        raise ApiException(status=500, reason="Internal Server Error")

    client._custom.patch_namespaced_custom_object = refused  # type: ignore[method-assign]
    with pytest.raises(ApiException):
        asyncio.run(client.remove_finalizer("support", "x", [FINALIZER], FINALIZER))


def test_a_route_write_waiting_for_the_budget_goes_before_every_waiting_status_write() -> None:
    # At 10,000 rollouts the budget is the queue: a rollback's route write must not wait behind it.
    order: list[str] = []

    async def run() -> None:
        limiter = RateLimiter(qps=200, burst=1)
        await limiter.acquire()  # the burst is spent: everything below waits for tokens

        async def call(name: str, priority: int) -> None:
            await limiter.acquire(priority)
            order.append(name)

        statuses = [asyncio.create_task(call(f"status-{i}", OTHER)) for i in range(5)]
        await asyncio.sleep(0)  # the status writes are queued first
        route = asyncio.create_task(call("route", TRAFFIC))
        await asyncio.gather(route, *statuses)

    asyncio.run(run())
    assert order == ["route", "status-0", "status-1", "status-2", "status-3", "status-4"]


def test_a_cancelled_wait_gives_its_turn_to_the_next_caller() -> None:
    order: list[str] = []

    async def run() -> None:
        limiter = RateLimiter(qps=200, burst=1)
        await limiter.acquire()

        async def call(name: str) -> None:
            await limiter.acquire()
            order.append(name)

        first, second = asyncio.create_task(call("first")), asyncio.create_task(call("second"))
        await asyncio.sleep(0)
        first.cancel()
        await asyncio.gather(second)

    asyncio.run(run())
    assert order == ["second"]


def test_with_every_slot_taken_a_route_write_gets_the_next_one_before_waiting_status_writes() -> None:
    # Without a client-side rate the slots are the queue: priority must hold there too.
    order: list[str] = []

    async def run() -> None:
        slots = Slots(2)
        await slots.acquire()
        await slots.acquire()  # both in flight

        async def call(name: str, priority: int) -> None:
            await slots.acquire(priority)
            order.append(name)
            slots.release()

        statuses = [asyncio.create_task(call(f"status-{i}", OTHER)) for i in range(3)]
        await asyncio.sleep(0)
        route = asyncio.create_task(call("route", TRAFFIC))
        await asyncio.sleep(0)
        assert order == []  # nothing runs while both slots are held
        slots.release()
        await asyncio.gather(route, *statuses)

    asyncio.run(run())
    assert order == ["route", "status-0", "status-1", "status-2"]


def test_a_cancelled_slot_waiter_passes_its_slot_on() -> None:
    async def run() -> list[str]:
        slots, got = Slots(1), []
        await slots.acquire()

        async def call(name: str) -> None:
            await slots.acquire()
            got.append(name)

        first, second = asyncio.create_task(call("first")), asyncio.create_task(call("second"))
        await asyncio.sleep(0)
        slots.release()  # handed to "first", which is cancelled before it runs
        first.cancel()
        await asyncio.gather(second)
        return got

    assert asyncio.run(run()) == ["second"]


def test_a_qps_of_zero_sets_no_client_side_rate_and_calls_still_go_through(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AGENT_ROLLOUT_KUBE_QPS", "0")
    client = KubeClient(kubernetes.client.ApiClient(), pool_size=2)

    async def many() -> list[int]:
        return await asyncio.gather(*(client._run(lambda i=i: i) for i in range(50)))

    assert asyncio.run(many()) == list(range(50))
    assert client._limiter is None
