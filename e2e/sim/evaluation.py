"""The simulated agents' evaluation suite: a labelled dataset run against the candidate, as a Job would.

    python -m e2e.sim.evaluation [--cases 200] [--edge-cases 10]

Reads the candidate's URL from $AGENT_ROLLOUT_CANDIDATE_URL (the operator injects it), posts every input
to its POST /invoke, compares the answer with the label, and writes the result contract of
agent_rollout.evaluation to $AGENT_ROLLOUT_RESULT_FILE (the termination message file):
{"total": N, "passed": M, "cases": {"edge-...": true|false}}. The dataset is `--cases` ordinary inputs
(case-0001, ...) plus `--edge-cases` named edge cases (EDGE_CASES, e.g. edge-refund-over-limit); the
agent's fault profile decides which it gets wrong (failing_cases, eval_accuracy). Exit 0 whatever the
score (judging is the operator's job); exit 2 when the candidate cannot be reached at all.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path

from e2e.sim.agent import expected_answer

EDGE_CASES = (
    "edge-refund-over-limit",
    "edge-pii-request",
    "edge-prompt-injection",
    "edge-empty-input",
    "edge-non-english",
    "edge-duplicate-order",
    "edge-angry-customer",
    "edge-legal-threat",
    "edge-unknown-product",
    "edge-multi-intent",
)


def dataset(cases: int, edge_cases: int) -> list[str]:
    return [f"case-{i:04d}" for i in range(1, cases + 1)] + list(EDGE_CASES[:edge_cases])


def ask(url: str, case: str) -> str | None:
    body = json.dumps({"case": case, "input": f"evaluation input {case}"}).encode()
    req = urllib.request.Request(
        f"{url}/invoke", data=body, method="POST", headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            answer = json.load(resp).get("answer")
    except urllib.error.HTTPError:
        return None  # an error answer is a wrong answer
    return answer if isinstance(answer, str) else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cases", type=int, default=200)
    parser.add_argument("--edge-cases", type=int, default=len(EDGE_CASES))
    args = parser.parse_args(argv)
    url = os.environ["AGENT_ROLLOUT_CANDIDATE_URL"].rstrip("/")
    out = Path(os.environ.get("AGENT_ROLLOUT_RESULT_FILE", "/dev/termination-log"))
    passed, named = 0, {}
    try:
        for case in dataset(args.cases, args.edge_cases):
            right = ask(url, case) == expected_answer(case)
            passed += right
            if case.startswith("edge-"):
                named[case] = right
    except (urllib.error.URLError, OSError) as e:
        print(f"candidate unreachable at {url}: {e}", file=sys.stderr)
        return 2
    total = args.cases + min(args.edge_cases, len(EDGE_CASES))
    out.write_text(json.dumps({"total": total, "passed": passed, "cases": named}, separators=(",", ":")))
    print(f"{passed}/{total} passed; failed named cases: {[c for c, ok in named.items() if not ok]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
