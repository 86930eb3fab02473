"""Issue 4: agent gates on the real operator, apiserver and Prometheus, fed by simulated agents.

Low traffic waits instead of failing, a relative latency gate catches what an absolute bound misses, a
two-proportion test on flagged answers acts only once it has its samples, onInconclusive: pause hands the
step to a human, and a dry-run gate is recorded but never acts.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from e2e.cluster import ClusterState
from e2e.rollout.scene import CANDIDATE, LEGACY, REPO, Scene, wait_until

STEPS_WITH_A_LONG_PAUSE = [{"setWeight": 50}, {"pause": {"duration": "5m"}}, {"setWeight": 100}]
WAITING = re.compile(r"waiting for samples (\d+)/(\d+)")


@dataclass(frozen=True)
class Evaluation:
    """One gate evaluation as the operator recorded it in status, with where the rollout stood."""

    at: str
    phase: str
    step: int
    weights: dict[str, int]
    gates: dict[str, dict[str, Any]]


class Evaluations:
    """Every distinct status.lastAnalysis seen while polling (the operator writes one per interval)."""

    def __init__(self, scene: Scene, name: str) -> None:
        self.scene, self.name = scene, name
        self.seen: dict[str, Evaluation] = {}

    def poll(self) -> dict[str, Any]:
        status = self.scene.status(self.name)
        at = status.get("lastAnalysisAt")
        if at and at not in self.seen:
            self.seen[at] = Evaluation(
                at=at,
                phase=status.get("phase", ""),
                step=status.get("currentStep", 0),
                weights=dict(status.get("weights", {})),
                gates={g["name"]: g for g in status.get("lastAnalysis", [])},
            )
        return status

    def until(self, what: str, done: Callable[[dict[str, Any]], bool], timeout_s: float) -> dict[str, Any]:
        def check() -> dict[str, Any] | None:
            status = self.poll()
            return status if done(status) else None

        result: dict[str, Any] = wait_until(what, check, timeout_s, every_s=0.25)
        return result

    def of(self, gate: str) -> list[dict[str, Any]]:
        return [e.gates[gate] for e in self.seen.values() if gate in e.gates]


def gate_failed_evidence(status: dict[str, Any]) -> list[dict[str, Any]]:
    failed = [d for d in status.get("history", []) if d["reason"] == "GateFailed"]
    assert len(failed) == 1, status.get("history")
    evidence: list[dict[str, Any]] = failed[0]["evidence"]
    return evidence


def test_low_traffic_candidate_waits_for_samples_instead_of_failing(scene: Callable[..., Scene]) -> None:
    # ~2 rps reach the candidate at weight 50: a 1m window can never hold the 200 samples the gate needs,
    # while 20% of those few calls fail, far above the bound.
    s = scene(candidate={"error_ratio": 0.2}, rps=4)
    gate = {"name": "error-rate", "template": "errorRate", "max": 0.05, "window": "1m"}
    s.apply(
        s.rollout_manifest(
            "quiet", steps=[{"setWeight": 50}, {"setWeight": 100}], minSamples=200, gates=[gate]
        )
    )
    evaluations = Evaluations(s, "quiet")
    evaluations.until(
        "the candidate at weight 50", lambda st: st.get("weights", {}).get("candidate") == 50, 60
    )
    start = len(evaluations.seen)

    def breached(result: dict[str, Any]) -> bool:
        return result.get("value") is not None and result["value"] > 0.05

    # At least three more evaluations (intervals of 5s) while the candidate serves its share, until one
    # of them has recorded an error rate above the bound: measured, and still not judged on so little.
    status = evaluations.until(
        "three evaluations at weight 50, one of them above the bound",
        lambda st: len(evaluations.seen) >= start + 3 and any(map(breached, evaluations.of("error-rate"))),
        75,
    )

    assert status["phase"] == "Progressing" and status["currentStep"] == 0, status
    assert "waiting for samples" in status["message"], status["message"]
    assert s.route_weights() == {LEGACY: 50, CANDIDATE: 50}
    seen = [w.weights.get(CANDIDATE, 0) for w in s.driver.weight_history]
    assert [w for i, w in enumerate(seen) if i == 0 or w != seen[i - 1]] == [0, 50], seen
    assert [d["reason"] for d in status["history"]] == ["Started"]
    assert status.get("gateFailures", {}) == {}
    for e in evaluations.seen.values():
        result = e.gates["error-rate"]
        assert (e.phase, e.step, result["verdict"]) == ("Progressing", 0, "Inconclusive"), e
        waiting = WAITING.fullmatch(result["message"])
        assert waiting and int(waiting[1]) == result["samples"] < 200 and waiting[2] == "200", result
    worst = max(filter(breached, evaluations.of("error-rate")), key=lambda r: r["value"])
    judged = f"{len(evaluations.seen)} evaluations, none judged"
    print(f"\n{judged}; the worst: {worst['message']}, error rate {worst['value']:.3g}")


def test_relative_latency_gate_rolls_back_a_slower_candidate_an_absolute_bound_would_pass(
    scene: Callable[..., Scene],
) -> None:
    # The same lognormal shape, 30% slower: legacy median 2 s (p95 2.5 s), candidate 2.6 s (p95 3.25 s).
    # Both p95s lie inside a histogram bucket ((2, 3] and (3, 5]), away from its edges, so the estimates
    # are stable; the coarse buckets read the ratio as ~1.5 rather than 1.3, both over 1.2.
    s = scene(
        legacy={"latency_median_s": 2.0, "latency_p95_s": 2.5},
        candidate={"latency_median_s": 2.6, "latency_p95_s": 3.25},
    )
    p95 = {"template": "latencyQuantile", "quantile": 0.95, "window": "30s"}
    gates = [
        {"name": "p95-vs-legacy", **p95, "compare": {"maxRatio": 1.2}},
        {"name": "p95-absolute", **p95, "max": 8},  # a typical SLO bound: both versions are well within it
    ]
    # 200 samples keep the p95 estimates steady (at 50, one evaluation in ~50 would read the ratio <= 1.2).
    s.apply(s.rollout_manifest("slower", steps=STEPS_WITH_A_LONG_PAUSE, minSamples=200, gates=gates))

    status = s.wait_for_phase("slower", "RolledBack", timeout_s=90)

    assert s.route_weights() == {LEGACY: 100, CANDIDATE: 0}
    [evidence] = gate_failed_evidence(status)
    assert evidence["name"] == "p95-vs-legacy" and evidence["verdict"] == "Fail", evidence
    assert evidence["bound"] == "<= 1.2 x legacy"
    assert evidence["samples"] >= 200 and evidence["legacyValue"] is not None
    assert evidence["value"] > 1.2 * evidence["legacyValue"]
    assert evidence["value"] < 8, "an absolute bound of 8 s alone would have passed this candidate"
    absolute = next(g for g in status["lastAnalysis"] if g["name"] == "p95-absolute")
    assert absolute["verdict"] == "Pass" and absolute["value"] == evidence["value"], absolute
    print(f"\np95 {evidence['value']:.3g}s vs legacy {evidence['legacyValue']:.3g}s: {evidence['message']}")


def test_flag_rate_two_proportion_test_rolls_back_only_with_enough_samples(
    scene: Callable[..., Scene],
) -> None:
    s = scene(candidate={"flagged_ratio": 0.05}, legacy={"flagged_ratio": 0.01})
    gate = {
        "name": "flagged",
        "template": "flagRate",
        "window": "2m",
        "minSamples": 300,
        "compare": {"twoProportion": True, "confidence": 0.95},
    }
    s.apply(s.rollout_manifest("flagged", steps=STEPS_WITH_A_LONG_PAUSE, gates=[gate]))
    evaluations = Evaluations(s, "flagged")

    status = evaluations.until("RolledBack", lambda st: st.get("phase") == "RolledBack", 90)

    assert s.route_weights() == {LEGACY: 100, CANDIDATE: 0}
    results = evaluations.of("flagged")
    early = [r for r in results if (r.get("samples") or 0) < 300]
    assert early, f"no evaluation was seen below minSamples: {results}"
    for r in early:
        assert r["verdict"] == "Inconclusive" and WAITING.search(r["message"]), r
    assert all(r["verdict"] != "Fail" for r in early)
    [evidence] = gate_failed_evidence(status)
    assert evidence["name"] == "flagged" and evidence["verdict"] == "Fail", evidence
    assert evidence["samples"] >= 300 and evidence["minSamples"] == 300
    assert evidence["legacyValue"] is not None and evidence["value"] > evidence["legacyValue"]
    p_value = float(re.search(r"p=([0-9.e-]+)", evidence["message"])[1])  # type: ignore[index]
    assert p_value < 0.05, evidence["message"]
    print(
        f"\n{len(early)} evaluations waited below 300 samples; rolled back at {evidence['samples']} samples: "
        f"{evidence['message']}"
    )


def _promote(cluster: ClusterState, namespace: str, name: str) -> None:
    """`kubectl agentrollout promote NAME`: the plugin kubectl would run, as its own process."""
    plugin = REPO / ".venv" / "bin" / "kubectl-agentrollout"
    done = subprocess.run(
        [str(plugin), "promote", name, "-n", namespace],
        env={**os.environ, "KUBECONFIG": str(cluster.kubeconfig)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "promote requested" in done.stdout


def test_inconclusive_step_paused_for_a_human_who_promotes_it(
    scene: Callable[..., Scene], cluster: ClusterState
) -> None:
    s = scene(rps=10)
    gate = {"name": "error-rate", "template": "errorRate", "max": 0.05, "window": "30s"}
    s.apply(
        s.rollout_manifest(
            "doubtful",
            steps=[{"setWeight": 20}, {"setWeight": 100}],
            minSamples=5000,  # out of reach: every evaluation is inconclusive
            onInconclusive="pause",
            gates=[gate],
        )
    )

    paused = s.wait_for_phase("doubtful", "Paused", timeout_s=60)
    assert paused["currentStep"] == 0 and paused["weights"] == {"legacy": 80, "candidate": 20}
    assert s.route_weights() == {LEGACY: 80, CANDIDATE: 20}
    decision = paused["history"][-1]
    assert decision["reason"] == "Inconclusive" and "status.promote" in decision["message"], decision
    assert [e["name"] for e in decision["evidence"]] == ["error-rate"]
    assert WAITING.search(decision["evidence"][0]["message"])
    assert "paused on inconclusive error-rate" in paused["message"]

    _promote(cluster, s.namespace, "doubtful")
    # The human's promote ends step 1; step 2 (all traffic) is again inconclusive, so it pauses again.
    again = wait_until(
        "step 2 paused",
        lambda: (st := s.status("doubtful")).get("currentStep") == 1 and st.get("phase") == "Paused" and st,
        60,
    )
    assert s.route_weights() == {LEGACY: 0, CANDIDATE: 100}
    assert again.get("promote") is not True, "the verb must be consumed"

    _promote(cluster, s.namespace, "doubtful")
    final = s.wait_for_phase("doubtful", "Promoted", timeout_s=60)
    reasons = [d["reason"] for d in final["history"]]
    assert reasons == ["Started", "Inconclusive", "ManualPromotion", "Inconclusive", "Promoted"], reasons
    assert "approved by a human" in final["history"][-1]["message"]


def test_dry_run_gate_failing_is_recorded_but_never_acts(scene: Callable[..., Scene]) -> None:
    s = scene()
    gates = [
        {"name": "error-rate", "template": "errorRate", "max": 0.05, "window": "30s"},
        # The agents cost 0.002 per request: this bound fails at every evaluation.
        {"name": "cost", "template": "costPerRequest", "max": 0.001, "window": "30s", "dryRun": True},
    ]
    s.apply(
        s.rollout_manifest("dry", steps=[{"setWeight": 50}, {"setWeight": 100}], minSamples=10, gates=gates)
    )
    evaluations = Evaluations(s, "dry")

    final = evaluations.until("Promoted", lambda st: st.get("phase") == "Promoted", 90)

    assert s.route_weights() == {LEGACY: 0, CANDIDATE: 100}
    cost = {g["name"]: g for g in final["lastAnalysis"]}["cost"]
    assert cost["verdict"] == "Fail" and cost["dryRun"] is True and cost["value"] > 0.001, cost
    judged = [r for r in evaluations.of("cost") if r["verdict"] != "Inconclusive"]
    assert judged and all(r["verdict"] == "Fail" for r in judged), evaluations.of("cost")
    reasons = [d["reason"] for d in final["history"]]
    assert "GateFailed" not in reasons and reasons[-1] == "Promoted", reasons
    assert "cost" not in final.get("gateFailures", {}), final.get("gateFailures")
    # The decisions to move on carry the dry-run failure in their evidence, in the open.
    completed = [d for d in final["history"] if d["reason"] in ("StepCompleted", "Promoted")]
    assert len(completed) == 2
    for decision in completed:
        dry = {e["name"]: e for e in decision["evidence"]}["cost"]
        assert dry["verdict"] == "Fail" and dry["dryRun"] is True, decision
    assert "GateFailed" not in s.event_reasons("dry")
