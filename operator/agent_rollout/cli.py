"""`kubectl agentrollout ...`: the kubectl plugin. It only reads and patches.

Every verb is a plain merge patch on the status subresource, so Argo CD actions, this plugin and a
human with `kubectl patch --subresource=status` all do exactly the same thing:

    abort    {"status": {"abort": true}}     roll back to legacy now
    promote  {"status": {"promote": true}}   end the current pause (human approval)
    retry    {"status": {"retry": true}}     restart a rolled-back rollout from step 1, same candidate
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from agent_rollout import api

VERBS = {
    "abort": {"abort": True},
    "promote": {"promote": True},
    "retry": {"retry": True},
}


def render(obj: dict[str, Any]) -> str:
    """A human view of one AgentRollout: where it is, why, and on what evidence."""
    meta, spec, status = obj.get("metadata", {}), obj.get("spec", {}), obj.get("status", {}) or {}
    steps = spec.get("steps", [])
    weights = status.get("weights", {"legacy": 100, "candidate": 0})
    step = status.get("currentStep", 0)
    lines = [
        f"{meta.get('namespace')}/{meta.get('name')}  phase={status.get('phase', 'Pending')}  "
        f"step={min(step + 1, len(steps))}/{len(steps)}  "
        f"weights: legacy={weights.get('legacy')} candidate={weights.get('candidate')}",
    ]
    if status.get("message"):
        lines.append(f"  {status['message']}")
    gates = status.get("lastAnalysis", [])
    if gates:
        lines.append(f"  {'gate':<16} {'verdict':<13} {'value':>12} {'bound':<28} samples")
        for g in gates:
            value = "-" if g.get("value") is None else f"{g['value']:.4g}"
            samples = "-" if g.get("samples") is None else f"{g['samples']}/{g.get('minSamples', 0)}"
            dry = " (dry run)" if g.get("dryRun") else ""
            lines.append(
                f"  {g['name']:<16} {g['verdict'] + dry:<13} {value:>12} {g.get('bound', ''):<28} {samples}"
            )
    for decision in status.get("history", [])[-3:]:
        lines.append(f"  {decision['time']}  {decision['reason']}: {decision['message']}")
    return "\n".join(lines)


def _custom_api(kubeconfig: str | None) -> Any:
    import kubernetes

    kubernetes.config.load_kube_config(config_file=kubeconfig)
    return kubernetes.client.CustomObjectsApi()


def _get(custom: Any, namespace: str, name: str) -> dict[str, Any]:
    obj: dict[str, Any] = custom.get_namespaced_custom_object(
        api.GROUP, api.VERSION, namespace, api.PLURAL, name
    )
    return obj


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="kubectl agentrollout", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("verb", choices=["status", *VERBS])
    parser.add_argument("name")
    parser.add_argument("-n", "--namespace", default="default")
    parser.add_argument("--kubeconfig", default=None)
    parser.add_argument("-w", "--watch", action="store_true", help="with status: refresh until finished")
    args = parser.parse_args(argv)
    custom = _custom_api(args.kubeconfig)

    if args.verb in VERBS:
        custom.patch_namespaced_custom_object_status(
            api.GROUP, api.VERSION, args.namespace, api.PLURAL, args.name, {"status": VERBS[args.verb]}
        )
        print(f"agentrollout {args.namespace}/{args.name}: {args.verb} requested")
        return 0

    while True:
        obj = _get(custom, args.namespace, args.name)
        print(render(obj), flush=True)
        phase = (obj.get("status") or {}).get("phase")
        if not args.watch or phase in {
            p.value for p in (api.Phase.PROMOTED, api.Phase.ROLLED_BACK, api.Phase.FAILED)
        }:
            return 0
        time.sleep(2)
        print()


if __name__ == "__main__":
    sys.exit(main())
