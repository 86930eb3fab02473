"""The fault profile of a simulated agent: what share of calls fail, how slow, how good, how costly.

Shared by the agent process (which validates updates sent to POST /profile) and the test harness.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

_RATIOS = ("error_ratio", "flagged_ratio", "eval_accuracy", "disagreement_ratio", "noise_ratio")
_DISTRIBUTIONS = ("lognormal", "constant")


@dataclass(frozen=True)
class FaultProfile:
    error_ratio: float = 0.0  # share of calls answered with error_code
    error_code: int = 500
    latency_distribution: str = "lognormal"
    latency_median_s: float = 0.05
    latency_p95_s: float = 0.1
    # False records the sampled latency in the histogram without sleeping, so a test can simulate
    # multi-second agent calls in milliseconds.
    latency_sleep: bool = True
    flagged_ratio: float = 0.0  # share of answers the validator flags (the hallucination signal)
    input_tokens: int = 400
    output_tokens: int = 150
    cost_per_request_usd: float = 0.002
    eval_accuracy: float = 0.97  # probability that an answer counts as correct in agent_eval_*
    # Named evaluation cases (comma-separated) this agent answers wrongly: an edge case it gets wrong.
    failing_cases: str = ""
    # Shadow comparisons: every call answers {"answer": ...} to its input. With this probability the
    # answer is a different one (a candidate that disagrees with legacy), ...
    disagreement_ratio: float = 0.0
    # ... and with this one a rewording of the right one (a non-deterministic agent: two calls of legacy
    # disagree on about twice this share, the comparator's noise floor).
    noise_ratio: float = 0.0

    def __post_init__(self) -> None:
        for name in _RATIOS:
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be within [0, 1], got {value}")
        if self.latency_distribution not in _DISTRIBUTIONS:
            raise ValueError(f"latency_distribution must be one of {_DISTRIBUTIONS}")
        if self.latency_median_s <= 0 or self.latency_p95_s < self.latency_median_s:
            raise ValueError("need 0 < latency_median_s <= latency_p95_s")
        if not 400 <= self.error_code <= 599:
            raise ValueError("error_code must be an HTTP error status")
        if min(self.input_tokens, self.output_tokens) < 0 or self.cost_per_request_usd < 0:
            raise ValueError("tokens and cost must not be negative")

    def updated(self, changes: Mapping[str, Any]) -> FaultProfile:
        """A copy with some fields changed; unknown fields are an error rather than silently ignored."""
        known = {f.name: f.type for f in fields(self)}
        unknown = sorted(set(changes) - set(known))
        if unknown:
            raise ValueError(f"unknown profile fields: {unknown}")
        return replace(self, **_coerce(self, changes))

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def sample_latency_s(self, rng: random.Random) -> float:
        if self.latency_distribution == "constant" or self.latency_p95_s == self.latency_median_s:
            return self.latency_median_s
        # Lognormal through the two given quantiles: agent latencies have a long right tail.
        sigma = math.log(self.latency_p95_s / self.latency_median_s) / 1.6448536269514722
        return rng.lognormvariate(math.log(self.latency_median_s), sigma)


def _coerce(current: FaultProfile, changes: Mapping[str, Any]) -> dict[str, Any]:
    # JSON gives ints where floats are meant (e.g. "error_ratio": 1); keep the dataclass types exact.
    out: dict[str, Any] = {}
    for name, value in changes.items():
        kind = type(getattr(current, name))
        if kind is bool and not isinstance(value, bool):
            raise ValueError(f"{name} must be true or false")
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind):
            raise ValueError(f"{name} must be {kind.__name__}, got {value!r}")
        out[name] = value
    return out
