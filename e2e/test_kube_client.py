"""The operator's Kubernetes client against the real apiserver: connections are kept and reused.

Every call the operator makes to the apiserver goes through kube.KubeClient's urllib3 pool. A call
whose answer is not read to its end never gives its connection back, and the next call opens a new
TLS connection: a handshake for the operator and the apiserver each, per call, on the 2 cores they
share with etcd and Prometheus.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from agent_rollout import kube
from e2e.cluster import ClusterState
from e2e.cluster.kubeapi import KubeApi

pytestmark = pytest.mark.e2e

POOL_SIZE = 4
CALLS = 40


def _connections_opened(api_client: Any) -> int:
    """TLS connections the client's urllib3 pool has opened to the apiserver since it was built."""
    pools = api_client.rest_client.pool_manager.pools
    keys = list(pools.keys())  # urllib3's pool container cannot be iterated itself
    return sum(pools[key].num_connections for key in keys)


async def _post_events(client: kube.KubeClient, involved: dict[str, Any], count: int) -> None:
    """One after another: each waits for the one before, so one connection could carry them all."""
    for i in range(count):
        client.post_event_soon(involved, "Normal", "ConnectionReuse", f"event {i}")
        while client._posting:
            await asyncio.sleep(0.01)


def test_posted_events_give_their_connection_back(
    cluster: ClusterState, kube_api: KubeApi, namespace: str
) -> None:
    config_map = kube_api.core.create_namespaced_config_map(namespace, {"metadata": {"name": "involved"}})
    involved = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "involved", "namespace": namespace, "uid": config_map.metadata.uid},
    }
    api_client = kube._api_client(POOL_SIZE, str(cluster.kubeconfig))
    client = kube.KubeClient(api_client, pool_size=POOL_SIZE)
    try:
        asyncio.run(_post_events(client, involved, CALLS))
        opened = _connections_opened(api_client)
    finally:
        client.close()

    events = kube_api.core.list_namespaced_event(namespace, field_selector="reason=ConnectionReuse").items
    assert len(events) == CALLS, f"{len(events)} of {CALLS} Events reached the apiserver"
    assert opened <= POOL_SIZE, f"{CALLS} Events posted one after another opened {opened} connections"
