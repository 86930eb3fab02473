"""The garbage collector's pauses while fleet answers are decoded: `python -m e2e.bench.gc_decode`.

A component benchmark, not a test: it prints figures and asserts nothing. In this process, no
Prometheus: ANSWERS answers of SERIES series each (a fleet's block at 10,000 rollouts, shaped as
Prometheus sends it) decoded and parsed as the operator's gateway does (json, then parse_vector),
beside a kept heap of KEPT objects frozen out of the collector's walks (heap.py), with the
collector as CPython has it and then paused around each decode (prometheus._decoding_alone). Printed:
wall time per answer and the collector's pauses by generation (gc.callbacks).
"""

from __future__ import annotations

import gc
import json
import time
from contextlib import AbstractContextManager, nullcontext
from typing import Any

from agent_rollout import heap
from agent_rollout.analysis import prometheus
from agent_rollout.analysis.prometheus import parse_vector

ANSWERS = 40
SERIES = 20_000
KEPT = 300_000


def _answer() -> bytes:
    series = [
        {
            "metric": {"namespace": f"scale-{i // 200:03d}", "version": f"agent-{i // 2:05d}-{i % 2}"},
            "value": [1764400000.123, str(i * 0.37)],
        }
        for i in range(SERIES)
    ]
    return json.dumps({"status": "success", "data": {"resultType": "vector", "result": series}}).encode()


def measure(body: bytes, paused: bool) -> str:
    callback = heap.Pauses()  # the operator's own record of the collector's pauses
    pauses = callback.seconds
    kept: list[Any] = []
    gc.callbacks.append(callback)
    t0 = time.perf_counter()
    try:
        for _ in range(ANSWERS):
            guard: AbstractContextManager[None] = prometheus._decoding_alone() if paused else nullcontext()
            with guard:
                data = json.loads(body)
                values = parse_vector(data["data"]["result"], ("namespace", "version"))
                del data
            kept = [values]  # the reader keeps the last answer, as the operator's cache does
    finally:
        gc.callbacks.remove(callback)
    wall = time.perf_counter() - t0
    counts = [sum(c) for c in callback.counts]
    by_generation = ", ".join(f"{g}: {counts[g]} in {pauses[g]:.3f} s" for g in range(3))
    return (
        f"{'paused' if paused else 'on    '}: {1000 * wall / ANSWERS:.0f} ms an answer; "
        f"the collector's pauses {sum(pauses):.3f} s over {ANSWERS} answers "
        f"(generation {by_generation}); kept {len(kept)}"
    )


def main() -> None:
    body = _answer()
    heap = [{"a": [i, str(i)], "b": {"c": i}} for i in range(KEPT)]
    gc.collect()
    gc.freeze()
    size = len(body) / 1e6
    print(f"== gc decoding {ANSWERS} answers of {SERIES} series ({size:.1f} MB each; {len(heap)} kept)")
    for paused in (False, True, False, True):
        print("  " + measure(body, paused))
    gc.unfreeze()


if __name__ == "__main__":
    main()
