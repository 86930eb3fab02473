"""Gate evaluation over numbers: thresholds, minimum samples, no-data handling, relative comparison.

Pure: `evaluate_gate(gate, analysis, measurement)` turns what Prometheus returned into a GateResult
that carries all its evidence. Failure limits across evaluations belong to the planner.

Order of judgement, chosen so low traffic never fails a rollout (Flagger #1400):
1. too few candidate samples, or no candidate value -> Inconclusive ("waiting for samples n/N");
2. absolute bounds (min/max), then relative bounds (maxRatio, twoProportion) against legacy;
   a gate fails if any bound fails, and is Inconclusive if none fails but one cannot be judged
   (no legacy data, too few legacy samples).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from agent_rollout.analysis.stats import significantly_worse, two_proportion_test, within_ratio
from agent_rollout.api import Analysis, Comparison, Gate, GateResult, Template, Verdict

Direction = Literal["higherIsWorse", "lowerIsWorse"]
HIGHER_IS_WORSE: Direction = "higherIsWorse"
LOWER_IS_WORSE: Direction = "lowerIsWorse"

TEMPLATE_DIRECTIONS: dict[Template, Direction] = {
    Template.ERROR_RATE: HIGHER_IS_WORSE,
    Template.LATENCY_QUANTILE: HIGHER_IS_WORSE,
    Template.FLAG_RATE: HIGHER_IS_WORSE,
    Template.COST_PER_REQUEST: HIGHER_IS_WORSE,
    Template.TOKENS_PER_REQUEST: HIGHER_IS_WORSE,
    Template.EVAL_ACCURACY: LOWER_IS_WORSE,
    Template.SHADOW_AGREEMENT: LOWER_IS_WORSE,
}


@dataclass(frozen=True)
class Measurement:
    """What Prometheus returned for one gate; None means no data (empty result, NaN or Inf)."""

    value: float | None
    samples: float | None = None
    legacy_value: float | None = None  # only measured when the gate has `compare`
    legacy_samples: float | None = None
    query: str = ""  # the candidate value query, kept as evidence


@dataclass(frozen=True)
class _Check:
    ok: bool | None  # None: cannot be judged yet
    text: str


def inferred_direction(gate: Gate) -> Direction | None:
    """The direction the gate's bounds imply: a template's own, or a custom query's one-sided bound
    (only `max`: higher is worse; only `min`: lower is worse). None when nothing implies one."""
    if gate.template is not None:
        return TEMPLATE_DIRECTIONS[gate.template]
    if gate.max is not None and gate.min is None:
        return HIGHER_IS_WORSE
    if gate.min is not None and gate.max is None:
        return LOWER_IS_WORSE
    return None


def gate_direction(gate: Gate) -> Direction | None:
    """Which way the gate's signal gets worse: a template's own (a contradicting `direction` is a
    spec problem, never obeyed), else `direction` as given, else inferred from a one-sided bound.

    Never guessed from `compare` alone: a custom query with only `twoProportion` (or `maxRatio`) can
    be an error rate or an accuracy, and guessing wrong passes a worse candidate and fails a better
    one. Validation requires `direction` there; the relative bounds of such a gate stay Inconclusive.
    """
    if gate.template is None and gate.direction is not None:
        return gate.direction
    return inferred_direction(gate)


def counts_samples(gate: Gate) -> bool:
    """Built-in templates always know their sample count; custom gates only with samplesQuery."""
    return gate.template is not None or gate.samples_query is not None


def effective_min_samples(gate: Gate, analysis: Analysis) -> int:
    """gate.minSamples overrides analysis.minSamples. A custom gate without samplesQuery cannot
    count samples, so only an explicit gate.minSamples applies to it (and keeps it Inconclusive)."""
    if gate.min_samples is not None:
        return gate.min_samples
    return analysis.min_samples if counts_samples(gate) else 0


def _num(x: float) -> str:
    return f"{x:.6g}"


def _ratio_bound(gate: Gate, max_ratio: float) -> str:
    # Lower-is-worse signals (accuracy) mirror the ratio: candidate >= legacy / maxRatio.
    ratio = _num(max_ratio)
    direction = gate_direction(gate)
    if direction is None:
        return f"within {ratio} x legacy (direction unknown)"
    return f"<= {ratio} x legacy" if direction == HIGHER_IS_WORSE else f">= legacy / {ratio}"


def bound_text(gate: Gate) -> str:
    """Every bound of the gate, as recorded in GateResult.bound."""
    parts: list[str] = []
    if gate.min is not None:
        parts.append(f">= {_num(gate.min)}")
    if gate.max is not None:
        parts.append(f"<= {_num(gate.max)}")
    compare = gate.compare
    if compare is not None and compare.max_ratio is not None:
        parts.append(_ratio_bound(gate, compare.max_ratio))
    if compare is not None and compare.two_proportion:
        parts.append(f"two-proportion p<{_num(1 - compare.confidence)}, margin {_num(compare.margin)}")
    return ", ".join(parts)


def _finite(x: float | None) -> float | None:
    # Prometheus answers 0/0 with NaN and x/0 with +Inf: both mean "nothing to judge yet".
    return x if x is not None and math.isfinite(x) else None


def _count(samples: float | None) -> int | None:
    # increase() extrapolates to the window edges, so counts arrive as e.g. 199.7.
    return None if samples is None else max(0, round(samples))


def _absolute_checks(gate: Gate, value: float) -> list[_Check]:
    checks: list[_Check] = []
    if gate.min is not None:
        ok = value >= gate.min
        checks.append(_Check(ok, f"{_num(value)} {'>=' if ok else '<'} min {_num(gate.min)}"))
    if gate.max is not None:
        ok = value <= gate.max
        checks.append(_Check(ok, f"{_num(value)} {'<=' if ok else '>'} max {_num(gate.max)}"))
    return checks


def _two_proportion_check(
    direction: Direction,
    compare: Comparison,
    value: float,
    samples: int | None,
    legacy: float,
    legacy_samples: int | None,
) -> _Check:
    if not samples or not legacy_samples:
        return _Check(None, "twoProportion needs sample counts on both sides")
    if not (0.0 <= value <= 1.0 and 0.0 <= legacy <= 1.0):
        return _Check(None, "twoProportion needs proportions in [0, 1]")
    x_c, x_l = value * samples, legacy * legacy_samples
    # One-sided, in the direction in which the candidate would be worse.
    if direction == HIGHER_IS_WORSE:
        test = two_proportion_test(x_c, samples, x_l, legacy_samples, compare.margin)
    else:
        test = two_proportion_test(x_l, legacy_samples, x_c, samples, compare.margin)
    worse = significantly_worse(test, confidence=compare.confidence, margin=compare.margin)
    alpha = _num(1 - compare.confidence)
    evidence = (
        f"candidate {_num(value)} ({_num(x_c)}/{samples}) vs legacy {_num(legacy)} "
        f"({_num(x_l)}/{legacy_samples}): worse by {_num(test.difference)}, p={test.p_value:.3g}"
    )
    if worse:
        return _Check(False, f"{evidence} < {alpha} and beyond margin {_num(compare.margin)}")
    return _Check(True, f"{evidence}: not significantly worse than margin {_num(compare.margin)}")


def _relative_checks(
    gate: Gate, value: float, samples: int | None, m: Measurement, need: int
) -> list[_Check]:
    compare = gate.compare
    if compare is None:
        return []
    legacy = _finite(m.legacy_value)
    legacy_samples = _count(_finite(m.legacy_samples))
    if legacy is None:
        return [_Check(None, f"no legacy data: waiting for legacy samples {legacy_samples or 0}/{need}")]
    if need > 0 and (legacy_samples or 0) < need:
        return [_Check(None, f"waiting for legacy samples {legacy_samples or 0}/{need}")]
    direction = gate_direction(gate)
    if direction is None:
        return [_Check(None, "direction unknown: set direction (higherIsWorse or lowerIsWorse)")]
    checks: list[_Check] = []
    if compare.max_ratio is not None:
        higher = direction == HIGHER_IS_WORSE
        ok = within_ratio(value, legacy, compare.max_ratio, higher_is_worse=higher)
        ratio = f"{value / legacy:.3g} x legacy" if legacy else "legacy is 0"
        verb = "within" if ok else "outside"
        checks.append(
            _Check(
                ok,
                f"candidate {_num(value)} vs legacy {_num(legacy)} ({ratio}): "
                f"{verb} {_ratio_bound(gate, compare.max_ratio)}",
            )
        )
    if compare.two_proportion:
        checks.append(_two_proportion_check(direction, compare, value, samples, legacy, legacy_samples))
    return checks


def evaluate_gate(gate: Gate, analysis: Analysis, measurement: Measurement) -> GateResult:
    value = _finite(measurement.value)
    samples = _count(_finite(measurement.samples))
    need = effective_min_samples(gate, analysis)

    def result(verdict: Verdict, message: str) -> GateResult:
        return GateResult(
            name=gate.name,
            verdict=verdict,
            value=value,
            legacy_value=_finite(measurement.legacy_value),
            bound=bound_text(gate),
            samples=samples,
            legacy_samples=_count(_finite(measurement.legacy_samples)),
            min_samples=need,
            query=measurement.query,
            message=message,
            dry_run=gate.dry_run,
        )

    if not counts_samples(gate) and need > 0:
        return result(Verdict.INCONCLUSIVE, "minSamples needs samplesQuery on a custom gate")
    have = samples or 0
    if have < need:
        return result(Verdict.INCONCLUSIVE, f"waiting for samples {have}/{need}")
    if value is None:
        waiting = f": waiting for samples {have}/{need}" if need else " for the candidate"
        return result(Verdict.INCONCLUSIVE, f"no data{waiting}")

    # All checks run even after one fails, so the evidence shows every violated bound.
    checks = _absolute_checks(gate, value) + _relative_checks(gate, value, samples, measurement, need)
    if not checks:
        return result(Verdict.INCONCLUSIVE, "gate has no bound: set min, max, or compare")
    failed = [c.text for c in checks if c.ok is False]
    if failed:
        return result(Verdict.FAIL, "; ".join(failed))
    pending = [c.text for c in checks if c.ok is None]
    if pending:
        return result(Verdict.INCONCLUSIVE, "; ".join(pending))
    over = f" over {samples} samples" if samples is not None else ""
    return result(Verdict.PASS, "; ".join(c.text for c in checks) + over)


BoundCheck = Callable[[float | None, float | None], bool]  # (value, samples) -> breached


def hard_bound_check(gate: Gate, analysis: Analysis) -> BoundCheck:
    """Whether evaluate_gate would fail this gate on its `min`/`max` alone (enough samples and a
    finite value outside a bound), as a check of (value, samples) with the gate's part worked out
    once: the fast check asks it of every rollout made from one template, 10,000 times a second at
    10,000 rollouts, without building a GateResult."""
    least = effective_min_samples(gate, analysis)
    low, high = gate.min, gate.max
    if not counts_samples(gate) and least > 0:
        return lambda value, samples: False

    def breached(value: float | None, samples: float | None) -> bool:
        finite = _finite(value)
        if finite is None or (_count(_finite(samples)) or 0) < least:
            return False
        return (low is not None and finite < low) or (high is not None and finite > high)

    return breached


def may_breach_quantile_max(
    gate: Gate, analysis: Analysis, shortfall: float | None, samples: float | None
) -> bool:
    """Whether a latency quantile with enough samples can be above the gate's `max`, told from the
    version's shortfall at the highest bucket bound under that max (templates.quantile_bucket_read):
    how many requests that bucket lacks to hold the quantile's share of them. None (the block holds
    only positive ones) rules a breach out: the quantile is at most that bound. Positive, the
    quantile is above the bound and may be above the max: the exact quantile decides."""
    if gate.max is None or (_count(_finite(samples)) or 0) < effective_min_samples(gate, analysis):
        return False
    short = _finite(shortfall)
    return short is not None and short > 0
