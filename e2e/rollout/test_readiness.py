"""The readiness scorecard end to end: the real operator process, apiserver and Prometheus.

A step's milestone holds it until the candidate has served its first N transactions, then records the
gates over exactly that window in status.readiness as the Deploy stage's evidence; a required stage
that is not Met (Harden: its drill and alerts have no step to measure them yet) holds the raise above
its `before`, with the StagesReady condition, one StageRequired Event, and the plugin's one line.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

from e2e.cluster import ClusterState
from e2e.rollout.scene import CANDIDATE, LEGACY, Scene, wait_until
from e2e.rollout.test_verbs_and_volume import ERROR_GATE, PLUGIN, TOLERANCE, plugin, run_plugin

N = 60


def _condition(status: dict[str, Any], type_: str) -> dict[str, Any] | None:
    return next((c for c in status.get("conditions", []) if c["type"] == type_), None)


def test_a_milestone_records_deploy_evidence_and_a_required_stage_holds_the_raise(
    scene: Callable[..., Scene], cluster: ClusterState
) -> None:
    # 20 requests/s, a fifth to the candidate at weight 20: N=60 take ~15 s.
    s = scene(rps=20)
    steps: list[dict[str, Any]] = [{"setWeight": 20, "milestone": {"transactions": N}}, {"setWeight": 50}]
    manifest = s.rollout_manifest("ready", steps=steps, minSamples=10, gates=[ERROR_GATE])
    manifest["spec"]["readiness"] = {"requireStages": [{"stage": "Harden", "before": 25}]}
    s.apply(manifest)

    def step_began() -> dict[str, Any] | None:
        status = s.status("ready")
        return status if status.get("stepStartedAt") and status.get("phase") == "Progressing" else None

    began = wait_until("step 1 began", step_began, 60)
    served_at_start = int(s.agents[CANDIDATE].stats()["requests"])
    waiting = wait_until(
        "the milestone holds step 1",
        lambda: "waiting for milestone: candidate requests" in s.status("ready").get("message", ""),
        60,
    )
    assert waiting

    def recorded() -> dict[str, Any] | None:
        status = s.status("ready")
        milestones = (status.get("readiness") or {}).get("milestones") or []
        return status if milestones else None

    status = wait_until("the milestone is recorded", recorded, 90)
    served = int(s.agents[CANDIDATE].stats()["requests"])
    (record,) = status["readiness"]["milestones"]
    assert (record["step"], record["transactions"], record["score"]) == (0, N, "Met"), record
    assert record["windowStart"] == began["stepStartedAt"]
    # What the operator counted over the window against what the candidate served since the step began
    # (the status was read before the counter, so the counter is no lower than at the record).
    assert N <= record["requests"] <= served - served_at_start + TOLERANCE, (record, served, served_at_start)
    assert record["windowSeconds"] >= 1 and record["errorRate"] is not None
    assert [(g["name"], g["verdict"]) for g in record["gates"]] == [("error-rate", "Pass")]
    deploy = next(x for x in status["readiness"]["stages"] if x["stage"] == "Deploy")
    first = deploy["criteria"][0]
    assert (first["name"], first["score"], first["samples"]) == (
        "deploy/first-transactions",
        "Met",
        record["requests"],
    )
    assert first["at"] == record["recordedAt"] and first["source"].startswith("milestone of step 1")
    assert deploy["score"] == "NotMeasured"  # an answered alert has no step to measure it yet
    harden = next(x for x in status["readiness"]["stages"] if x["stage"] == "Harden")
    assert harden["score"] == "NotMeasured"

    # The raise to 50 exceeds Harden's before 25: held, said in the condition, the message and one Event.
    def held() -> dict[str, Any] | None:
        status = s.status("ready")
        ready = _condition(status, "StagesReady")
        if ready is None or ready["status"] != "False" or "holding:" not in status.get("message", ""):
            return None
        return status

    status = wait_until("the raise to 50 is held", held, 60)
    assert status["currentStep"] == 0 and status["phase"] == "Progressing"
    assert "stage Harden must be Met before the candidate weight exceeds 25" in status["message"]
    assert "next: harden/alerts NotMeasured" in status["message"]
    card = status["readiness"]
    analysed_at = status.get("lastAnalysisAt")

    # Another evaluation (5 s interval): still held, still one Event, and the scorecard unchanged while
    # the analysis moved on (nothing in it moves with the clock: it costs no status write of its own).
    def evaluated_again() -> dict[str, Any] | None:
        status = s.status("ready")
        return status if status.get("lastAnalysisAt") not in (None, analysed_at) else None

    later = wait_until("another evaluation", evaluated_again, 30)
    assert later["readiness"] == card
    assert later["currentStep"] == 0 and s.route_weights() == {LEGACY: 80, CANDIDATE: 20}
    reasons = s.event_reasons("ready")
    assert reasons.count("MilestoneRecorded") == 1 and reasons.count("StageRequired") == 1, reasons
    history = [d["reason"] for d in later["history"]]
    assert history == ["Started", "MilestoneRecorded", "StageRequired"], history

    out = plugin(cluster, "status", "ready", s.namespace)
    line = next(x for x in out.splitlines() if "stage=" in x)
    assert line.strip().startswith("stage=Pilot  next: pilot/accuracy NotMeasured"), out
    print(
        f"\nmilestone: {record['requests']} requests over {record['windowSeconds']}s, error rate "
        f"{record['errorRate']}; held: {status['message']}\n{line.strip()}"
    )


def report(cluster: ClusterState, s: Scene, name: str, output: str, out: Path) -> str:
    """`kubectl agentrollout report NAME -o OUTPUT --out FILE`, the real plugin as its own process."""
    env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
    args = [str(PLUGIN), "report", name, "-n", s.namespace, "--kubeconfig", str(cluster.kubeconfig)]
    args += ["-o", output, "--out", str(out), "--prometheus", s.prometheus_url]
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert str(out) in done.stdout
    return out.read_text()


def test_a_promoted_revision_records_its_baseline_against_legacy(
    scene: Callable[..., Scene], cluster: ClusterState, tmp_path: Path
) -> None:
    s = scene(rps=20)
    steps: list[dict[str, Any]] = [{"setWeight": 50}, {"pause": {"duration": "10s"}}, {"setWeight": 100}]
    s.apply(s.rollout_manifest("base", steps=steps, minSamples=10, gates=[ERROR_GATE]))
    s.wait_for_phase("base", "Promoted", timeout_s=120)

    def recorded() -> dict[str, Any] | None:
        status = s.status("base")
        return status if status.get("baseline") else None

    status = wait_until("a baseline", recorded, 60)
    baseline = status["baseline"]
    assert baseline["revision"] == status["candidateRevision"] and baseline["windowSeconds"] >= 10
    metrics = {m["name"]: m for m in baseline["metrics"]}
    errors, throughput = metrics["errorRate"], metrics["throughput"]
    # Both served in the window: sample counts on both sides, and their requests per second.
    assert errors["candidateSamples"] > 0 and errors["legacySamples"] > 0, errors
    assert errors["candidate"] is not None and errors["legacy"] is not None
    assert throughput["candidate"] == errors["candidateSamples"] / baseline["windowSeconds"]
    assert 0 < throughput["legacy"] < throughput["candidate"], throughput
    optimize = next(x for x in status["readiness"]["stages"] if x["stage"] == "Optimize")
    assert optimize["score"] == "Met" and optimize["criteria"][0]["at"] == baseline["recordedAt"]
    print(
        f"\nbaseline over {baseline['windowSeconds']}s: "
        + ", ".join(f"{m['name']} {m.get('candidate')}/{m.get('legacy')}" for m in baseline["metrics"])
    )

    # The report of this finished rollout: scorecard, timeline, plots from Prometheus range queries
    # and the baseline, in one file that needs no network.
    page = report(cluster, s, "base", "html", tmp_path / "base.html")
    assert page.count("<svg") == 2, "the candidate weight and the error-rate gate"
    assert "Gate error-rate: no plot" not in page
    assert "optimize/baseline" in page and "throughput" in page and "Promoted" in page
    assert not re.search(r"<(script|link|img|iframe)\b|\bsrc=|\bhref=", page)
    data = json.loads(report(cluster, s, "base", "json", tmp_path / "base.json"))
    (gate,) = data["gates"]
    assert gate["error"] is None and len(gate["points"]) >= 5, gate
    assert all(0 <= v <= 0.05 for _, v in gate["points"])  # a healthy candidate, under its bound
    assert [e["reason"] for e in data["timeline"]][-1] == "Promoted"
    assert data["baseline"] == baseline
    print(f"report: {tmp_path / 'base.html'} ({len(page)} bytes, {len(gate['points'])} points of error-rate)")


def test_a_baseline_is_recorded_on_demand_mid_rollout_and_refused_once_rolled_back(
    scene: Callable[..., Scene], cluster: ClusterState
) -> None:
    s = scene(rps=20)
    # An approval step holds the candidate at 50%: both versions serve while we ask for a baseline.
    steps: list[dict[str, Any]] = [{"setWeight": 50}, {"pause": {}}, {"setWeight": 100}]
    s.apply(s.rollout_manifest("ondemand", steps=steps, minSamples=10, gates=[ERROR_GATE]))
    s.wait_for_phase("ondemand", "Paused", timeout_s=120)
    assert s.status("ondemand").get("baseline") is None  # nothing is recorded before a promotion

    said = plugin(cluster, "baseline", "ondemand", s.namespace)
    assert "baseline requested: candidate revision" in said, said

    def recorded() -> dict[str, Any] | None:
        status = s.status("ondemand")
        return status if status.get("baseline") and not status.get("recordBaseline") else None

    status = wait_until("a baseline on demand", recorded, 60)
    baseline = status["baseline"]
    assert (baseline["revision"], baseline["phase"], baseline["onDemand"]) == (
        status["candidateRevision"],
        "Paused",
        True,
    )
    metrics = {m["name"]: m for m in baseline["metrics"]}
    errors, throughput = metrics["errorRate"], metrics["throughput"]
    assert errors["candidateSamples"] > 0 and errors["legacySamples"] > 0, errors
    assert throughput["candidate"] > 0 and throughput["legacy"] > 0, throughput
    assert status["phase"] == "Paused" and status["weights"]["candidate"] == 50  # evidence, not a move
    assert status["history"][-1]["reason"] == "BaselineRecorded"
    wait_until("a BaselineRecorded Event", lambda: "BaselineRecorded" in s.event_reasons("ondemand"), 30)
    print(
        f"\non-demand baseline over {baseline['windowSeconds']}s: "
        + ", ".join(f"{m['name']} {m.get('candidate')}/{m.get('legacy')}" for m in baseline["metrics"])
    )

    plugin(cluster, "abort", "ondemand", s.namespace)
    s.wait_for_phase("ondemand", "RolledBack", timeout_s=60)
    # The plugin refuses where the operator would, and says why.
    refused = run_plugin(cluster, "baseline", "ondemand", s.namespace)
    assert refused.returncode == 1 and "it is RolledBack" in refused.stderr, refused
    # The plain patch (the status policy lets it through like the other verbs): consumed and refused.
    patch = '{"status":{"recordBaseline":true}}'
    s.kubectl(
        "patch",
        "agentrollout",
        "ondemand",
        "-n",
        s.namespace,
        "--subresource=status",
        "--type=merge",
        "-p",
        patch,
    )

    def refused_by_operator() -> dict[str, Any] | None:
        status = s.status("ondemand")
        last = status["history"][-1]
        return status if last["reason"] == "BaselineRefused" and not status.get("recordBaseline") else None

    status = wait_until("the operator refuses the baseline", refused_by_operator, 60)
    assert "it is RolledBack" in status["history"][-1]["message"]
    assert status["baseline"] == baseline  # the refused request recorded nothing
    wait_until("a BaselineRefused Event", lambda: "BaselineRefused" in s.event_reasons("ondemand"), 30)
