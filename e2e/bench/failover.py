"""Leader failover: `python -m e2e.bench.failover [--runs N]`.

Two operator processes with leader election (leader.py) at the chart's timings (lease 15 s, renew
deadline 10 s, retry 2 s) against the real apiserver. Per run: a rollout paused at 20% on the leader,
the leader SIGKILLed and, at that same moment, a human's abort. Measured: SIGKILL -> the abort acted on
by the new leader (the HTTPRoute gives the candidate weight 0), the time an incident waits when the
leader dies with it. Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import secrets
import statistics
import time
from typing import Any

from kubernetes import client

from agent_rollout import api
from agent_rollout.leader import DURATION, RENEW_DEADLINE, RETRY_PERIOD
from e2e.bench.rollback_speed import cluster, install_crd, terminate_as_exit
from e2e.cluster import ClusterState
from e2e.cluster.kubeapi import KubeApi
from e2e.rollout.scene import CANDIDATE, LEGACY, ROUTE, OperatorProcess, wait_until

LEASE_NAMESPACE = "default"
LEASE = "agent-rollout-bench"
TIMINGS = {
    "AGENT_ROLLOUT_LEASE_DURATION": f"{DURATION:g}",
    "AGENT_ROLLOUT_LEASE_RENEW_DEADLINE": f"{RENEW_DEADLINE:g}",
    "AGENT_ROLLOUT_LEASE_RETRY_PERIOD": f"{RETRY_PERIOD:g}",
}


def replica(state: ClusterState, name: str) -> OperatorProcess:
    args = [
        "--leader-election-namespace",
        LEASE_NAMESPACE,
        "--leader-election-lease",
        LEASE,
        "--identity",
        name,
    ]
    return OperatorProcess(state.kubeconfig, state.run_dir / f"bench-{name}.log", args, env=TIMINGS)


def holder(kube: KubeApi) -> str | None:
    try:
        lease = client.CoordinationV1Api(kube.client).read_namespaced_lease(LEASE, LEASE_NAMESPACE)
    except client.ApiException as e:
        if e.status == 404:
            return None
        raise
    return lease.spec.holder_identity if lease.spec else None


def candidate_weight(kube: KubeApi, namespace: str) -> int:
    route = kube.get_httproute(namespace, ROUTE)
    weights = {ref["name"]: ref.get("weight", 1) for ref in route["spec"]["rules"][0]["backendRefs"]}
    return int(weights[CANDIDATE])


def one_run(index: int, state: ClusterState, kube: KubeApi) -> float:
    namespace = f"bench-failover-{index}-{secrets.token_hex(3)}"
    kube.core.create_namespace({"metadata": {"name": namespace}})  # type: ignore[arg-type]
    leader, standby = replica(state, f"{namespace}-a"), replica(state, f"{namespace}-b")
    try:
        kube.create_agent_backends(namespace, {LEGACY: LEGACY, CANDIDATE: CANDIDATE})
        kube.create_httproute(namespace, ROUTE, {LEGACY: 100, CANDIDATE: 0})
        for name in (LEGACY, CANDIDATE):
            kube.wait_deployment_available(namespace, name)
        leader.start()
        wait_until("the first replica to lead", lambda: holder(kube) == f"{namespace}-a", 60)
        standby.start()
        wait_until(
            "the second replica standing by",
            lambda: "standby: waiting for the lease" in standby.log_path.read_text(errors="replace"),
            60,
        )
        router = {"httpRoute": ROUTE, "legacyBackend": LEGACY, "candidateBackend": CANDIDATE}
        rollout: Any = {
            "apiVersion": f"{api.GROUP}/{api.VERSION}",
            "kind": api.KIND,
            "metadata": {"name": "bench", "namespace": namespace},
            "spec": {
                "legacy": {"deployment": LEGACY},
                "candidate": {"deployment": CANDIDATE},
                "traffic": {"gatewayAPI": router},
                "steps": [{"setWeight": 20}, {"pause": {}}, {"setWeight": 100}],
            },
        }
        kube.custom.create_namespaced_custom_object(api.GROUP, api.VERSION, namespace, api.PLURAL, rollout)
        wait_until("the candidate at 20%", lambda: candidate_weight(kube, namespace) == 20, 60)
        leader.kill()
        killed = time.monotonic()
        kube.custom.patch_namespaced_custom_object_status(
            api.GROUP, api.VERSION, namespace, api.PLURAL, "bench", {"status": {"abort": True}}
        )
        wait_until("the abort acted on", lambda: candidate_weight(kube, namespace) == 0, 4 * DURATION, 0.05)
        return time.monotonic() - killed
    finally:
        leader.kill()
        standby.stop()  # hands the Lease back: the next run's first replica leads at once
        kube.core.delete_namespace(namespace, propagation_policy="Background")


def main(runs: int = 3) -> None:
    print(
        f"== leader failover: {runs} runs, lease {DURATION:g}s, renew deadline {RENEW_DEADLINE:g}s, "
        f"retry {RETRY_PERIOD:g}s (the chart's defaults)"
    )
    seconds: list[float] = []
    with terminate_as_exit(), cluster() as state:
        kube = KubeApi(state.kubeconfig)
        try:
            install_crd(state)
            for i in range(1, runs + 1):
                try:
                    seconds.append(one_run(i, state, kube))
                except Exception as e:  # one broken run must not hide the others' figures
                    print(f"run {i}/{runs}: FAILED: {e}")
                    continue
                print(
                    f"run {i}/{runs}: leader SIGKILL -> abort acted on by the new leader {seconds[-1]:.1f}s"
                )
        finally:
            kube.close()
    if seconds:
        print(
            f"failover (leader SIGKILL -> the next decision by the new leader) over {len(seconds)} runs: "
            f"min {min(seconds):.1f}s median {statistics.median(seconds):.1f}s max {max(seconds):.1f}s "
            f"(bound: lease {DURATION:g}s + retry {RETRY_PERIOD:g}s + one reconcile)"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=3)
    main(parser.parse_args().runs)
