"""Two operator replicas with leader election (leader.py) against the real apiserver.

Who wrote what is read from the apiserver's audit log: every request of a replica carries
`agent-rollout/<identity>` as its User-Agent (kube.user_agent), so each write (status, route, Event) is
counted per replica. The Lease's own reads and writes are the election itself and are left out.

- The standby writes nothing while the leader lives, and the leader writes nothing once it is dead: the
  two replicas' writes never interleave.
- A rollout in a timed pause on the leader, the leader SIGKILLed: the standby takes the Lease once it
  expires and finishes the rollout, with every step in its history exactly once.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from kubernetes import client

from agent_rollout import api
from agent_rollout.kube import user_agent
from e2e.cluster import ClusterState, audit, chart, identity
from e2e.cluster.components import audit_log_path
from e2e.cluster.kubeapi import KubeApi
from e2e.rollout.scene import CANDIDATE, LEGACY, OperatorProcess, Scene, wait_until

ERROR_GATE = {"name": "error-rate", "template": "errorRate", "max": 0.05, "window": "30s"}
LEASE = chart.RELEASE  # the chart's Role lets the operator get and update only the Lease named so
# Short, so the test waits seconds for a takeover; the same rule as the chart's 15/10/2 s.
TIMINGS = {
    "AGENT_ROLLOUT_LEASE_DURATION": "4",
    "AGENT_ROLLOUT_LEASE_RENEW_DEADLINE": "3",
    "AGENT_ROLLOUT_LEASE_RETRY_PERIOD": "0.5",
    "AGENT_ROLLOUT_ANALYSIS_REFRESH": "0",
}


def replica(operator: OperatorProcess, cluster: ClusterState, name: str) -> OperatorProcess:
    args = ["--leader-election-namespace", chart.RELEASE_NAMESPACE, "--leader-election-lease", LEASE]
    return OperatorProcess(
        operator.kubeconfig,  # the chart's ServiceAccount, as the session's operator
        cluster.run_dir / f"{name}.log",
        [*args, "--identity", name],
        env=TIMINGS,
    )


def lease_holder(kube_api: KubeApi) -> str | None:
    coordination = client.CoordinationV1Api(kube_api.client)
    try:
        lease = coordination.read_namespaced_lease(LEASE, chart.RELEASE_NAMESPACE)
    except client.ApiException as e:
        if e.status == 404:
            return None
        raise
    return lease.spec.holder_identity if lease.spec else None


def test_a_rollout_mid_pause_on_a_killed_leader_finishes_on_the_standby_and_they_never_both_write(
    scene: Callable[..., Scene], operator: OperatorProcess, cluster: ClusterState, kube_api: KubeApi
) -> None:
    s = scene(rps=10, duration_s=400)
    suffix = s.namespace[-6:]
    first, second = f"replica-a-{suffix}", f"replica-b-{suffix}"
    leader, standby = replica(operator, cluster, first), replica(operator, cluster, second)
    log = audit_log_path(cluster.run_dir)
    since = datetime.now(UTC)
    operator.stop()  # one writer at a time: the session's operator (no election) steps aside
    try:
        leader.start()
        wait_until(f"{first} to hold the Lease", lambda: lease_holder(kube_api) == first, 30)
        standby.start()
        wait_until(
            f"{second} warm and standing by",
            lambda: "standby: waiting for the lease" in standby.log_path.read_text(errors="replace"),
            30,
        )
        steps: list[dict[str, Any]] = [
            {"setWeight": 20},
            {"pause": {"duration": "25s"}},
            {"setWeight": 60},
            {"pause": {"duration": "5s"}},
            {"setWeight": 100},
        ]
        s.apply(s.rollout_manifest("ha", steps=steps, minSamples=5, gates=[ERROR_GATE]))
        wait_until("the leader in the 25 s pause", lambda: s.status("ha").get("currentStep") == 1, 60)
        assert s.route_weights() == {LEGACY: 80, CANDIDATE: 20}
        time.sleep(3)  # a few evaluations of the pause written by the leader, the standby watching them
        killed_at = datetime.now(UTC)
        leader.kill()

        s.wait_for_phase("ha", "Promoted", timeout_s=90)
        assert lease_holder(kube_api) == second
        assert s.route_weights() == {LEGACY: 0, CANDIDATE: 100}
        assert standby.alive(), standby.log_tail()
    finally:
        leader.kill()
        standby.stop()
        # The replicas' writes end here: the session's operator, back from now on, may write too.
        until = datetime.now(UTC)
        operator.start()

    history = s.status("ha")["history"]
    moves = [
        (d["reason"], d["step"]) for d in history if d["reason"] in ("Started", "StepCompleted", "Promoted")
    ]
    repeated = [move for move, n in Counter(moves).items() if n > 1]
    assert not repeated, f"steps repeated after the takeover: {repeated}\n{moves}"
    # A StepCompleted names the step it enters: each of the four after the first, once.
    assert [step for reason, step in moves if reason == "StepCompleted"] == [1, 2, 3, 4], moves

    username = identity.username(chart.RELEASE_NAMESPACE, chart.RELEASE)
    ours = [
        w
        for w in audit.writes(log, username)
        if since <= w.at < until
        and w.namespace == s.namespace
        and not w.resource.startswith("coordination.k8s.io/")
    ]
    by_leader = [w for w in ours if w.user_agent == user_agent(first)]
    by_standby = [w for w in ours if w.user_agent == user_agent(second)]
    others = [w for w in ours if w not in by_leader and w not in by_standby]
    assert not others, f"writes by neither replica: {others[:5]}"
    assert by_leader and by_standby, (len(by_leader), len(by_standby))
    # The standby wrote nothing while the leader lived; the dead leader nothing after.
    assert by_leader[-1].at < killed_at < by_standby[0].at, (by_leader[-1], killed_at, by_standby[0])
    kinds = Counter(w.resource for w in by_standby)
    assert kinds[f"{api.GROUP}/{api.PLURAL}/status"] and kinds["/events"], kinds
    failover = (by_standby[0].at - killed_at).total_seconds()
    print(
        f"\nleader {first}: {len(by_leader)} writes; standby {second}: {len(by_standby)} writes, "
        f"the first {failover:.1f} s after the leader's SIGKILL (lease 4 s, retry 0.5 s)"
    )
