"""What one AgentRollout status write costs the real kube-apiserver, on a cluster of its own.

    python -m e2e.bench.status_write_cost [--rollouts N]

At 10,000 new rollouts the operator's start-up is one status write each (the acknowledgement), and
the kube-apiserver, not the operator, is what that waits for (2026-11-28: 108% of a core against the
operator's 38% in the first 70 s). Each round creates N new rollouts as `make bench-scale` does
and writes each one's first status (the acknowledgement, 16 writes in flight as the operator's client
has them), then GETs each once: the CRD as shipped, a lean acknowledgement (its phase, message and
conditions, without the empty fields), the CRD without its CEL rules (x-kubernetes-validations), and
both again. Each line prints the calls per second and the apiserver's CPU per call (its utime + stime
from /proc).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, cast

import yaml
from kubernetes import client

from agent_rollout import api
from e2e.bench.operator_scale import Target, bulk_client, cpu_seconds, machine, own_cluster, rollout_body
from e2e.bench.rollback_speed import install_crd
from e2e.cluster.state import ClusterState
from e2e.rollout.scene import CRD_FILE

ROLLOUTS = 2000
CONCURRENCY = 16  # the operator's API calls in flight (kube.POOL_SIZE)
NAMESPACE = "write-cost"


def without_cel(node: Any) -> Any:
    """The CRD's schema with every x-kubernetes-validations rule left out."""
    if isinstance(node, dict):
        return {k: without_cel(v) for k, v in node.items() if k != "x-kubernetes-validations"}
    if isinstance(node, list):
        return [without_cel(v) for v in node]
    return node


def acknowledgement(round_name: str, lean: bool = False) -> dict[str, Any]:
    """The operator's first write of a new rollout as it is (planner._start, acknowledge_only: every
    status field, the empty ones too), or with `lean` only its phase, message, conditions and
    bookkeeping; the round's name in each message, so that every round changes every rollout."""
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    conditions = [
        {
            "type": kind,
            "status": status,
            "reason": reason,
            "message": f"{round_name}: {kind}",
            "lastTransitionTime": now,
            "observedGeneration": 1,
        }
        for kind, status, reason in (
            ("SpecValid", "True", "Valid"),
            ("TargetsReady", "True", "DeploymentsFound"),
            ("TrafficRouted", "True", "RouteFound"),
            ("Completed", "False", "NotStarted"),
        )
    ]
    status: dict[str, Any] = {
        "phase": "Pending",
        "message": f"accepted: the spec is valid; step 1 starts next ({round_name})",
        "sequence": 1,
        "observedGeneration": 1,
        "conditions": conditions,
    }
    if not lean:
        status |= {
            "currentStep": 0,
            "step": "1/3",
            "weights": {"legacy": 100, "candidate": 0},
            "gateFailures": {},
            "lastFailureAt": {},
            "inconclusiveRuns": {},
            "consecutiveErrors": 0,
            "lastAnalysis": [],
            "abort": False,
            "promote": False,
            "retry": False,
            "recordBaseline": False,
            "approvals": [],
            "history": [],
            "evaluations": [],
        }
    return {"status": status}


def timed(state: ClusterState, label: str, n: int, call: Callable[[int], object]) -> str:
    apiserver = next(p.pid for p in state.processes if p.name == "kube-apiserver")
    cpu0, t0 = cpu_seconds(apiserver), time.monotonic()
    with ThreadPoolExecutor(CONCURRENCY) as pool:
        list(pool.map(call, range(n)))
    cpu1, t1 = cpu_seconds(apiserver), time.monotonic()
    return (
        f"  {label}: {n} in {t1 - t0:.1f}s = {n / (t1 - t0):.0f}/s; "
        f"the apiserver {1000 * (cpu1 - cpu0) / n:.2f} ms of CPU each"
    )


def run(n: int = ROLLOUTS) -> list[str]:
    lines = [f"== status write cost: {n} AgentRollouts, {CONCURRENCY} writes in flight; {machine()}"]
    print(lines[0], flush=True)
    with own_cluster() as state:
        install_crd(state)
        api_client = bulk_client(state.kubeconfig, CONCURRENCY)
        client.CoreV1Api(api_client).create_namespace(cast(Any, {"metadata": {"name": NAMESPACE}}))
        custom = client.CustomObjectsApi(api_client)
        rounds = 0

        def fresh_rollouts() -> list[Target]:
            """n new rollouts with no status yet, as an operator's start-up finds them."""
            nonlocal rounds
            rounds += 1
            made = [
                Target(NAMESPACE, f"agent-{rounds}-{i:05d}", f"legacy-{i}", f"candidate-{i}", "steady")
                for i in range(n)
            ]
            bodies = [rollout_body(t, "http://127.0.0.1:9090", 30) for t in made]

            def create(i: int) -> object:
                return custom.create_namespaced_custom_object(
                    api.GROUP, api.VERSION, NAMESPACE, api.PLURAL, bodies[i]
                )

            lines.append(timed(state, "creates", n, create))
            return made

        def writes(label: str, lean: bool = False) -> str:
            targets, body = fresh_rollouts(), acknowledgement(label, lean)

            def patch(i: int) -> object:
                return custom.patch_namespaced_custom_object_status(
                    api.GROUP, api.VERSION, NAMESPACE, api.PLURAL, targets[i].name, body
                )

            line = timed(state, f"first status writes, {label}", n, patch)

            def get(i: int) -> object:
                return custom.get_namespaced_custom_object(
                    api.GROUP, api.VERSION, NAMESPACE, api.PLURAL, targets[i].name
                )

            return f"{line}\n{timed(state, 'then GETs', n, get)}"

        def crd(schema: dict[str, Any]) -> None:
            path = state.run_dir / "crd-under-test.yaml"
            path.write_text(yaml.safe_dump(schema, sort_keys=False))
            install_crd(state, path)
            time.sleep(5)  # the apiserver rebuilds the CRD's handler (its validators) on a change

        shipped = yaml.safe_load(CRD_FILE.read_text())
        for schema, label, lean in (
            (None, "the CRD as shipped", False),
            (None, "a lean acknowledgement (phase, message, conditions)", True),
            (without_cel(shipped), "the CRD without its CEL rules", False),
            (shipped, "the CRD as shipped, again", False),
            (None, "a lean acknowledgement, again", True),
        ):
            if schema is not None:
                crd(schema)
            lines.append(writes(label, lean))
            print("\n".join(lines[-2:]), flush=True)
    return lines


def main(argv: Iterable[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rollouts", type=int, default=ROLLOUTS, help="N (default %(default)s)")
    args = parser.parse_args(list(argv) if argv is not None else None)
    run(args.rollouts)


if __name__ == "__main__":
    main()
