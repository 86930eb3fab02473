"""The fast check: every live rollout's hard bounds, about once a second, whatever its interval.

Steps advance on the analysis interval, but a breach must not wait for it: at a 30s interval a
breach used to take 0..30 s to reach the route. One process-wide loop reads the building blocks every
rollout already shares (analysis.batch: one query per block per TTL, not per rollout), computes each
watched rollout's gate values in Python, and wakes the rollouts whose `min`/`max` is breached. The
woken rollout's reconcile evaluates its gates on the same blocks and decides with every rule of the
planner (failureLimit, windows, dry runs), so the sentinel never decides anything itself.

Which gates are watched is the planner's rule (planner.fast_gates); what they are measured over is
too (planner.analysis_windows: the analysis and two status fields). The cost per pass is one shared
read per block and a few microseconds of arithmetic per watched gate; the loop yields to the event
loop between slices, so it never blocks it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from agent_rollout import api
from agent_rollout.analysis.gates import breaches_hard_bound
from agent_rollout.analysis.prometheus import MetricsSource, PrometheusError
from agent_rollout.analysis.templates import (
    Block,
    BlockValues,
    TemplateError,
    TemplateRead,
    template_read,
    version_values,
)
from agent_rollout.planner import analysis_windows, fast_gates

log = logging.getLogger(__name__)

PERIOD = 1.0  # seconds between passes
SLICE = 500  # rollouts checked between two yields to the event loop

Key = tuple[str, str]


@dataclass(frozen=True, slots=True)
class Watched:
    """What the sentinel needs of one rollout, refreshed after each of its reconciles: not the parsed
    spec (about 12 KiB a rollout, most of the operator's memory per rollout once it was measured),
    only the analysis (one object shared by every rollout with the same one) and two status fields."""

    key: Key
    analysis: api.Analysis
    candidate: str  # the candidate's value of the version label
    step_started_at: str | None  # what the gates' windows depend on (planner.gate_windows)
    last_failure_at: dict[str, str]
    gates: tuple[str, ...]
    source: MetricsSource


# Of the time between two sweeps, at most this share goes to sweeping: with 10,000 rollouts a sweep
# parses vectors of 20,000 series each, and the fast check must not starve the reconciles it wakes.
MAX_BUSY_SHARE = 0.25


def next_pause(period: float, took: float) -> float:
    """Seconds to wait before the next sweep: the period, stretched when sweeps get expensive."""
    return max(period - took, took * (1 - MAX_BUSY_SHARE) / MAX_BUSY_SHARE, 0.0)


class SharedAnalyses:
    """One Analysis object for every watched rollout whose analysis is equal (rollouts made from one
    template usually are), counted so that the last rollout to leave takes it along."""

    def __init__(self) -> None:
        self._shared: dict[str, tuple[api.Analysis, int]] = {}
        # id of a shared object -> its key: a release (one per reconcile of a watched rollout) need not
        # serialise the analysis again; the object is alive while it is in _shared, so its id is stable.
        self._keys: dict[int, str] = {}

    def __len__(self) -> int:
        return len(self._shared)

    def share(self, analysis: api.Analysis) -> api.Analysis:
        key = analysis.model_dump_json()
        shared, users = self._shared.get(key, (analysis, 0))
        self._shared[key] = (shared, users + 1)
        self._keys[id(shared)] = key
        return shared

    def release(self, analysis: api.Analysis) -> None:
        """One user less of `analysis` (the object `share` returned: no serialising; an equal one will do)."""
        key = self._keys.get(id(analysis)) or analysis.model_dump_json()
        if key not in self._shared:
            return
        shared, users = self._shared[key]
        if users <= 1:
            del self._shared[key], self._keys[id(shared)]
        else:
            self._shared[key] = (shared, users - 1)


class Sentinel:
    def __init__(
        self,
        clock: Callable[[], datetime],
        period: float = PERIOD,
        wake: Callable[[Key], None] = lambda key: None,
    ) -> None:
        self._watched: dict[Key, Watched] = {}
        self._analyses = SharedAnalyses()
        self._clock = clock
        self.wake = wake  # reconcile that rollout now (the scheduler drops a wake already queued)
        self.period = period
        self.breaches = 0  # rollouts woken by a breach since start: for the operator's metrics and tests

    def __len__(self) -> int:
        return len(self._watched)

    def update(
        self,
        key: Key,
        spec: api.AgentRolloutSpec | None,
        status: api.AgentRolloutStatus,
        source: MetricsSource | None,
    ) -> None:
        """After a reconcile: watch the rollout's fast gates, or stop watching it."""
        gates = fast_gates(spec, status) if spec is not None and source is not None else ()
        if not gates or spec is None or spec.analysis is None or source is None:
            self.forget(key)
            return
        before = self._watched.get(key)
        self._watched[key] = Watched(
            key,
            self._analyses.share(spec.analysis),
            version_values(spec)[1],
            status.step_started_at,
            dict(status.last_failure_at),
            gates,
            source,
        )
        if before is not None:
            self._analyses.release(before.analysis)

    def forget(self, key: Key) -> None:
        before = self._watched.pop(key, None)
        if before is not None:
            self._analyses.release(before.analysis)

    async def run(self) -> None:
        while True:
            started = time.monotonic()
            try:
                await self.sweep()
            except Exception:  # the sentinel only speeds things up: never let it die
                log.exception("fast bound check failed; the analysis interval still applies")
            await asyncio.sleep(next_pause(self.period, time.monotonic() - started))

    async def sweep(self) -> int:
        """One pass; returns how many rollouts it woke."""
        now = self._clock()
        plans: list[tuple[Watched, list[tuple[api.Gate, TemplateRead]]]] = []
        wanted: dict[int, tuple[MetricsSource, dict[Block, None]]] = {}  # per source, ordered blocks
        for watched in list(self._watched.values()):
            reads = self._reads(watched, now)
            if reads:
                plans.append((watched, reads))
                blocks = wanted.setdefault(id(watched.source), (watched.source, {}))[1]
                for _, read in reads:
                    blocks.update(dict.fromkeys(read.blocks))
        vectors = await self._read_blocks(wanted)
        woken = 0
        for i, (watched, reads) in enumerate(plans):
            if i and i % SLICE == 0:
                await asyncio.sleep(0)
            if self._breached(watched, reads, vectors.get(id(watched.source), {})):
                self.wake(watched.key)
                woken += 1
        self.breaches += woken
        return woken

    def _reads(self, watched: Watched, now: datetime) -> list[tuple[api.Gate, TemplateRead]]:
        analysis = watched.analysis
        windows = analysis_windows(analysis, watched.step_started_at, watched.last_failure_at, now)
        reads = []
        for gate in analysis.gates:
            seconds = windows.get(gate.name)
            if gate.name not in watched.gates or gate.template is None or seconds is None:
                continue
            try:
                window = f"{seconds}s"
                reads.append(
                    (
                        gate,
                        template_read(gate.template, analysis.metrics, window=window, quantile=gate.quantile),
                    )
                )
            except TemplateError:
                continue
        return reads

    async def _read_blocks(
        self, wanted: dict[int, tuple[MetricsSource, dict[Block, None]]]
    ) -> dict[int, dict[Block, BlockValues]]:
        """Every block once per source, concurrently, through the source's shared reader. A block
        Prometheus cannot answer is left out: the evaluation reports that, not the sentinel."""
        calls = [
            (source_id, source, block) for source_id, (source, blocks) in wanted.items() for block in blocks
        ]
        answers = await asyncio.gather(
            *(source.block(block) for _, source, block in calls), return_exceptions=True
        )
        vectors: dict[int, dict[Block, BlockValues]] = {}
        for (source_id, _, block), answer in zip(calls, answers, strict=True):
            if isinstance(answer, PrometheusError):
                continue
            if isinstance(answer, BaseException):
                raise answer
            vectors.setdefault(source_id, {})[block] = answer
        return vectors

    def _breached(
        self, watched: Watched, reads: list[tuple[api.Gate, TemplateRead]], vectors: dict[Block, BlockValues]
    ) -> bool:
        for gate, read in reads:
            if any(block not in vectors for block in read.blocks):
                continue
            value, samples = read.measure(vectors, watched.key[0], watched.candidate)
            if breaches_hard_bound(gate, watched.analysis, value, samples):
                log.info(
                    "%s/%s: gate %s breached between evaluations: waking the rollout",
                    *watched.key,
                    gate.name,
                )
                return True
        return False
