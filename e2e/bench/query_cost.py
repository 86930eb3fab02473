"""What the fast check's fleet-wide queries cost Prometheus at N rollouts:
`python -m e2e.bench.query_cost [--rollouts N] [--repeat K]`.

A component benchmark, not a test: it prints figures and asserts nothing. A Prometheus of its own
(Debian's `prometheus` on PATH, or the binary E2E_PROMETHEUS names; `make bench` builds 3.16 with
e2e/cluster/build-prometheus.sh) and the fleet exporter serving both versions of N rollouts shaped
like operator_scale's, scraped every 5 s; nothing else runs. Once Prometheus holds a full window,
each building block the operator reads for the benchmark's two gates (errorRate and the p95
latencyQuantile over 1m, rendered by the operator's own templates.template_read) is asked once to
warm up, then K times one after the other. Printed per block: Prometheus' own execution time
(`stats=all`: execTotalTime), min / median / max, the whole HTTP round trip's median, and the size
of the answer. Compare two Prometheus releases by running it twice, with and without E2E_PROMETHEUS.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import urllib.parse
import urllib.request
from datetime import UTC, datetime

from agent_rollout import api
from agent_rollout.analysis.prometheus import parse_vector
from agent_rollout.analysis.templates import (
    BUCKET_BOUND_LABEL,
    bucket_bounds_block,
    bucket_under,
    quantile_bucket_read,
    template_read,
)
from e2e.bench.fast_check import fleet_on_prometheus
from e2e.bench.operator_scale import GATE_WINDOW, LATENCY_MAX_S, SCRAPE_S, machine, plan_targets
from e2e.cluster import prometheus

ROLLOUTS = 10_000
REPEAT = 5


def blocks(url: str) -> list[str]:
    """The fleet-wide building blocks of the benchmark's gates, as the operator renders them: the
    fast check's too (the bucket bounds, and the one bucket it reads for the latency max,
    sentinel._bucket_read, spelled as this Prometheus stores `le`)."""
    names = api.MetricNames()
    reads = [
        template_read(api.Template.ERROR_RATE, names, window=GATE_WINDOW),
        template_read(api.Template.LATENCY_QUANTILE, names, window=GATE_WINDOW, quantile=0.95),
    ]
    bounds = bucket_bounds_block(names)
    found = parse_vector(prometheus.query(url, bounds.promql), (BUCKET_BOUND_LABEL, BUCKET_BOUND_LABEL))
    spellings = bucket_under(found, LATENCY_MAX_S)
    if spellings is not None:
        reads.append(quantile_bucket_read(names, window=GATE_WINDOW, spellings=spellings, quantile=0.95))
    return [bounds.promql, *dict.fromkeys(block.promql for read in reads for block in read.blocks)]


def ask(url: str, promql: str) -> tuple[float, float, int, int]:
    """(round trip s, Prometheus' execTotalTime s, answer bytes, series) of one instant query."""
    params = urllib.parse.urlencode({"query": promql, "stats": "all"})
    started = time.monotonic()
    with urllib.request.urlopen(f"{url}/api/v1/query?{params}", timeout=120) as resp:
        body = resp.read()
    took = time.monotonic() - started
    data = json.loads(body)["data"]
    return took, float(data["stats"]["timings"]["execTotalTime"]), len(body), len(data["result"])


def run(n: int = ROLLOUTS, repeat: int = REPEAT) -> None:
    with fleet_on_prometheus(plan_targets(n, 0, 0)) as (url, _):
        print(
            f"== query cost: N={n} rollouts ({2 * n} versions), scrape {SCRAPE_S}s, window {GATE_WINDOW}; "
            f"Prometheus {prometheus.version(url)}; {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}\n"
            f"   machine: {machine()}",
            flush=True,
        )
        for promql in blocks(url):
            ask(url, promql)
            runs = [ask(url, promql) for _ in range(repeat)]
            execs = [r[1] for r in runs]
            print(
                f"  execution min {min(execs):.3f}s median {statistics.median(execs):.3f}s "
                f"max {max(execs):.3f}s; round trip median {statistics.median(r[0] for r in runs):.3f}s; "
                f"{runs[0][3]} series, {runs[0][2] / 1e6:.1f} MB: {promql}",
                flush=True,
            )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rollouts", type=int, default=ROLLOUTS, help="N (default %(default)s)")
    parser.add_argument("--repeat", type=int, default=REPEAT, help="queries per block (default %(default)s)")
    args = parser.parse_args(argv)
    if args.rollouts < 1 or args.repeat < 1:
        parser.error("--rollouts and --repeat must be at least 1")
    run(args.rollouts, args.repeat)


if __name__ == "__main__":
    main()
