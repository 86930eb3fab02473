"""Entry point of the operator process: `agent-rollout-operator`."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

import kopf


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run the agent-rollout operator.")
    parser.add_argument("--namespace", action="append", help="watch only these namespaces (default: all)")
    parser.add_argument("--verbose", action="store_true")
    parser.add_argument("--liveness", default=None, help="e.g. http://0.0.0.0:8080/healthz")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not args.verbose:
        # kopf logs every handled watch event at INFO; at 10k rollouts that drowns what matters.
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)

    from agent_rollout import profiling

    profiling.install()
    import agent_rollout.handlers  # noqa: F401  (registers the handlers)

    asyncio.run(
        kopf.operator(
            clusterwide=not args.namespace,
            namespaces=args.namespace or [],
            liveness_endpoint=args.liveness,
            standalone=True,
            memo=kopf.Memo(namespaces=args.namespace or []),
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
