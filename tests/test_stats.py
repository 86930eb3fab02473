"""The statistics, checked against scipy (test-only oracle)."""

from __future__ import annotations

import math

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from scipy import stats as scipy_stats

from agent_rollout.analysis.stats import (
    normal_sf,
    significantly_worse,
    two_proportion_test,
    within_ratio,
)


def scipy_pooled_z(x1: float, n1: float, x2: float, n2: float, margin: float) -> tuple[float, float]:
    """statsmodels' proportions_ztest(value=margin, alternative='larger'), written with scipy.stats.norm."""
    pooled = (x1 + x2) / (n1 + n2)
    z = (x1 / n1 - x2 / n2 - margin) / math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    return z, float(scipy_stats.norm.sf(z))


def test_two_proportion_matches_scipy() -> None:
    # 30/1000 candidate errors against 20/1000 legacy errors.
    result = two_proportion_test(30, 1000, 20, 1000)
    z, p = scipy_pooled_z(30, 1000, 20, 1000, 0.0)
    assert result.z == pytest.approx(z, rel=1e-12)
    assert result.p_value == pytest.approx(p, rel=1e-12)
    # Known values: z = 0.01 / sqrt(0.025 * 0.975 * 0.002) = 1.4322..., one-sided p = 0.0760...
    assert result.z == pytest.approx(1.43223, abs=1e-5)
    assert result.p_value == pytest.approx(0.07604, abs=1e-5)
    assert result.difference == pytest.approx(0.01)


def test_two_proportion_z_squared_is_the_uncorrected_chi_square() -> None:
    # An independent oracle: for margin 0 the pooled z-test is Pearson's chi-square on the 2x2 table.
    table = [[45, 455], [25, 475]]
    chi2, p_two_sided, _, _ = scipy_stats.chi2_contingency(table, correction=False)
    result = two_proportion_test(45, 500, 25, 500)
    assert result.z**2 == pytest.approx(chi2, rel=1e-10)
    assert result.p_value == pytest.approx(p_two_sided / 2, rel=1e-9)


@given(
    n1=st.integers(1, 100_000),
    n2=st.integers(1, 100_000),
    f1=st.floats(0, 1),
    f2=st.floats(0, 1),
    margin=st.floats(0, 0.2),
)
def test_two_proportion_matches_scipy_for_any_counts(
    n1: int, n2: int, f1: float, f2: float, margin: float
) -> None:
    x1, x2 = round(f1 * n1), round(f2 * n2)
    pooled = (x1 + x2) / (n1 + n2)
    assume(0 < pooled < 1)
    result = two_proportion_test(x1, n1, x2, n2, margin)
    z, p = scipy_pooled_z(x1, n1, x2, n2, margin)
    assert result.z == pytest.approx(z, rel=1e-9, abs=1e-12)
    assert result.p_value == pytest.approx(p, rel=1e-9, abs=1e-300)


@given(st.floats(-40, 40))
def test_normal_tail_matches_scipy_even_far_out(z: float) -> None:
    assert normal_sf(z) == pytest.approx(float(scipy_stats.norm.sf(z)), rel=1e-12, abs=1e-300)


@given(base=st.integers(0, 400), extra=st.integers(1, 100))
def test_more_candidate_failures_never_look_better(base: int, extra: int) -> None:
    before = two_proportion_test(base, 1000, 50, 1000)
    after = two_proportion_test(base + extra, 1000, 50, 1000)
    assert after.p_value <= before.p_value


def test_clear_regression_is_significantly_worse() -> None:
    result = two_proportion_test(60, 1000, 20, 1000)
    assert significantly_worse(result, confidence=0.95, margin=0.0)


def test_small_difference_within_margin_is_not_worse_even_with_huge_samples() -> None:
    # 2.2% vs 2.0% over a million requests each is "significant" but inside a 0.5-point margin.
    unmargined = two_proportion_test(22_000, 1_000_000, 20_000, 1_000_000)
    assert significantly_worse(unmargined, confidence=0.95, margin=0.0)
    margined = two_proportion_test(22_000, 1_000_000, 20_000, 1_000_000, margin=0.005)
    assert not significantly_worse(margined, confidence=0.95, margin=0.005)


def test_noise_on_low_traffic_is_not_significant() -> None:
    # 2/50 vs 1/50: double the rate, but nowhere near significant.
    assert not significantly_worse(two_proportion_test(2, 50, 1, 50), confidence=0.95, margin=0.0)


def test_candidate_better_than_legacy_is_never_worse() -> None:
    result = two_proportion_test(5, 1000, 50, 1000)
    assert result.p_value > 0.99
    assert not significantly_worse(result, confidence=0.95, margin=0.0)


def test_all_zero_proportions_are_not_worse() -> None:
    result = two_proportion_test(0, 500, 0, 500)
    assert result.p_value == 1.0
    assert not significantly_worse(result, confidence=0.95, margin=0.0)


@pytest.mark.parametrize(("count", "n"), [(-1, 10), (11, 10), (1, 0), (math.nan, 10)])
def test_impossible_counts_are_refused(count: float, n: float) -> None:
    with pytest.raises(ValueError):
        two_proportion_test(count, n, 1, 10)


def test_ratio_bound_for_higher_is_worse() -> None:
    assert within_ratio(0.06, 0.05, 1.2, higher_is_worse=True)  # exactly at the bound passes
    assert not within_ratio(0.0601, 0.05, 1.2, higher_is_worse=True)


def test_ratio_bound_mirrors_for_lower_is_worse() -> None:
    assert within_ratio(0.80, 0.90, 1.2, higher_is_worse=False)  # 0.90 <= 1.2 x 0.80
    assert not within_ratio(0.70, 0.90, 1.2, higher_is_worse=False)


def test_ratio_against_legacy_zero_allows_only_zero() -> None:
    assert within_ratio(0.0, 0.0, 1.5, higher_is_worse=True)
    assert not within_ratio(1e-9, 0.0, 1.5, higher_is_worse=True)
    assert not within_ratio(0.0, 0.5, 1.5, higher_is_worse=False)


@given(legacy=st.floats(0, 1e6), ratio=st.floats(1.0, 10.0), candidate=st.floats(0, 1e7))
def test_ratio_bound_agrees_with_division(legacy: float, ratio: float, candidate: float) -> None:
    assume(legacy > 0 and not math.isclose(candidate / legacy, ratio, rel_tol=1e-6))
    assert within_ratio(candidate, legacy, ratio, higher_is_worse=True) == (candidate / legacy < ratio)
