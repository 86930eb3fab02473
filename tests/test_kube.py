"""The Kubernetes adapter's plumbing: pacing, 429 backoff, the connection pool size, refused writes."""

from __future__ import annotations

import asyncio
from pathlib import Path

import kubernetes
import pytest
from kubernetes.client.exceptions import ApiException

from agent_rollout.kube import KubeClient, RateLimiter


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
