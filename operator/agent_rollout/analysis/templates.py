"""PromQL for gates: built-in agent templates and custom queries with variables.

A template is one recipe (counters and how they combine), rendered two ways: as building blocks
grouped by namespace and version that all rollouts share (`template_read`, what is queried), and as
the per-rollout PromQL for the same value (`template_queries`, what evidence shows a human).

Everything here is pure string building and arithmetic. Two rules keep it safe:
- values that come from the spec or the cluster (versions, namespace) only ever land inside PromQL
  string literals, escaped, so a value such as `a"} or vector(1) #` stays a (strange) label value;
- names (metrics, labels) and windows are re-checked against their patterns even though the pydantic
  models already enforce them, because `model_construct` and hand-built objects skip validation.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

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
PROPORTION_TEMPLATES = frozenset(
    {Template.ERROR_RATE, Template.FLAG_RATE, Template.EVAL_ACCURACY, Template.SHADOW_AGREEMENT}
)
# The shadow comparator's outcome label; only match and mismatch are comparisons: a candidate error is
# the error gate's (the candidate's own metrics), and legacy errors, skipped pairs and judge errors say
# nothing about the candidate's answers.
OUTCOME_LABEL = "outcome"


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


def _millis(window: str) -> int:
    if not re.fullmatch(DURATION_PATTERN, window):
        raise TemplateError(f"not a PromQL duration: {window!r}")
    millis = round(duration_seconds(window) * 1000)
    if millis <= 0:
        raise TemplateError(f"window must be longer than 0, got {window!r}")
    return millis


def _seconds_or_millis(millis: int) -> str:
    return f"{millis // 1000}s" if millis % 1000 == 0 else f"{millis}ms"


def _window(window: str) -> str:
    """`window` as a PromQL range. The spec's durations allow units in any order and repeated (30s2m),
    PromQL only in order and once each (2m30s), and no range of 0: either would be a parse error that
    fails every query of the evaluation, so such windows are written out in seconds, and 0 refused."""
    millis = _millis(window)
    return window if _PROMQL_DURATION.fullmatch(window) else _seconds_or_millis(millis)


def version_values(spec: AgentRolloutSpec) -> tuple[str, str]:
    """(legacy, candidate) values of the version label: the Deployment names unless overridden."""
    metrics = spec.analysis.metrics if spec.analysis else MetricNames()
    legacy = metrics.legacy_version if metrics.legacy_version is not None else spec.legacy.deployment
    candidate = (
        metrics.candidate_version if metrics.candidate_version is not None else spec.candidate.deployment
    )
    return legacy, candidate


@dataclass(frozen=True)
class _Increase:
    """`increase()` of one counter over the window, summed: per rollout, or per (namespace, version)."""

    metric: str
    matcher: str = ""  # one more label matcher, e.g. error_type!=""


@dataclass(frozen=True)
class _Recipe:
    """A template as arithmetic on counters: value = numerator (0 if absent and `sparse`) x factor /
    denominator, samples = denominator. Without a numerator the value is the latency quantile.
    Both the per-rollout PromQL (evidence) and the shared building blocks are rendered from it."""

    denominator: _Increase
    numerator: _Increase | None = None
    sparse: bool = False
    factor: float | None = None


def _requests(metrics: MetricNames) -> _Increase:
    return _Increase(f"{_metric(metrics.duration_histogram)}_count")


def _tokens(metrics: MetricNames) -> _Increase:
    return _Increase(f"{_metric(metrics.token_histogram)}_sum", f'{TOKEN_TYPE_LABEL}=~"input|output"')


def _recipe(template: Template, metrics: MetricNames, quantile: float) -> _Recipe:
    requests = _requests(metrics)
    if template is Template.ERROR_RATE:
        # Counters with labels appear only at their first increment: with no error yet there is no
        # error series, and a plain ratio would be "no data" for an error-free candidate forever.
        errors = _Increase(requests.metric, f'{_label(metrics.error_label)}!=""')
        return _Recipe(requests, errors, sparse=True)
    if template is Template.LATENCY_QUANTILE:
        if not 0 < quantile < 1:
            raise TemplateError(f"quantile must be in (0, 1), got {quantile!r}")
        return _Recipe(requests)
    if template is Template.FLAG_RATE:
        return _Recipe(requests, _Increase(_metric(metrics.flagged_counter)), sparse=True)
    if template is Template.COST_PER_REQUEST:
        price = metrics.price_per_token
        if price is None:
            # Not sparse: every request costs something, so a missing cost series means a misnamed
            # metric, and "no data" (inconclusive) is safer than reading it as free.
            return _Recipe(requests, _Increase(_metric(metrics.cost_counter)))
        if not math.isfinite(price) or price < 0:
            raise TemplateError(f"pricePerToken must be a finite non-negative number, got {price!r}")
        return _Recipe(requests, _tokens(metrics), factor=price)
    if template is Template.TOKENS_PER_REQUEST:
        return _Recipe(requests, _tokens(metrics))
    if template is Template.EVAL_ACCURACY:
        # Zero correct answers must read as accuracy 0 (a failing gate), not as "no data".
        correct = _Increase(_metric(metrics.eval_correct_counter))
        return _Recipe(_Increase(_metric(metrics.eval_total_counter)), correct, sparse=True)
    if template is Template.SHADOW_AGREEMENT:
        return _agreement(_metric(metrics.shadow_counter))
    raise TemplateError(f"unknown template {template!r}")


def _agreement(counter: str) -> _Recipe:
    """match / (match + mismatch) of one of the comparator's counters; 0 matches is agreement 0."""
    compared = _Increase(counter, f'{OUTCOME_LABEL}=~"match|mismatch"')
    return _Recipe(compared, _Increase(counter, f'{OUTCOME_LABEL}="match"'), sparse=True)


class _Selectors:
    """PromQL fragments for one side of the rollout."""

    def __init__(self, metrics: MetricNames, version: str, namespace: str, window: str) -> None:
        self.w = _window(window)
        self.sel = (
            f'{_label(metrics.version_label)}="{promql_escape(version)}",'
            f'{_label(metrics.namespace_label)}="{promql_escape(namespace)}"'
        )

    def increase(self, counter: _Increase) -> str:
        labels = f"{self.sel},{counter.matcher}" if counter.matcher else self.sel
        return f"sum(increase({counter.metric}{{{labels}}}[{self.w}]))"


def template_queries(
    template: Template,
    metrics: MetricNames,
    *,
    version: str,
    namespace: str,
    window: str,
    quantile: float = 0.95,
) -> GateQueries:
    """Value and sample-count PromQL of a built-in template for one version over `window`: what the
    batched read computes for that version, as one query a human can paste into Prometheus."""
    recipe = _recipe(template, metrics, quantile)
    s = _Selectors(metrics, version, namespace, window)
    samples = s.increase(recipe.denominator)
    if recipe.numerator is None:
        buckets = f"{metrics.duration_histogram}_bucket{{{s.sel}}}[{s.w}]"
        return GateQueries(f"histogram_quantile({quantile!r}, sum by (le) (rate({buckets})))", samples)
    numerator = s.increase(recipe.numerator)
    if recipe.sparse:
        numerator = f"({numerator} or vector(0))"
    if recipe.factor is not None:
        numerator = f"{numerator} * {recipe.factor!r}"
    return GateQueries(f"{numerator} / {samples}", samples)


# Where a focused read's label matchers go in Block.pattern: a character no PromQL text holds.
FOCUS = "\x00"
# RE2 metacharacters: a label value inside a regex matcher is escaped to match only itself.
_REGEX_SPECIAL = frozenset("\\.+*?()|[]{}^$")

Pair = tuple[str, str]  # (namespace, version)
BlockValues = Mapping[Pair, float]  # (namespace, version) -> value
Measured = tuple[float | None, float | None]  # (value, samples) of one version


def regex_literal(text: str) -> str:
    """`text` as an RE2 regex that matches exactly it (Prometheus anchors label regexes)."""
    return "".join("\\" + ch if ch in _REGEX_SPECIAL else ch for ch in text)


@dataclass(frozen=True)
class Block:
    """A building-block instant vector with one series per (namespace, version) Prometheus knows.

    The query text holds everything that tells two blocks apart (metric names, label names, window,
    quantile), so equal blocks are one query, whichever rollouts need them. `pattern` is the same
    query with FOCUS where each selector's matchers end: `focused` narrows it to some rollouts."""

    promql: str
    namespace_label: str
    version_label: str
    pattern: str = field(default="", compare=False)

    def focused(self, keys: Iterable[Pair]) -> str:
        """The block's query for only these (namespace, version) pairs, give or take: the series of
        every namespace and version named, a superset of the pairs that each reader picks from. A
        window shorter than the gate's (a young step's) is needed by the few rollouts whose step is
        that young, and over the whole fleet one such block cost Prometheus as much as the full one:
        at 10,000 rollouts, 1.1 s for a counter and 3 s for the latency histogram, one per window."""
        if not self.pattern:
            return self.promql
        pairs = set(keys)
        # Each name once: 100 rollouts of a namespace named it 100 times in the regex Prometheus
        # parses and matches every series' label against (seen in the query log at 10,000 rollouts).
        namespaces = "|".join(sorted({regex_literal(ns) for ns, _ in pairs}))
        versions = "|".join(sorted({regex_literal(v) for _, v in pairs}))
        matchers = (
            f'{self.namespace_label}=~"{promql_escape(namespaces)}",'
            f'{self.version_label}=~"{promql_escape(versions)}"'
        )
        return self.pattern.replace(FOCUS, matchers)


@dataclass(frozen=True)
class TemplateRead:
    """A template's value and samples for any (namespace, version), computed from building blocks with
    the semantics of its per-rollout PromQL (`template_queries`)."""

    samples: Block
    value: Block  # the numerator, or the value itself when there is no denominator (latency quantile)
    denominator: Block | None = None
    sparse: bool = False
    factor: float | None = None

    @property
    def blocks(self) -> tuple[Block, ...]:
        return tuple(dict.fromkeys(b for b in (self.value, self.denominator, self.samples) if b))

    def measure(self, vectors: Mapping[Block, BlockValues], namespace: str, version: str) -> Measured:
        """(value, samples) for one version; None where the per-rollout query has no finite answer."""
        return self.measurer(vectors)((namespace, version))

    def measurer(self, vectors: Mapping[Block, BlockValues]) -> Callable[[Pair], Measured]:
        """`measure` with the blocks looked up once: what the fast check calls for 10,000 versions."""
        samples_of, value_of = vectors[self.samples].get, vectors[self.value].get
        if self.denominator is None:
            return lambda key: (value_of(key), samples_of(key))
        denominator_of, sparse, factor = vectors[self.denominator].get, self.sparse, self.factor

        def measure(key: Pair) -> Measured:
            value = value_of(key)
            if value is None and sparse:
                value = 0.0  # `or vector(0)`
            denominator = denominator_of(key)
            if value is None or not denominator:
                return None, samples_of(key)  # an empty result, or x/0: NaN or Inf in PromQL, no data
            if factor is not None:
                value *= factor
            return value / denominator, samples_of(key)

        return measure


# What a template's blocks depend on: every metric name but the per-rollout version overrides.
_READ_NAMES = tuple(n for n in MetricNames.model_fields if n not in ("legacy_version", "candidate_version"))


def template_read(
    template: Template, metrics: MetricNames, *, window: str, quantile: float = 0.95
) -> TemplateRead:
    """The building blocks a template reads, grouped by namespace and version across all rollouts.
    Memoized: every rollout asks for the same few at every reconcile."""
    return _template_read(template, tuple(getattr(metrics, n) for n in _READ_NAMES), window, quantile)


def noise_floor_read(metrics: MetricNames, *, window: str) -> TemplateRead:
    """shadowAgreement's legacy side: legacy-vs-legacy agreement from the comparator's noise counter,
    labelled with the candidate's version (one comparator compares one pair)."""
    return _noise_floor_read(tuple(getattr(metrics, n) for n in _READ_NAMES), window)


@functools.lru_cache(maxsize=256)
def _noise_floor_read(names: tuple[Any, ...], window: str) -> TemplateRead:
    metrics = MetricNames.model_construct(**dict(zip(_READ_NAMES, names, strict=True)))
    return _read(_agreement(_metric(metrics.shadow_noise_counter)), metrics, window, 0.95)


def shadow_pairs_query(spec: AgentRolloutSpec, namespace: str, seconds: int) -> str:
    """Compared pairs (match + mismatch) the comparator counted in the last `seconds` (minRequests)."""
    if seconds < 1:
        raise TemplateError(f"window must be at least 1s, got {seconds!r}")
    metrics = spec.analysis.metrics if spec.analysis else MetricNames()
    _, candidate = version_values(spec)
    recipe = _agreement(_metric(metrics.shadow_counter))
    return _Selectors(metrics, candidate, namespace, f"{int(seconds)}s").increase(recipe.denominator)


@functools.lru_cache(maxsize=1024)
def _template_read(template: Template, names: tuple[Any, ...], window: str, quantile: float) -> TemplateRead:
    metrics = MetricNames.model_construct(**dict(zip(_READ_NAMES, names, strict=True)))
    return _read(_recipe(template, metrics, quantile), metrics, window, quantile)


def _read(recipe: _Recipe, metrics: MetricNames, window: str, quantile: float) -> TemplateRead:
    ns, ver = _label(metrics.namespace_label), _label(metrics.version_label)
    w = _seconds_or_millis(_millis(window))  # one spelling: 2m and 120s are one block

    def rendered(query: str) -> Block:
        plain = query.replace("{" + FOCUS + "}", "").replace("," + FOCUS, "")
        return Block(plain, ns, ver, query)

    def block(counter: _Increase) -> Block:
        matchers = f"{{{counter.matcher},{FOCUS}}}" if counter.matcher else f"{{{FOCUS}}}"
        return rendered(f"sum by ({ns}, {ver}) (increase({counter.metric}{matchers}[{w}]))")

    samples = block(recipe.denominator)
    if recipe.numerator is None:
        rate = f"rate({metrics.duration_histogram}_bucket{{{FOCUS}}}[{w}])"
        by_version = f"sum by (le, {ns}, {ver}) ({rate})"
        return TemplateRead(samples, rendered(f"histogram_quantile({quantile!r}, {by_version})"))
    return TemplateRead(samples, block(recipe.numerator), samples, recipe.sparse, recipe.factor)


BUCKET_BOUND_LABEL = "le"


def bucket_bounds_block(metrics: MetricNames) -> Block:
    """How many series the duration histogram has at each bucket bound, keyed by (le, le): which
    bucket a latency bound can be read from (bucket_under). An instant vector: no range, no rate."""
    bucket = f"{_metric(metrics.duration_histogram)}_bucket"
    return Block(f"count by ({BUCKET_BOUND_LABEL}) ({bucket})", BUCKET_BOUND_LABEL, BUCKET_BOUND_LABEL)


def _bound(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def bucket_under(bounds: BlockValues, limit: float) -> tuple[str, ...] | None:
    """The spellings of the highest bucket bound at or under `limit` that every histogram has (as
    many series as the +Inf bucket: a version without it would have no share to read), or None.
    Spellings, because Prometheus 2 stores `le` as exported ("1") and Prometheus 3 as a float ("1.0")."""
    series: dict[float, float] = {}
    spellings: dict[float, list[str]] = {}
    for (text, _), count in bounds.items():
        value = _bound(text)
        if value is None or math.isnan(value):
            continue
        series[value] = series.get(value, 0.0) + count
        spellings.setdefault(value, []).append(text)
    every = series.get(math.inf)
    under = [v for v, n in series.items() if v <= limit and n == every and math.isfinite(v)]
    return tuple(sorted(spellings[max(under)])) if every and under else None


# How far over the quantile a bucket's share may be and still make a suspect: Prometheus compares the
# bucket's count with quantile x total, and a share equal to the quantile within rounding is not ruled
# out (a confirmation the exact quantile answers).
SHARE_TOLERANCE = 1e-9


def quantile_bucket_read(
    metrics: MetricNames, *, window: str, spellings: tuple[str, ...], quantile: float
) -> TemplateRead:
    """Each version's shortfall at one bucket bound over the window (value) and its requests
    (samples): how many requests the bucket at or under the bound lacks to hold the quantile's share,
    (quantile x total) - count. A latency quantile is above that bound only where the shortfall is
    positive (histogram_quantile finds the first bucket whose cumulative count reaches quantile x
    total), and the block holds only those versions: absent means ruled out, so at 10,000 rollouts the
    answer is a few series rather than 20,000, and a version without the bucket (only +Inf) is in it
    with its whole quantile x total. One selector of two buckets (the bound's and +Inf) weighted by
    `le`, so the count and the total are one query's, never asked at different moments, and each is
    selected once (PromQL does not share a subexpression: an `or` for the missing bucket would select
    them twice). A quarter of the series the quantile reads over every bucket."""
    names = tuple(getattr(metrics, n) for n in _READ_NAMES)
    return _quantile_bucket_read(names, window, spellings, quantile)


@functools.lru_cache(maxsize=256)
def _quantile_bucket_read(
    names: tuple[Any, ...], window: str, spellings: tuple[str, ...], quantile: float
) -> TemplateRead:
    metrics = MetricNames.model_construct(**dict(zip(_READ_NAMES, names, strict=True)))
    every = "+Inf"
    alternatives = "|".join(regex_literal(text) for text in (*spellings, every))
    le = BUCKET_BOUND_LABEL
    ns, ver = _label(metrics.namespace_label), _label(metrics.version_label)
    w = _seconds_or_millis(_millis(window))
    bucket = f"{_metric(metrics.duration_histogram)}_bucket"

    def weight(value: float, bound: str) -> str:
        return f'label_replace(vector({value!r}), "{le}", "{promql_escape(bound)}", "", "")'

    # The +Inf bucket counts quantile x total, the bound's bucket minus its count.
    weights = " or ".join([weight(quantile + SHARE_TOLERANCE, every), *(weight(-1.0, s) for s in spellings)])
    selected = f'increase({bucket}{{{le}=~"{promql_escape(alternatives)}",{FOCUS}}}[{w}])'
    shortfall = f"sum by ({ns}, {ver}) ({selected} * on ({le}) group_left () ({weights})) > 0"
    plain = shortfall.replace("," + FOCUS, "")
    samples = _read(_Recipe(_requests(metrics)), metrics, window, 0.95).samples
    return TemplateRead(samples, Block(plain, ns, ver, shortfall))


def _check_braces(query: str) -> None:
    """A `{{` that does not open a well-formed {{name}} (e.g. `{{version}`) would reach Prometheus as
    text and fail every evaluation; PromQL itself never has `{{` outside a string."""
    variables = {m.start() for m in _VARIABLE.finditer(query)}
    for opening in re.finditer(r"\{\{", query):
        if opening.start() not in variables:
            at = opening.start()
            raise TemplateError(
                f"{{{{ at character {at + 1} opens no variable ({query[at : at + 20]!r}): "
                "write variables as {{name}}"
            )


def render_variables(query: str, variables: dict[str, str]) -> str:
    """Substitute {{name}} in one pass, so substituted text is never expanded again."""
    _check_braces(query)

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
    return _Selectors(metrics, candidate, namespace, f"{int(seconds)}s").increase(_requests(metrics))


def query_variables(query: str) -> list[str]:
    """The {{variables}} a custom query uses, in order of appearance."""
    return _VARIABLE.findall(query)
