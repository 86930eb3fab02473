"""Entry point of the operator process: `agent-rollout-operator`."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import queue
import sys
from logging.handlers import QueueHandler, QueueListener
from pathlib import Path
from typing import TextIO

import kopf

# The benchmarks read the operator's log by this format (e2e/bench/operator_scale.py: wake_times).
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def log_off_the_loop(
    level: int, stream: TextIO | None = None, logger: logging.Logger | None = None
) -> QueueListener:
    """`logger`'s (the root's) only handler puts records on a queue; the listener returned (started)
    formats them (LOG_FORMAT) and writes them to `stream` (stderr) in a thread of its own. Written by
    the event loop's thread, one log line held the loop for a second at 10,000 rollouts (looplag's
    stall log, run Z11: a write to a busy disk), every breach waiting on the loop with it. Stopping
    the listener writes what is queued; a killed process loses at most the lines of its last moments.
    The queue's side passes the message as it is (its own formatter: basicConfig's would format each
    line twice)."""
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    records: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    queued = QueueHandler(records)
    queued.setFormatter(logging.Formatter("%(message)s"))
    target = logger or logging.getLogger()
    for old in target.handlers[:]:
        target.removeHandler(old)
    target.addHandler(queued)
    target.setLevel(level)
    listener = QueueListener(records, handler)
    listener.start()
    return listener


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run the agent-rollout operator.")
    parser.add_argument("--namespace", action="append", help="watch only these namespaces (default: all)")
    parser.add_argument("--verbose", action="store_true")
    parser.add_argument("--liveness", default=None, help="e.g. http://0.0.0.0:8080/healthz")
    parser.add_argument(
        "--metrics-port",
        type=int,
        default=int(os.environ.get("AGENT_ROLLOUT_METRICS_PORT", "0")),
        help="serve Prometheus metrics on this port at /metrics (0: off; env AGENT_ROLLOUT_METRICS_PORT)",
    )
    parser.add_argument(
        "--alerts-port",
        type=int,
        default=int(os.environ.get("AGENT_ROLLOUT_ALERTS_PORT", "0")),
        help="serve the Alertmanager webhook receiver on this port at /alerts (0: off; needs a token file)",
    )
    parser.add_argument(
        "--alerts-token-file",
        default=os.environ.get("AGENT_ROLLOUT_ALERTS_TOKEN_FILE"),
        help="file holding the bearer token Alertmanager must send (e.g. a mounted Secret)",
    )
    parser.add_argument(
        "--notifications-config",
        default=os.environ.get("AGENT_ROLLOUT_NOTIFICATIONS_CONFIG"),
        help="YAML file of operator-wide notification sinks (README: Notifications)",
    )
    parser.add_argument(
        "--listen", default=os.environ.get("AGENT_ROLLOUT_LISTEN", "0.0.0.0"), help="address of both servers"
    )
    parser.add_argument(
        "--leader-election-namespace",
        default=os.environ.get("AGENT_ROLLOUT_LEADER_ELECTION_NAMESPACE"),
        help="elect one writing replica with a Lease in this namespace (the chart's: its own); unset: "
        "no election, this process always writes (env AGENT_ROLLOUT_LEADER_ELECTION_NAMESPACE)",
    )
    parser.add_argument("--leader-election-lease", default="agent-rollout", help="the Lease's name")
    parser.add_argument(
        "--identity",
        default=os.environ.get("POD_NAME"),
        help="this replica's name in the Lease and in its User-Agent (default: env POD_NAME, else host-pid)",
    )
    args = parser.parse_args(argv)
    from agent_rollout import allocator

    allocator.bound_arenas()  # before any thread starts (allocator.py)
    if args.notifications_config:
        from agent_rollout.notifier import load_config

        load_config(Path(args.notifications_config))  # a config that does not parse stops the start, loudly
    if args.alerts_port and not args.alerts_token_file:
        parser.error("--alerts-port needs --alerts-token-file: the receiver never runs unauthenticated")
    listener = log_off_the_loop(logging.DEBUG if args.verbose else logging.INFO)
    if not args.verbose:
        # kopf logs every handled watch event at INFO; at 10k rollouts that drowns what matters.
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)

    from agent_rollout import profiling

    profiling.install()
    import agent_rollout.handlers  # noqa: F401  (registers the handlers)

    try:
        _run(args)
    finally:
        listener.stop()
    return 0


def _run(args: argparse.Namespace) -> None:
    asyncio.run(
        kopf.operator(
            clusterwide=not args.namespace,
            namespaces=args.namespace or [],
            liveness_endpoint=args.liveness,
            standalone=True,
            memo=kopf.Memo(
                namespaces=args.namespace or [],
                metrics_port=args.metrics_port,
                alerts_port=args.alerts_port,
                alerts_token_file=args.alerts_token_file,
                listen=args.listen,
                notifications_config=args.notifications_config,
                lease_namespace=args.leader_election_namespace,
                lease_name=args.leader_election_lease,
                identity=args.identity,
            ),
        )
    )


if __name__ == "__main__":
    sys.exit(main())
