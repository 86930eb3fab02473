"""The statistics behind relative gates. Pure math on floats; no scipy at run time.

Two-proportion z-test, one-sided, pooled variance. With `margin` m it tests
    H0: p_worse - p_better <= m   against   H1: p_worse - p_better > m
using z = (p_worse - p_better - m) / sqrt(p (1 - p) (1/n_worse + 1/n_better)), p pooled over both
sides. This is exactly statsmodels' `proportions_ztest([x1, x2], [n1, n2], value=m,
alternative="larger")`; with m = 0, z squared is the uncorrected chi-square of the 2x2 table.
The normal approximation needs roughly n*p >= 5 and n*(1-p) >= 5 on each side; below that the
p-value is optimistic or pessimistic by a lot, which is what minSamples is for.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class ProportionTest:
    """Result of testing whether the `worse` side's proportion exceeds the `better` side's by > margin."""

    difference: float  # p_worse - p_better, observed
    z: float
    p_value: float  # one-sided: P(Z >= z) under H0


def normal_sf(z: float) -> float:
    """P(Z >= z) for a standard normal Z; erfc keeps precision far in the tail where 1 - cdf would not."""
    return 0.5 * math.erfc(z / math.sqrt(2.0))


def _check_counts(count: float, n: float, side: str) -> None:
    if not (math.isfinite(count) and math.isfinite(n)):
        raise ValueError(f"{side}: counts must be finite, got {count!r}/{n!r}")
    if n <= 0 or count < 0 or count > n:
        raise ValueError(f"{side}: need 0 <= count <= n and n > 0, got {count!r}/{n!r}")


def two_proportion_test(
    worse_count: float,
    worse_n: float,
    better_count: float,
    better_n: float,
    margin: float = 0.0,
) -> ProportionTest:
    """One-sided pooled z-test of H0: p_worse - p_better <= margin.

    Counts may be fractional: Prometheus' increase() extrapolates to the window edges.
    """
    _check_counts(worse_count, worse_n, "worse")
    _check_counts(better_count, better_n, "better")
    if not (math.isfinite(margin) and margin >= 0):
        raise ValueError(f"margin must be finite and >= 0, got {margin!r}")
    p_worse = worse_count / worse_n
    p_better = better_count / better_n
    difference = p_worse - p_better
    pooled = (worse_count + better_count) / (worse_n + better_n)
    variance = pooled * (1.0 - pooled) * (1.0 / worse_n + 1.0 / better_n)
    if variance <= 0.0:
        # Both sides all-0 or all-1: no spread, so no evidence of a difference either way.
        return ProportionTest(difference=difference, z=0.0, p_value=1.0 if difference <= margin else 0.0)
    z = (difference - margin) / math.sqrt(variance)
    return ProportionTest(difference=difference, z=z, p_value=normal_sf(z))


def significantly_worse(test: ProportionTest, *, confidence: float, margin: float) -> bool:
    """Worse beyond the margin at the given confidence (e.g. 0.95 means p < 0.05)."""
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    return test.p_value < 1.0 - confidence and test.difference > margin


def within_ratio(candidate: float, legacy: float, max_ratio: float, *, higher_is_worse: bool) -> bool:
    """Candidate no worse than max_ratio times legacy.

    Multiplying instead of dividing keeps legacy = 0 well defined: for higher-is-worse signals a legacy
    of 0 allows only a candidate of 0 (any error at all is infinitely worse); for lower-is-worse
    signals the bound mirrors to legacy <= max_ratio x candidate, so a candidate of 0 passes only
    against a legacy of 0. Values are assumed non-negative (rates, latencies, costs).
    """
    if not (math.isfinite(max_ratio) and max_ratio > 0):
        raise ValueError(f"max_ratio must be finite and > 0, got {max_ratio!r}")
    worse, better = (candidate, legacy) if higher_is_worse else (legacy, candidate)
    bound = max_ratio * better
    # isclose: 1.2 x 0.05 is 0.060000000000000005 in floats, and a candidate exactly at the bound passes.
    return worse <= bound or math.isclose(worse, bound, rel_tol=1e-9)
