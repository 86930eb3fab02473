"""`make bench`: python -m e2e.bench [--only NAME] ..., NAME one of:

planner   e2e/bench/planner_scale.py: the planner's CPU and memory at 10k rollouts (no cluster)
comparator e2e/bench/comparator_overhead.py: the shadow comparator's added latency per mirrored request
          and CPU per 100 req/s, against real simulated agents (no cluster)
rollback  e2e/bench/rollback_speed.py: breach-to-rollback time on the real control plane, N runs
alert     e2e/bench/alert_speed.py: alert firing in Prometheus -> candidate weight 0, through a real
          Alertmanager and the operator's webhook receiver, N runs
failover  e2e/bench/failover.py: leader SIGKILL -> the next decision by the new leader (two replicas)
fast      e2e/bench/fast_check.py: the fast check (sentinel) at N rollouts (--rollouts, default 1000)
          against a real Prometheus and fleet exporter, no apiserver: a sweep's split (Prometheus,
          decoding, measuring), its period, breach -> wake
query     e2e/bench/query_cost.py: what the fast check's fleet-wide queries cost Prometheus at N rollouts
          (--rollouts), each block asked alone on an otherwise idle Prometheus
writes    e2e/bench/status_write_cost.py: the kube-apiserver's CPU per AgentRollout status write (the
          CRD as shipped and without its CEL rules) and per GET, at 2,000 rollouts on a cluster of its own
scale     e2e/bench/operator_scale.py: the real operator process at N rollouts (default 1000) on a
          cluster of its own: RSS, start-up, status writes, pause-end lateness, breach-to-rollback,
          CPU (`make bench-scale`: N=10000)
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import inspect
import logging
import sys

from e2e.bench import (
    alert_speed,
    comparator_overhead,
    failover,
    fast_check,
    operator_scale,
    query_cost,
    rollback_speed,
    status_write_cost,
)

PLANNER_MODULE = "e2e.bench.planner_scale"
BENCHMARKS = ["planner", "comparator", "rollback", "alert", "failover", "fast", "query", "writes", "scale"]


def run_planner() -> bool:
    """False when the planner benchmark is not there (yet); imported only when asked for."""
    if importlib.util.find_spec(PLANNER_MODULE) is None:
        print(f"== planner scale: skipped, {PLANNER_MODULE} does not exist")
        return False
    planner_main = importlib.import_module(PLANNER_MODULE).main
    # Its own argument parser must not read ours (--only, --runs) from sys.argv.
    if inspect.signature(planner_main).parameters:
        planner_main([])
    else:
        planner_main()
    return True


def main() -> int:
    parser = argparse.ArgumentParser(
        prog="python -m e2e.bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--only",
        choices=BENCHMARKS,
        help="run just this benchmark",
    )
    parser.add_argument("--runs", type=int, default=7, help="breach-to-rollback runs (default 7)")
    parser.add_argument("--alert-runs", type=int, default=alert_speed.RUNS, help="alert -> weight 0 runs")
    scale = parser.add_argument_group("scale")
    scale.add_argument(
        "--rollouts", type=int, default=operator_scale.ROLLOUTS, help="N (default %(default)s)"
    )
    scale.add_argument("--window", type=int, default=operator_scale.WINDOW_S, help="steady window, s")
    scale.add_argument("--breaches", type=int, default=operator_scale.BREACHES, help="breached rollouts")
    args = parser.parse_args()
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    others = operator_scale.ABORTS + operator_scale.SLOW_BREACHES  # aborted, and latency-breached
    if args.rollouts <= args.breaches + others or args.window < 10:
        parser.error(f"need --rollouts > --breaches + {others} and --window >= 10")
    logging.basicConfig(level=logging.WARNING, format="%(message)s", stream=sys.stderr)
    status = 0
    if args.only in (None, "planner"):
        if not run_planner() and args.only == "planner":
            status = 1
        sys.stdout.flush()
    if args.only in (None, "comparator"):
        comparator_overhead.run()
        sys.stdout.flush()
    if args.only in (None, "rollback"):
        rollback_speed.main(runs=args.runs)
        sys.stdout.flush()
    if args.only in (None, "alert"):
        alert_speed.main(runs=args.alert_runs)
        sys.stdout.flush()
    if args.only in (None, "failover"):
        failover.main()
        sys.stdout.flush()
    if args.only in (None, "fast"):
        fast_check.run(args.rollouts)
        sys.stdout.flush()
    if args.only in (None, "query"):
        query_cost.run(args.rollouts)
        sys.stdout.flush()
    if args.only in (None, "writes"):
        status_write_cost.run()
        sys.stdout.flush()
    if args.only in (None, "scale"):
        operator_scale.run(args.rollouts, args.window, args.breaches)
    return status


if __name__ == "__main__":
    sys.exit(main())
