"""The rollout report from a finished rollout's object: content, plots and no network references."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Any

from agent_rollout import api, report
from agent_rollout.api import AgentRolloutSpec
from agent_rollout.readiness import scorecard
from tests.specs import analysis_dict, spec_dict

NOW = datetime(2026, 3, 1, 13, 0, tzinfo=UTC)
GATE = {"name": "error-rate", "template": "errorRate", "max": 0.01}


def finished() -> dict[str, Any]:
    raw = spec_dict(steps=[{"setWeight": 10}, {"setWeight": 100}], analysis=analysis_dict(GATE))
    card = scorecard(AgentRolloutSpec.model_validate(raw), [])
    history = [
        ("2026-03-01T12:00:00Z", "Started", 0, 10),
        ("2026-03-01T12:05:00Z", "ManualPromotion", 1, 100),
        ("2026-03-01T12:05:00Z", "Promoted", 2, 100),
    ]
    return {
        "metadata": {"namespace": "support", "name": "triage"},
        "spec": raw,
        "status": {
            "phase": "Promoted",
            "message": "promoted: candidate triage-agent serves all traffic",
            "candidateRevision": "agent-1",
            "history": [
                {
                    "time": t,
                    "reason": r,
                    "message": f"{r} <b>",
                    "step": s,
                    "weights": {"legacy": 100 - c, "candidate": c},
                }
                for t, r, s, c in history
            ],
            "readiness": api.dump(card),
            "baseline": {
                "revision": "agent-1",
                "recordedAt": "2026-03-01T12:05:30Z",
                "windowSeconds": 330,
                "metrics": [
                    {"name": "costPerTransaction", "candidate": 0.02, "legacy": 0.03, "change": -0.2}
                ],
            },
        },
    }


def series(points: list[tuple[float, float]]) -> list[report.GateSeries]:
    (gate,) = report.gate_series(finished())
    assert "increase(" in gate.query
    return [report.GateSeries(gate.name, gate.bound, gate.minimum, gate.maximum, gate.query, points)]


def test_html_report_is_self_contained_with_scorecard_timeline_plots_and_baseline() -> None:
    t0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC).timestamp()
    built = report.build(finished(), series([(t0 + 60, 0.002), (t0 + 120, 0.004)]), NOW)
    text = report.render_html(built)
    assert text.count("<svg") == 2  # the candidate weight and the error-rate gate
    assert 'stroke="#c00"' in text  # the gate's bound, max 0.01, drawn
    assert text.count('stroke-dasharray="2,3"') == 2 * 3  # three decisions marked on each plot
    assert "ManualPromotion" in text and "human (status.promote)" in text
    assert "Started &lt;b&gt;" in text  # texts are escaped
    assert "pilot/accuracy" in text and "NotMeasured" in text and "costPerTransaction" in text
    assert "-20.0%" in text
    # Nothing to fetch: no scripts, stylesheets, images or links to anywhere.
    assert not re.search(r"<(script|link|img|iframe)\b|\bsrc=|\bhref=|url\(", text)
    assert set(re.findall(r"https?://[^\s\"'<]+", text)) <= {"http://www.w3.org/2000/svg"}


def test_markdown_and_json_reports_carry_the_same_content() -> None:
    built = report.build(finished(), series([]), NOW)
    md = report.render_markdown(built)
    assert md.startswith("# Rollout report: support/triage")
    assert md.count("data:image/svg+xml;base64,") == 2
    assert "| Deploy | NotMeasured | deploy/first-transactions | NotMeasured |" in md
    parsed = json.loads(report.render_json(built))
    assert [e["reason"] for e in parsed["timeline"]] == ["Started", "ManualPromotion", "Promoted"]
    assert parsed["weight"][0][1] == 10 and parsed["gates"][0]["max"] == 0.01
    assert parsed["baseline"]["windowSeconds"] == 330


def test_a_gate_that_could_not_be_read_is_said_not_plotted() -> None:
    (gate,) = series([])
    failed = report.GateSeries(gate.name, gate.bound, None, 0.01, gate.query, error="Prometheus unreachable")
    text = report.render_html(report.build(finished(), [failed], NOW))
    assert text.count("<svg") == 1 and "Gate error-rate: no plot (Prometheus unreachable)." in text
