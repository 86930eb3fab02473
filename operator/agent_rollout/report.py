"""The rollout report: scorecard, timeline of decisions, plots and baseline, as JSON, Markdown or HTML.

Pure: `build(obj, gate_series, now)` turns an AgentRollout object and the gates' values over time
(fetched by the CLI with Prometheus range queries) into one JSON-able dict, and the renderers turn
that into text. Plots are inline SVG drawn here, so the report needs no plotting library and the
HTML opens in a browser with no network access.
"""

from __future__ import annotations

import base64
import html
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from agent_rollout import api

# Decisions a human's verb caused; every other decision is the operator's own.
HUMAN_REASONS = {"ManualPromotion": "human (status.promote)", "Aborted": "human (status.abort)"}
HUMAN_REASONS["Retried"] = "human (status.retry)"


@dataclass(frozen=True)
class GateSeries:
    """One gate's candidate value over time, or why it could not be read."""

    name: str
    bound: str
    minimum: float | None
    maximum: float | None
    query: str
    points: list[tuple[float, float]] = field(default_factory=list)  # (unix seconds, value)
    error: str | None = None


def _seconds(text: str | None) -> float | None:
    if not text:
        return None
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp()


def time_range(obj: dict[str, Any], now: datetime) -> tuple[float, float]:
    """From a little before the first decision to a little after the last (or now, while it runs)."""
    status = obj.get("status") or {}
    times = [t for t in (_seconds(d.get("time")) for d in status.get("history", [])) if t is not None]
    started = _seconds(status.get("attemptStartedAt"))
    start = min([*times, *([started] if started else [])], default=now.timestamp() - 600)
    finished = status.get("phase") in ("Promoted", "RolledBack", "Failed")
    end = max(times, default=start) + 60 if finished and times else now.timestamp()
    return start - 30, max(end, start + 60)


def build(obj: dict[str, Any], gates: list[GateSeries], now: datetime) -> dict[str, Any]:
    meta, status = obj.get("metadata") or {}, obj.get("status") or {}
    timeline = []
    weight: list[tuple[float, int]] = []
    for d in status.get("history", []):
        at = _seconds(d.get("time"))
        candidate = int((d.get("weights") or {}).get("candidate", 0))
        timeline.append(
            {
                "time": d.get("time"),
                "reason": d.get("reason"),
                "actor": HUMAN_REASONS.get(str(d.get("reason")), "operator"),
                "step": int(d.get("step", 0)) + 1,
                "candidateWeight": candidate,
                "message": d.get("message", ""),
            }
        )
        if at is not None:
            weight.append((at, candidate))
    start, end = time_range(obj, now)
    return {
        "rollout": f"{meta.get('namespace')}/{meta.get('name')}",
        "generatedAt": now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "phase": status.get("phase", "Pending"),
        "message": status.get("message", ""),
        "candidateRevision": status.get("candidateRevision"),
        "window": {"start": start, "end": end},
        "readiness": status.get("readiness"),
        "timeline": timeline,
        "weight": [[t, w] for t, w in weight],
        "gates": [
            {
                "name": g.name,
                "bound": g.bound,
                "min": g.minimum,
                "max": g.maximum,
                "query": g.query,
                "points": [[t, v] for t, v in g.points],
                "error": g.error,
            }
            for g in gates
        ],
        "baseline": status.get("baseline"),
    }


def render_json(report: dict[str, Any]) -> str:
    return json.dumps(report, indent=2, sort_keys=True) + "\n"


# ---------------------------------------------------------------- plots


def _clock(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%H:%M:%S")


def svg_plot(
    title: str,
    lines: list[tuple[str, list[tuple[float, float]]]],
    x_range: tuple[float, float],
    bounds: list[tuple[str, float]] | None = None,
    marks: list[tuple[float, str]] | None = None,
    steps: bool = False,
) -> str:
    """A line plot as inline SVG: each line, each bound as a red dashed line, each decision marked."""
    bounds, marks = bounds or [], marks or []
    width, height, left, right, top, bottom = 760, 240, 60, 16, 28, 30
    x0, x1 = x_range
    values = [v for _, pts in lines for _, v in pts] + [b for _, b in bounds]
    y0, y1 = min([0.0, *values]), max([*values, 0.0])
    y1 = y1 * 1.1 if y1 > 0 else 1.0
    span_x, span_y = max(x1 - x0, 1e-9), max(y1 - y0, 1e-12)

    def sx(t: float) -> float:
        return left + (min(max(t, x0), x1) - x0) / span_x * (width - left - right)

    def sy(v: float) -> float:
        return top + (1 - (v - y0) / span_y) * (height - top - bottom)

    e = html.escape
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="{e(title)}">',
        f'<text x="{left}" y="18" font-size="13" font-family="sans-serif">{e(title)}</text>',
        f'<rect x="{left}" y="{top}" width="{width - left - right}" height="{height - top - bottom}" '
        'fill="none" stroke="#999"/>',
        f'<text x="{left - 4}" y="{sy(y1) + 4:.1f}" font-size="10" text-anchor="end">{y1:.4g}</text>',
        f'<text x="{left - 4}" y="{sy(y0) + 4:.1f}" font-size="10" text-anchor="end">{y0:.4g}</text>',
        f'<text x="{left}" y="{height - 10}" font-size="10">{_clock(x0)}</text>',
        f'<text x="{width - right}" y="{height - 10}" font-size="10" '
        f'text-anchor="end">{_clock(x1)} UTC</text>',
    ]
    for t, label in marks:
        x = sx(t)
        parts.append(
            f'<line x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{height - bottom}" stroke="#888" '
            f'stroke-dasharray="2,3"><title>{e(_clock(t))} {e(label)}</title></line>'
        )
    for label, bound in bounds:
        y = sy(bound)
        parts.append(
            f'<line x1="{left}" y1="{y:.1f}" x2="{width - right}" y2="{y:.1f}" stroke="#c00" '
            f'stroke-dasharray="6,4"><title>{e(label)}</title></line>'
        )
    colours = ["#1f6fb4", "#e08a00", "#2a9d3a", "#8e44ad"]
    for i, (label, pts) in enumerate(lines):
        drawn = sorted(pts)
        if steps and drawn:
            stepped = []
            for j, (t, v) in enumerate(drawn):
                if j:
                    stepped.append((t, drawn[j - 1][1]))
                stepped.append((t, v))
            stepped.append((x1, drawn[-1][1]))
            drawn = stepped
        if not drawn:
            continue
        coords = " ".join(f"{sx(t):.1f},{sy(v):.1f}" for t, v in drawn)
        parts.append(
            f'<polyline points="{coords}" fill="none" stroke="{colours[i % len(colours)]}" '
            f'stroke-width="1.8"><title>{e(label)}</title></polyline>'
        )
    parts.append("</svg>")
    return "".join(parts)


def plots(report: dict[str, Any]) -> list[tuple[str, str]]:
    """(title, svg) of the candidate weight and of every gate against its bound, decisions marked."""
    window = (report["window"]["start"], report["window"]["end"])
    marks = [
        (t, e["reason"])
        for t, e in zip((_seconds(x["time"]) for x in report["timeline"]), report["timeline"], strict=True)
        if t is not None
    ]
    weight = [(float(t), float(w)) for t, w in report["weight"]]
    out = [
        (
            "candidate weight (%)",
            svg_plot("candidate weight (%)", [("candidate weight", weight)], window, marks=marks, steps=True),
        )
    ]
    for gate in report["gates"]:
        if gate["error"]:
            continue
        limits = (("min", gate["min"]), ("max", gate["max"]))
        bounds = [(f"{name} {value:g}", float(value)) for name, value in limits if value is not None]
        title = f"gate {gate['name']} (candidate) against {gate['bound'] or 'no fixed bound'}"
        points = [(float(t), float(v)) for t, v in gate["points"]]
        out.append((title, svg_plot(title, [(gate["name"], points)], window, bounds=bounds, marks=marks)))
    return out


# ---------------------------------------------------------------- text


def _number(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _scorecard_rows(report: dict[str, Any]) -> list[list[str]]:
    rows = []
    for stage in (report.get("readiness") or {}).get("stages", []):
        for c in stage.get("criteria", []) or [{"name": "(all waived)", "score": stage["score"]}]:
            evidence = ", ".join(
                x
                for x in (
                    f"value {_number(c.get('value'))}" if c.get("value") is not None else "",
                    f"bound {c['bound']}" if c.get("bound") else "",
                    f"samples {c['samples']}" if c.get("samples") is not None else "",
                    f"at {c['at']}" if c.get("at") else "",
                    c.get("source", ""),
                    c.get("message", ""),
                )
                if x
            )
            rows.append(
                [stage["stage"], stage["score"], c["name"], c["score"], c.get("requirement", ""), evidence]
            )
    return rows


def _baseline_rows(report: dict[str, Any]) -> list[list[str]]:
    baseline = report.get("baseline") or {}
    return [
        [
            m["name"],
            _number(m.get("candidate")),
            _number(m.get("legacy")),
            _number(m.get("candidateSamples")),
            _number(m.get("legacySamples")),
            _number(m.get("previous")),
            "-" if m.get("change") is None else f"{m['change']:+.1%}",
        ]
        for m in baseline.get("metrics", [])
    ]


SCORE_HEAD = ["stage", "stage score", "criterion", "score", "requirement", "evidence"]
TIMELINE_HEAD = ["time", "decision", "actor", "step", "candidate %", "message"]
BASELINE_HEAD = ["signal", "candidate", "legacy", "candidate samples", "legacy samples", "previous", "change"]


def _timeline_rows(report: dict[str, Any]) -> list[list[str]]:
    return [
        [e["time"], e["reason"], e["actor"], str(e["step"]), str(e["candidateWeight"]), e["message"]]
        for e in report["timeline"]
    ]


def _baseline_caption(report: dict[str, Any]) -> str:
    b = report.get("baseline")
    if not b:
        return (
            "No baseline recorded yet (one is recorded when a revision is promoted, "
            "or on demand: kubectl agentrollout baseline)."
        )
    previous = f"; previous baseline: revision {b['previousRevision']}" if b.get("previousRevision") else ""
    if b.get("onDemand") and b.get("phase") not in (None, "Promoted"):
        how = f"on demand in {b['phase']}: legacy and the candidate served side by side"
    else:
        how = "legacy served until the promotion, the candidate throughout"
    return (
        f"Revision {b.get('revision')}, recorded {b['recordedAt']} over the last {b['windowSeconds']}s "
        f"({how}){previous}."
    )


def _summary(report: dict[str, Any]) -> str:
    readiness = report.get("readiness") or {}
    stage = readiness.get("stage", "-")
    return (
        f"phase {report['phase']}, candidate revision {report.get('candidateRevision') or '-'}; "
        f"stage {stage}; next: {readiness.get('next') or '-'}"
    )


def render_markdown(report: dict[str, Any]) -> str:
    def table(head: list[str], rows: list[list[str]]) -> list[str]:
        cell = [[str(x).replace("|", "\\|").replace("\n", " ") for x in row] for row in rows]
        return [
            "| " + " | ".join(head) + " |",
            "|" + "---|" * len(head),
            *("| " + " | ".join(r) + " |" for r in cell),
        ]

    lines = [f"# Rollout report: {report['rollout']}", "", f"Generated {report['generatedAt']}.", ""]
    lines += [_summary(report), "", f"> {report['message']}", "", "## Readiness scorecard", ""]
    lines += table(SCORE_HEAD, _scorecard_rows(report))
    lines += ["", "## Timeline", "", *table(TIMELINE_HEAD, _timeline_rows(report))]
    lines += ["", "## Plots", ""]
    for title, svg in plots(report):
        data = base64.b64encode(svg.encode()).decode()
        lines += [f"![{title}](data:image/svg+xml;base64,{data})", ""]
    for gate in report["gates"]:
        if gate["error"]:
            lines += [f"Gate {gate['name']}: no plot ({gate['error']}).", ""]
    lines += ["## Baseline", "", _baseline_caption(report), "", *table(BASELINE_HEAD, _baseline_rows(report))]
    return "\n".join(lines) + "\n"


_STYLE = (
    "body{font-family:sans-serif;margin:2em;max-width:1100px;color:#222}"
    "table{border-collapse:collapse;margin:1em 0;font-size:13px}"
    "td,th{border:1px solid #ccc;padding:3px 6px;text-align:left;vertical-align:top}"
    "th{background:#f3f3f3}.Met{color:#176b2c}.NotMet{color:#b00}.NotMeasured{color:#777}"
    "figure{margin:1em 0}"
)


def render_html(report: dict[str, Any]) -> str:
    e = html.escape

    def table(head: list[str], rows: list[list[str]], scored: tuple[int, ...] = ()) -> str:
        out = ["<table><tr>", *(f"<th>{e(h)}</th>" for h in head), "</tr>"]
        for row in rows:
            cells = "".join(
                f'<td class="{e(c)}">{e(c)}</td>' if i in scored else f"<td>{e(c)}</td>"
                for i, c in enumerate(row)
            )
            out.append(f"<tr>{cells}</tr>")
        out.append("</table>")
        return "".join(out)

    body = [
        f"<h1>Rollout report: {e(report['rollout'])}</h1>",
        f"<p>Generated {e(report['generatedAt'])}. {e(_summary(report))}</p>",
        f"<blockquote>{e(report['message'])}</blockquote>",
        "<h2>Readiness scorecard</h2>",
        table(SCORE_HEAD, _scorecard_rows(report), scored=(1, 3)),
        "<h2>Timeline</h2>",
        table(TIMELINE_HEAD, _timeline_rows(report)),
        "<h2>Plots</h2>",
    ]
    for title, svg in plots(report):
        body.append(f"<figure>{svg}<figcaption>{e(title)}</figcaption></figure>")
    for gate in report["gates"]:
        if gate["error"]:
            body.append(f"<p>Gate {e(gate['name'])}: no plot ({e(gate['error'])}).</p>")
    body += [
        "<h2>Baseline</h2>",
        f"<p>{e(_baseline_caption(report))}</p>",
        table(BASELINE_HEAD, _baseline_rows(report)),
    ]
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>Rollout report: {e(report['rollout'])}</title><style>{_STYLE}</style></head><body>"
        + "\n".join(body)
        + "</body></html>\n"
    )


RENDERERS = {"json": render_json, "md": render_markdown, "html": render_html}


def gate_series(obj: dict[str, Any]) -> list[GateSeries]:
    """The spec's gates, each with the PromQL of its candidate value, for the range queries to fill."""
    from agent_rollout.analysis.gates import bound_text
    from agent_rollout.analysis.templates import TemplateError, gate_queries

    try:
        spec = api.parse_spec(obj.get("spec") or {})
    except ValueError:
        return []
    namespace = (obj.get("metadata") or {}).get("namespace", "default")
    found = []
    for gate in spec.analysis.gates if spec.analysis else []:
        try:
            query = gate_queries(gate, spec, namespace, "candidate").value
        except TemplateError as error:
            found.append(GateSeries(gate.name, bound_text(gate), gate.min, gate.max, "", error=str(error)))
            continue
        found.append(GateSeries(gate.name, bound_text(gate), gate.min, gate.max, query))
    return found
