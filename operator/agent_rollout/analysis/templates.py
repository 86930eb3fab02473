"""PromQL for gates: built-in agent templates and custom queries with variables.

Everything here is pure string building. Two rules keep it safe:
- values that come from the spec or the cluster (versions, namespace) only ever land inside PromQL
  string literals, escaped, so a value such as `a"} or vector(1) #` stays a (strange) label value;
- names (metrics, labels) and windows are re-checked against their patterns even though the pydantic
  models already enforce them, because `model_construct` and hand-built objects skip validation.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Literal

from agent_rollout.api import (
    DURATION_PATTERN,
    AgentRolloutSpec,
    Gate,
    MetricNames,
    Template,
    duration_seconds,
)

Side = Literal["legacy", "candidate"]

# OpenTelemetry GenAI semantic conventions: gen_ai.token.type is "input" or "output".
TOKEN_TYPE_LABEL = "gen_ai_token_type"
VARIABLES = ("namespace", "legacy", "candidate", "version", "window")

_METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
# The subset of spec durations PromQL parses as written: units in this order, each at most once.
_PROMQL_DURATION = re.compile(r"(?:[0-9]+h)?(?:[0-9]+m)?(?:[0-9]+s)?(?:[0-9]+ms)?")
_VARIABLE = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
# PromQL double-quoted strings use Go escapes; a raw newline would end the lexer's string token.
_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"}

# Templates whose value is a proportion in [0, 1], so a two-proportion test applies.
PROPORTION_TEMPLATES = frozenset({Template.ERROR_RATE, Template.FLAG_RATE, Template.EVAL_ACCURACY})


class TemplateError(ValueError):
    """A gate cannot be rendered (bad name, unknown variable): a spec problem, not a Prometheus one."""


@dataclass(frozen=True)
class GateQueries:
    value: str
    samples: str | None  # None: a custom gate without samplesQuery cannot count its samples


def promql_escape(text: str) -> str:
    """`text` as the content of a PromQL double-quoted string literal (quotes not included)."""
    return "".join(_ESCAPES.get(ch, ch) for ch in text)


def _metric(name: str) -> str:
    if not _METRIC_NAME.fullmatch(name):
        raise TemplateError(f"not a Prometheus metric name: {name!r}")
    return name


def _label(name: str) -> str:
    if not _LABEL_NAME.fullmatch(name):
        raise TemplateError(f"not a Prometheus label name: {name!r}")
    return name


def _window(window: str) -> str:
    """`window` as a PromQL range. The spec's durations allow units in any order and repeated (30s2m),
    PromQL only in order and once each (2m30s), and no range of 0: either would be a parse error that
    fails every query of the evaluation, so such windows are written out in seconds, and 0 refused."""
    if not re.fullmatch(DURATION_PATTERN, window):
        raise TemplateError(f"not a PromQL duration: {window!r}")
    millis = round(duration_seconds(window) * 1000)
    if millis <= 0:
        raise TemplateError(f"window must be longer than 0, got {window!r}")
    if _PROMQL_DURATION.fullmatch(window):
        return window
    return f"{millis // 1000}s" if millis % 1000 == 0 else f"{millis}ms"


def version_values(spec: AgentRolloutSpec) -> tuple[str, str]:
    """(legacy, candidate) values of the version label: the Deployment names unless overridden."""
    metrics = spec.analysis.metrics if spec.analysis else MetricNames()
    legacy = metrics.legacy_version if metrics.legacy_version is not None else spec.legacy.deployment
    candidate = (
        metrics.candidate_version if metrics.candidate_version is not None else spec.candidate.deployment
    )
    return legacy, candidate


class _Selectors:
    """PromQL fragments for one side of the rollout."""

    def __init__(self, metrics: MetricNames, version: str, namespace: str, window: str) -> None:
        self.m = metrics
        self.w = _window(window)
        self.sel = (
            f'{_label(metrics.version_label)}="{promql_escape(version)}",'
            f'{_label(metrics.namespace_label)}="{promql_escape(namespace)}"'
        )

    def increase(self, metric: str, extra: str = "") -> str:
        labels = f"{self.sel},{extra}" if extra else self.sel
        return f"sum(increase({_metric(metric)}{{{labels}}}[{self.w}]))"

    def sparse(self, metric: str, extra: str = "") -> str:
        # Counters with labels appear only at their first increment: with no error yet there is no
        # error series, and a plain ratio would be "no data" for an error-free candidate forever.
        return f"({self.increase(metric, extra)} or vector(0))"

    def requests(self) -> str:
        return self.increase(f"{self.m.duration_histogram}_count")

    def tokens(self) -> str:
        return self.increase(f"{self.m.token_histogram}_sum", f'{TOKEN_TYPE_LABEL}=~"input|output"')


def template_queries(
    template: Template,
    metrics: MetricNames,
    *,
    version: str,
    namespace: str,
    window: str,
    quantile: float = 0.95,
) -> GateQueries:
    """Value and sample-count PromQL of a built-in template for one version over `window`."""
    s = _Selectors(metrics, version, namespace, window)
    requests = s.requests()
    if template is Template.ERROR_RATE:
        errors = s.sparse(f"{metrics.duration_histogram}_count", f'{_label(metrics.error_label)}!=""')
        return GateQueries(f"{errors} / {requests}", requests)
    if template is Template.LATENCY_QUANTILE:
        if not 0 < quantile < 1:
            raise TemplateError(f"quantile must be in (0, 1), got {quantile!r}")
        buckets = f"{_metric(metrics.duration_histogram)}_bucket{{{s.sel}}}[{s.w}]"
        return GateQueries(f"histogram_quantile({quantile!r}, sum by (le) (rate({buckets})))", requests)
    if template is Template.FLAG_RATE:
        return GateQueries(f"{s.sparse(metrics.flagged_counter)} / {requests}", requests)
    if template is Template.COST_PER_REQUEST:
        price = metrics.price_per_token
        if price is None:
            # No `or vector(0)`: every request costs something, so a missing cost series means a
            # misnamed metric, and "no data" (inconclusive) is safer than reading it as free.
            return GateQueries(f"{s.increase(metrics.cost_counter)} / {requests}", requests)
        if not math.isfinite(price) or price < 0:
            raise TemplateError(f"pricePerToken must be a finite non-negative number, got {price!r}")
        return GateQueries(f"{s.tokens()} * {price!r} / {requests}", requests)
    if template is Template.TOKENS_PER_REQUEST:
        return GateQueries(f"{s.tokens()} / {requests}", requests)
    if template is Template.EVAL_ACCURACY:
        total = s.increase(metrics.eval_total_counter)
        # Zero correct answers must read as accuracy 0 (a failing gate), not as "no data".
        return GateQueries(f"{s.sparse(metrics.eval_correct_counter)} / {total}", total)
    raise TemplateError(f"unknown template {template!r}")


def render_variables(query: str, variables: dict[str, str]) -> str:
    """Substitute {{name}} in one pass, so substituted text is never expanded again."""

    def substitute(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in variables:
            raise TemplateError(f"unknown variable {{{{{name}}}}} (known: {', '.join(VARIABLES)})")
        return variables[name]

    return _VARIABLE.sub(substitute, query)


def gate_queries(gate: Gate, spec: AgentRolloutSpec, namespace: str, side: Side) -> GateQueries:
    """The gate's PromQL measuring `side` (the legacy or the candidate version)."""
    legacy, candidate = version_values(spec)
    version = legacy if side == "legacy" else candidate
    metrics = spec.analysis.metrics if spec.analysis else MetricNames()
    if gate.template is not None:
        return template_queries(
            gate.template,
            metrics,
            version=version,
            namespace=namespace,
            window=gate.window,
            quantile=gate.quantile,
        )
    if gate.query is None:
        raise TemplateError(f"gate {gate.name!r} has neither template nor query")
    variables = {
        "namespace": promql_escape(namespace),
        "legacy": promql_escape(legacy),
        "candidate": promql_escape(candidate),
        "version": promql_escape(version),
        "window": _window(gate.window),
    }
    samples = render_variables(gate.samples_query, variables) if gate.samples_query else None
    return GateQueries(render_variables(gate.query, variables), samples)


def candidate_requests_query(spec: AgentRolloutSpec, namespace: str, seconds: int) -> str:
    """Candidate requests over the last `seconds` (pause.minRequests: "the first 1,000 transactions")."""
    if seconds < 1:
        raise TemplateError(f"window must be at least 1s, got {seconds!r}")
    metrics = spec.analysis.metrics if spec.analysis else MetricNames()
    _, candidate = version_values(spec)
    return _Selectors(metrics, candidate, namespace, f"{int(seconds)}s").requests()


def query_variables(query: str) -> list[str]:
    """The {{variables}} a custom query uses, in order of appearance."""
    return _VARIABLE.findall(query)
