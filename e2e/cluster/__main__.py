"""python -m e2e.cluster up|down|status|env

up     start etcd, the control plane, kwok and Prometheus (or keep a healthy running one); prints
       `export KUBECONFIG=...` and `export PROMETHEUS_URL=...`, so `eval "$(python -m e2e.cluster up)"` works
down   stop every process of it (by pid, from the state file) and delete its data; logs stay
status say whether it runs and is healthy (exit code 1 when not)
env    print the exports again
"""

from __future__ import annotations

import argparse
import logging
import sys

from e2e.cluster.lifecycle import ClusterStartError, is_healthy, load_state, start_cluster, stop_cluster
from e2e.cluster.paths import SHARED_CLUSTER_NAME
from e2e.cluster.state import ClusterState


def _exports(state: ClusterState) -> str:
    return f"export KUBECONFIG={state.kubeconfig}\nexport PROMETHEUS_URL={state.prometheus_url}"


def up() -> int:
    state = load_state(SHARED_CLUSTER_NAME)
    if state is not None and is_healthy(state):
        print(f"cluster already running (state: {state.state_file})", file=sys.stderr)
    else:
        if state is not None:
            print("found a stale cluster state; cleaning it up first", file=sys.stderr)
            stop_cluster(state)
        try:
            state = start_cluster(SHARED_CLUSTER_NAME, die_with_parent=False)
        except ClusterStartError as e:
            print(e, file=sys.stderr)
            return 1
        print(f"cluster up (state: {state.state_file}, logs: {state.run_dir / 'logs'})", file=sys.stderr)
    print(_exports(state))
    print(f"# Prometheus: {state.prometheus_url}")
    return 0


def down() -> int:
    state = load_state(SHARED_CLUSTER_NAME)
    if state is None:
        print("no cluster running", file=sys.stderr)
        return 0
    stop_cluster(state, keep_logs=True)
    print(f"cluster stopped (logs kept in {state.run_dir / 'logs'})", file=sys.stderr)
    return 0


def status() -> int:
    state = load_state(SHARED_CLUSTER_NAME)
    if state is None:
        print("no cluster")
        return 1
    healthy = is_healthy(state)
    word = "healthy" if healthy else "NOT healthy"
    print(f"cluster {word}: apiserver {state.apiserver_url}, Prometheus {state.prometheus_url}")
    return 0 if healthy else 1


def env() -> int:
    state = load_state(SHARED_CLUSTER_NAME)
    if state is None:
        print("no cluster; run `python -m e2e.cluster up`", file=sys.stderr)
        return 1
    print(_exports(state))
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(
        prog="python -m e2e.cluster",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("command", choices=["up", "down", "status", "env"])
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    commands = {"up": up, "down": down, "status": status, "env": env}
    return commands[args.command]()


if __name__ == "__main__":
    sys.exit(main())
