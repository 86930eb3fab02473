"""Gate verdicts over numbers: bounds, minimum samples, no data, and comparison with legacy."""

from __future__ import annotations

import math
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from agent_rollout.analysis.gates import (
    Measurement,
    evaluate_gate,
    gate_direction,
    hard_bound_check,
    may_breach_quantile_max,
)
from agent_rollout.analysis.templates import SHARE_TOLERANCE, bucket_under
from agent_rollout.api import Analysis, Gate, GateResult, Verdict

ANALYSIS = Analysis.model_validate({"prometheus": {"url": "http://p:9090"}, "minSamples": 200})


def gate(**fields: Any) -> Gate:
    return Gate.model_validate({"name": "g", **fields})


def evaluate(g: Gate, **measured: Any) -> GateResult:
    return evaluate_gate(g, ANALYSIS, Measurement(query="QUERY", **measured))


ERRORS = gate(template="errorRate", max=0.01)


def test_low_traffic_gate_waits_for_samples() -> None:
    result = evaluate(ERRORS, value=0.5, samples=37.6)
    assert result.verdict is Verdict.INCONCLUSIVE
    assert result.message == "waiting for samples 38/200"
    assert (result.samples, result.min_samples, result.value) == (38, 200, 0.5)


def test_gate_min_samples_overrides_analysis_min_samples() -> None:
    assert (
        evaluate(gate(template="errorRate", max=0.01, minSamples=10), value=0.5, samples=20).verdict
        is Verdict.FAIL
    )
    strict = evaluate(gate(template="errorRate", max=0.01, minSamples=1000), value=0.0, samples=500)
    assert strict.message == "waiting for samples 500/1000"


def test_no_data_is_inconclusive_not_failed() -> None:
    for value in (None, math.nan, math.inf):
        result = evaluate(ERRORS, value=value, samples=500)
        assert result.verdict is Verdict.INCONCLUSIVE
        assert result.value is None
        assert "no data" in result.message


def test_no_samples_reads_as_zero_samples() -> None:
    result = evaluate(ERRORS, value=None, samples=None)
    assert (result.verdict, result.message) == (Verdict.INCONCLUSIVE, "waiting for samples 0/200")


def test_error_rate_above_max_fails_with_evidence() -> None:
    result = evaluate(ERRORS, value=0.034, samples=500)
    assert result.verdict is Verdict.FAIL
    assert result.bound == "<= 0.01"
    assert result.message == "0.034 > max 0.01"
    assert (result.query, result.samples, result.name, result.dry_run) == ("QUERY", 500, "g", False)


def test_error_rate_within_max_passes() -> None:
    result = evaluate(ERRORS, value=0.004, samples=500)
    assert result.verdict is Verdict.PASS
    assert result.message == "0.004 <= max 0.01 over 500 samples"


def test_accuracy_below_min_fails() -> None:
    accuracy = gate(template="evalAccuracy", min=0.95)
    assert evaluate(accuracy, value=0.93, samples=250).verdict is Verdict.FAIL
    assert evaluate(accuracy, value=0.96, samples=250).verdict is Verdict.PASS
    assert evaluate(accuracy, value=0.96, samples=250).bound == ">= 0.95"


def test_dry_run_is_recorded_on_the_result() -> None:
    result = evaluate(gate(template="errorRate", max=0.01, dryRun=True), value=0.5, samples=500)
    assert (result.verdict, result.dry_run) == (Verdict.FAIL, True)


def test_latency_ratio_against_legacy_fails_when_candidate_is_slower() -> None:
    latency = gate(template="latencyQuantile", compare={"maxRatio": 1.2})
    slow = evaluate(latency, value=9.0, samples=300, legacy_value=6.0, legacy_samples=5000)
    assert slow.verdict is Verdict.FAIL
    assert slow.bound == "<= 1.2 x legacy"
    assert slow.legacy_value == 6.0
    assert "1.5 x legacy" in slow.message
    ok = evaluate(latency, value=7.0, samples=300, legacy_value=6.0, legacy_samples=5000)
    assert ok.verdict is Verdict.PASS


def test_comparison_waits_for_legacy_data() -> None:
    latency = gate(template="latencyQuantile", compare={"maxRatio": 1.2})
    no_legacy = evaluate(latency, value=7.0, samples=300, legacy_value=None, legacy_samples=None)
    assert no_legacy.verdict is Verdict.INCONCLUSIVE
    assert "no legacy data" in no_legacy.message
    thin = evaluate(latency, value=7.0, samples=300, legacy_value=6.0, legacy_samples=12)
    assert (thin.verdict, thin.message) == (Verdict.INCONCLUSIVE, "waiting for legacy samples 12/200")


def test_absolute_failure_is_not_hidden_by_missing_legacy_data() -> None:
    combined = gate(template="errorRate", max=0.01, compare={"maxRatio": 1.5})
    result = evaluate(combined, value=0.2, samples=500, legacy_value=None)
    assert result.verdict is Verdict.FAIL
    assert result.bound == "<= 0.01, <= 1.5 x legacy"


def test_combined_gate_fails_when_only_the_relative_bound_fails() -> None:
    combined = gate(template="errorRate", max=0.05, compare={"maxRatio": 1.5})
    result = evaluate(combined, value=0.04, samples=500, legacy_value=0.01, legacy_samples=5000)
    assert result.verdict is Verdict.FAIL
    assert "outside <= 1.5 x legacy" in result.message


def test_ratio_gate_with_legacy_zero_fails_on_any_candidate_error() -> None:
    ratio = gate(template="errorRate", compare={"maxRatio": 2})
    result = evaluate(ratio, value=0.002, samples=500, legacy_value=0.0, legacy_samples=5000)
    assert result.verdict is Verdict.FAIL
    assert "legacy is 0" in result.message
    both_zero = evaluate(ratio, value=0.0, samples=500, legacy_value=0.0, legacy_samples=5000)
    assert both_zero.verdict is Verdict.PASS


def test_two_proportion_gate_fails_on_a_significant_regression() -> None:
    test = gate(template="errorRate", compare={"twoProportion": True, "margin": 0.01})
    result = evaluate(test, value=0.06, samples=1000, legacy_value=0.02, legacy_samples=9000)
    assert result.verdict is Verdict.FAIL
    assert result.bound == "two-proportion p<0.05, margin 0.01"
    assert "60/1000" in result.message and "180/9000" in result.message


def test_two_proportion_gate_passes_a_difference_within_margin() -> None:
    test = gate(template="errorRate", compare={"twoProportion": True, "margin": 0.01})
    result = evaluate(test, value=0.025, samples=20_000, legacy_value=0.02, legacy_samples=100_000)
    assert result.verdict is Verdict.PASS


def test_two_proportion_on_accuracy_fails_when_candidate_is_less_accurate() -> None:
    accuracy = gate(template="evalAccuracy", compare={"twoProportion": True})
    worse = evaluate(accuracy, value=0.90, samples=1000, legacy_value=0.96, legacy_samples=1000)
    assert worse.verdict is Verdict.FAIL
    better = evaluate(accuracy, value=0.99, samples=1000, legacy_value=0.96, legacy_samples=1000)
    assert better.verdict is Verdict.PASS


def test_two_proportion_on_a_non_proportion_is_inconclusive() -> None:
    custom = gate(query="q{{version}}", samplesQuery="s{{version}}", max=100, compare={"twoProportion": True})
    result = evaluate(custom, value=3.5, samples=1000, legacy_value=2.0, legacy_samples=1000)
    assert result.verdict is Verdict.INCONCLUSIVE
    assert "[0, 1]" in result.message


def test_custom_gate_without_samples_query_ignores_analysis_min_samples() -> None:
    custom = gate(query="q", max=5)
    result = evaluate(custom, value=7.0)
    assert (result.verdict, result.min_samples, result.samples) == (Verdict.FAIL, 0, None)


def test_custom_gate_with_min_samples_but_no_samples_query_never_passes() -> None:
    custom = gate(query="q", max=5, minSamples=10)
    assert evaluate(custom, value=1.0).verdict is Verdict.INCONCLUSIVE


def test_gate_without_any_bound_is_inconclusive() -> None:
    assert evaluate(gate(template="errorRate"), value=0.0, samples=500).verdict is Verdict.INCONCLUSIVE


def test_direction_of_each_signal() -> None:
    for template in ("errorRate", "latencyQuantile", "flagRate", "costPerRequest", "tokensPerRequest"):
        assert gate_direction(gate(template=template, max=1)) == "higherIsWorse", template
    assert gate_direction(gate(template="evalAccuracy", min=0.9)) == "lowerIsWorse"
    assert gate_direction(gate(query="q", max=1)) == "higherIsWorse"
    assert gate_direction(gate(query="q", min=0.5)) == "lowerIsWorse"
    assert gate_direction(gate(query="q", min=0.5, direction="higherIsWorse")) == "higherIsWorse"
    # Neither a one-sided bound nor compare says which way is worse: never guessed.
    assert gate_direction(gate(query="q", compare={"maxRatio": 2})) is None
    assert gate_direction(gate(query="q", min=0, max=1, compare={"twoProportion": True})) is None
    # A template knows its direction; a contradicting one is a spec problem, never obeyed.
    assert gate_direction(gate(template="errorRate", max=1, direction="lowerIsWorse")) == "higherIsWorse"


def proportion(direction: str | None = None) -> Gate:
    """A custom yes/no gate with only twoProportion: nothing in it says which way is worse."""
    fields = {"direction": direction} if direction else {}
    return gate(query="q{{version}}", samplesQuery="s{{version}}", compare={"twoProportion": True}, **fields)


def test_two_proportion_custom_gate_fails_a_worse_candidate_in_its_direction() -> None:
    # The regression: 10% errors against legacy's 1%, 2,000 requests each, used to pass.
    worse = {"value": 0.10, "samples": 2000, "legacy_value": 0.01, "legacy_samples": 2000}
    better = {"value": 0.01, "samples": 2000, "legacy_value": 0.10, "legacy_samples": 2000}
    higher = proportion("higherIsWorse")
    assert evaluate(higher, **worse).verdict is Verdict.FAIL
    assert evaluate(higher, **better).verdict is Verdict.PASS
    # The same numbers read as accuracy: the lower candidate is the worse one.
    lower = proportion("lowerIsWorse")
    assert evaluate(lower, **worse).verdict is Verdict.PASS
    assert evaluate(lower, **better).verdict is Verdict.FAIL


def test_relative_bounds_without_a_direction_give_no_verdict() -> None:
    worse = {"value": 0.10, "samples": 2000, "legacy_value": 0.01, "legacy_samples": 2000}
    result = evaluate(proportion(), **worse)
    assert result.verdict is Verdict.INCONCLUSIVE
    assert result.message == "direction unknown: set direction (higherIsWorse or lowerIsWorse)"
    ratio = gate(query="q{{version}}", compare={"maxRatio": 1.2})
    assert evaluate(ratio, value=5.0, legacy_value=1.0).verdict is Verdict.INCONCLUSIVE
    assert evaluate(ratio, value=5.0, legacy_value=1.0).bound == "within 1.2 x legacy (direction unknown)"


def test_max_ratio_follows_the_direction() -> None:
    # higherIsWorse fails when candidate > ratio x legacy; lowerIsWorse when candidate < legacy / ratio.
    higher = gate(query="q{{version}}", compare={"maxRatio": 1.25}, direction="higherIsWorse")
    lower = gate(query="q{{version}}", compare={"maxRatio": 1.25}, direction="lowerIsWorse")
    assert evaluate(higher, value=1.25, legacy_value=1.0).verdict is Verdict.PASS
    assert evaluate(higher, value=1.3, legacy_value=1.0).verdict is Verdict.FAIL
    assert evaluate(higher, value=0.1, legacy_value=1.0).verdict is Verdict.PASS
    assert evaluate(lower, value=0.8, legacy_value=1.0).verdict is Verdict.PASS
    assert evaluate(lower, value=0.79, legacy_value=1.0).verdict is Verdict.FAIL
    assert evaluate(lower, value=9.0, legacy_value=1.0).verdict is Verdict.PASS
    assert evaluate(lower, value=0.79, legacy_value=1.0).bound == ">= legacy / 1.25"
    assert evaluate(higher, value=1.3, legacy_value=1.0).bound == "<= 1.25 x legacy"


@given(value=st.floats(0, 1), samples=st.floats(0, 199.4))
def test_below_min_samples_never_gives_a_verdict(value: float, samples: float) -> None:
    assert evaluate(ERRORS, value=value, samples=samples).verdict is Verdict.INCONCLUSIVE


@given(value=st.floats(0, 1), samples=st.integers(200, 10**6))
def test_with_enough_samples_max_bound_decides(value: float, samples: int) -> None:
    verdict = evaluate(ERRORS, value=value, samples=samples).verdict
    assert verdict is (Verdict.FAIL if value > 0.01 else Verdict.PASS)


@given(
    p_c=st.floats(0, 1),
    p_l=st.floats(0, 1),
    n_c=st.integers(200, 50_000),
    n_l=st.integers(200, 50_000),
    margin=st.sampled_from([0.0, 0.005, 0.02]),
)
def test_accuracy_test_mirrors_error_rate_test(
    p_c: float, p_l: float, n_c: int, n_l: int, margin: float
) -> None:
    # Accuracy a is "lower is worse"; 1 - a is an error rate. Both must reach the same verdict.
    accuracy = gate(template="evalAccuracy", compare={"twoProportion": True, "margin": margin})
    errors = gate(template="errorRate", compare={"twoProportion": True, "margin": margin})
    # Whole counts, as Prometheus would report them, so 1 - p loses nothing to rounding.
    a_c, a_l = round(p_c * n_c) / n_c, round(p_l * n_l) / n_l
    by_accuracy = evaluate(accuracy, value=a_c, samples=n_c, legacy_value=a_l, legacy_samples=n_l)
    by_errors = evaluate(errors, value=1 - a_c, samples=n_c, legacy_value=1 - a_l, legacy_samples=n_l)
    assert by_accuracy.verdict is by_errors.verdict


_maybe_number = st.one_of(
    st.none(), st.floats(allow_nan=True, allow_infinity=True), st.floats(min_value=-10, max_value=10)
)


@given(
    template=st.sampled_from(["errorRate", None]),
    samples_query=st.booleans(),
    low=st.one_of(st.none(), st.floats(min_value=-5, max_value=5)),
    high=st.one_of(st.none(), st.floats(min_value=-5, max_value=5)),
    min_samples=st.one_of(st.none(), st.integers(min_value=0, max_value=300)),
    value=_maybe_number,
    samples=st.one_of(_maybe_number, st.floats(min_value=0, max_value=400)),
)
def test_the_fast_checks_hard_bound_fails_exactly_what_the_evaluation_fails(
    template: str | None,
    samples_query: bool,
    low: float | None,
    high: float | None,
    min_samples: int | None,
    value: float | None,
    samples: float | None,
) -> None:
    """On a gate with only `min`/`max`, the fast check's precomputed question (hard_bound_check)
    and the evaluation agree on every measurement, no data and too few samples included."""
    fields: dict[str, Any] = {"min": low, "max": high, "minSamples": min_samples}
    if template is None:
        fields["query"] = "q"
        if samples_query:
            fields["samplesQuery"] = "s"
    else:
        fields["template"] = template
    g = gate(**{k: v for k, v in fields.items() if v is not None})
    failed = evaluate(g, value=value, samples=samples).verdict is Verdict.FAIL
    assert hard_bound_check(g, ANALYSIS)(value, samples) is failed


def prometheus_quantile(q: float, buckets: list[tuple[float, float]]) -> float:
    """Prometheus' histogram_quantile over cumulative (bound, count) buckets ending with +Inf."""
    total = buckets[-1][1]
    if total == 0:
        return math.nan
    rank = q * total
    i = next(i for i, (_, count) in enumerate(buckets) if count >= rank)
    if i == len(buckets) - 1:
        return buckets[-2][0]
    lower, below = (0.0, 0.0) if i == 0 else buckets[i - 1]
    upper, count = buckets[i]
    return lower + (upper - lower) * (rank - below) / (count - below)


@given(
    bounds=st.lists(st.floats(min_value=0.01, max_value=60), min_size=1, max_size=8, unique=True),
    counts=st.lists(st.integers(min_value=0, max_value=1000), min_size=9, max_size=9),
    at=st.integers(min_value=0, max_value=7),
    above=st.one_of(st.floats(min_value=0, max_value=0.05), st.floats(min_value=0, max_value=70)),
    q=st.sampled_from([0.5, 0.9, 0.95, 0.99]),
)
@settings(max_examples=400)
def test_the_bucket_share_never_rules_out_a_quantile_above_the_max(
    bounds: list[float], counts: list[int], at: int, above: float, q: float
) -> None:
    """The fast check reads one bucket instead of the quantile: whenever histogram_quantile is above
    the gate's max, the share at or under the highest bound under that max says it may be. Maxima
    just above a bucket bound are the hard cases: the quantile is then barely above that bound."""
    finite = sorted(bounds)
    limit = finite[at % len(finite)] + above
    cumulative, running = [], 0
    for bound, count in zip([*finite, math.inf], counts, strict=False):
        running += count
        cumulative.append((bound, float(running)))
    series = {(repr(b), repr(b)): 1.0 for b, _ in cumulative}
    spellings = bucket_under(series, limit)
    quantile = prometheus_quantile(q, cumulative)
    g = gate(template="latencyQuantile", max=limit, quantile=q, minSamples=1)
    if spellings is None:
        return  # no bucket under the max: the fast check reads the quantile itself
    (chosen,) = spellings
    under = dict(cumulative)[float(chosen)]
    total = cumulative[-1][1]
    shortfall = (q + SHARE_TOLERANCE) * total - under  # the block's `> 0`: only positive ones answered
    answered = shortfall if shortfall > 0 else None
    if total > 0 and quantile > limit:
        assert may_breach_quantile_max(g, ANALYSIS, answered, total)
