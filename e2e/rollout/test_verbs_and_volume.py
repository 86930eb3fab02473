"""Volume-gated steps and the human verbs, end to end: the real operator process, apiserver and Prometheus.

- `pause: {minRequests: N}` holds a step until the candidate has served N requests since the step began
  ("the first N transactions within error bounds"), counted here by the candidate agent itself; with a
  `duration` as well, reaching the volume early does not end the pause early.
- `kubectl agentrollout abort` (the real plugin, as its own process) sends all traffic to legacy within
  a second or two: the operator is woken by the change, not by its 30 s interval.
- `kubectl agentrollout promote` ends an approval pause (`pause: {}`).
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from e2e.cluster import ClusterState
from e2e.rollout.scene import CANDIDATE, LEGACY, REPO, Scene, wait_until

ERROR_GATE = {"name": "error-rate", "template": "errorRate", "max": 0.05, "window": "30s"}
PLUGIN = REPO / ".venv" / "bin" / "kubectl-agentrollout"
WAITING_FOR_REQUESTS = re.compile(r"waiting for candidate requests (\d+)/(\d+)")
# How far the operator's count may run ahead of the candidate's own counter, in requests. The operator
# counts `increase(<requests>[Ns])` with N the whole seconds since status.stepStartedAt (rounded up from
# the real start), so the window itself never reaches back before the step. But increase() extrapolates
# the first and last scrape in the window (1 s apart here) to the window's edges as if the rate were
# constant, and requests are routed at random: those ~2 s carry a few requests of noise either way at
# ~10 candidate requests/s. 10 requests is about one second of candidate traffic.
TOLERANCE = 10


def run_plugin(
    cluster: ClusterState, verb: str, name: str, namespace: str
) -> subprocess.CompletedProcess[str]:
    """`kubectl agentrollout VERB NAME -n NS --kubeconfig K`, the real plugin as its own process."""
    env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}  # --kubeconfig alone must suffice
    return subprocess.run(
        [str(PLUGIN), verb, name, "-n", namespace, "--kubeconfig", str(cluster.kubeconfig)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def plugin(cluster: ClusterState, verb: str, name: str, namespace: str) -> str:
    done = run_plugin(cluster, verb, name, namespace)
    assert done.returncode == 0, f"{verb} failed: {done.stderr}"
    return done.stdout


@dataclass(frozen=True)
class Sample:
    """One look at the rollout, then at the candidate's own request counter (in that order)."""

    at: float  # time.monotonic() of the status read
    step: int
    phase: str
    message: str
    served: int  # the candidate agent's request count, read just after the status


def watch(s: Scene, name: str, until_phase: str, timeout_s: float) -> list[Sample]:
    """Sample status and the candidate's counter every ~0.1 s until the rollout reaches `until_phase`."""
    candidate = s.agents[CANDIDATE]
    samples: list[Sample] = []

    def done() -> bool:
        status = s.status(name)
        at = time.monotonic()
        served = int(candidate.stats()["requests"])
        samples.append(
            Sample(
                at, status.get("currentStep", 0), status.get("phase", ""), status.get("message", ""), served
            )
        )
        if status.get("phase") in {"RolledBack", "Failed"}:
            raise AssertionError(f"rollout ended {status['phase']}: {status}")
        return status.get("phase") == until_phase

    wait_until(f"{name} {until_phase}", done, timeout_s, every_s=0.1)
    return samples


def at_step(samples: list[Sample], step: int) -> list[Sample]:
    return [x for x in samples if x.step == step and x.phase in ("Progressing", "Paused")]


def test_volume_gated_step_holds_until_the_candidate_served_min_requests(scene: Callable[..., Scene]) -> None:
    n = 150
    # 20 requests/s, half of them to the candidate at weight 50: 150 requests take ~15 s.
    s = scene(rps=20)
    steps: list[dict[str, Any]] = [{"setWeight": 50}, {"pause": {"minRequests": n}}, {"setWeight": 100}]
    s.apply(s.rollout_manifest("volume", steps=steps, minSamples=10, gates=[ERROR_GATE]))

    samples = watch(s, "volume", "Promoted", timeout_s=120)

    paused = at_step(samples, 1)
    assert paused, f"the pause step was never observed: {samples[-3:]}"
    # The candidate's count when the step was first seen: at or after the step began, so `served - base`
    # never overstates what the candidate served since the step began.
    base = paused[0].served
    after = [x for x in samples if x.at > paused[0].at]
    # Every look at which the candidate had clearly served fewer than N requests in this step saw the
    # rollout still at step 1 (the status is read before the counter, so the count is no older).
    for x in after:
        if x.served - base < n - TOLERANCE:
            assert x.step == 1 and x.phase == "Progressing", (x, base)
    early = [x for x in paused if x.served - base < n - TOLERANCE]
    assert len(early) >= 20, f"only {len(early)} looks while the step held: {paused[:3]}"
    # While it held, the status said why, with the count against the bound.
    counts = []
    for x in paused:
        if m := WAITING_FOR_REQUESTS.search(x.message):
            assert int(m[2]) == n, x.message
            counts.append(int(m[1]))
    assert len(set(counts)) >= 2 and min(counts) < n, f"no request count in the messages: {paused[-1]}"
    assert counts == sorted(counts), f"the count went down: {counts}"
    # The step was left only once the candidate had served N requests since it began: the last look
    # that still saw step 1 came before the decision to leave it, so its count is a lower bound.
    last = paused[-1]
    left = next(x for x in samples if x.at > last.at)
    assert left.step >= 2, left
    assert last.served - base >= n - TOLERANCE, (last, base)

    final = s.status("volume")
    assert s.route_weights() == {LEGACY: 0, CANDIDATE: 100}
    reasons = [d["reason"] for d in final["history"]]
    assert reasons == ["Started", "StepCompleted", "StepCompleted", "Promoted"], reasons
    assert [g["verdict"] for g in final["lastAnalysis"]] == ["Pass"]
    # What the operator counted against what the candidate had served when that count was first seen.
    seen: dict[int, int] = {}
    for x in paused:
        if (m := WAITING_FOR_REQUESTS.search(x.message)) and int(m[1]) not in seen:
            seen[int(m[1])] = x.served - base
    print(
        f"\nstep 2/3 held {last.at - paused[0].at:.1f}s over {len(paused)} looks; operator count/candidate "
        f"count: {', '.join(f'{c}/{v}' for c, v in seen.items())}; left with {last.served - base} to "
        f"{left.served - base} served (N={n})"
    )


def test_a_pause_with_duration_and_min_requests_waits_for_both(scene: Callable[..., Scene]) -> None:
    # 20 requests reach the candidate in ~2 s at weight 50, long before the 15 s are over.
    s = scene(rps=20)
    steps: list[dict[str, Any]] = [
        {"setWeight": 50},
        {"pause": {"duration": "15s", "minRequests": 20}},
        {"setWeight": 100},
    ]
    s.apply(s.rollout_manifest("both", steps=steps, minSamples=10, gates=[ERROR_GATE]))

    samples = watch(s, "both", "Promoted", timeout_s=120)

    paused = at_step(samples, 1)
    assert paused, f"the pause step was never observed: {samples[-3:]}"
    base = paused[0].served
    volume_reached = next((x for x in paused if x.served - base >= 20 + TOLERANCE), None)
    assert volume_reached is not None and volume_reached.at - paused[0].at < 10, "volume reached late"
    assert any("pausing until" in x.message for x in paused), paused[-1]
    # A lower bound of the real pause: the step began before it was first seen, and was left after it was
    # last seen (but for the few ms between the decision and its status write). It is short of the real
    # pause by two polls at most, while the real pause is 15 s and up to 1 s more (a rounded-up start).
    held = paused[-1].at - paused[0].at
    assert held >= 14.5, f"the 15s pause ended after {held:.1f}s"
    final = s.status("both")
    started = next(d for d in final["history"] if d["reason"] == "StepCompleted" and d["step"] == 1)
    ended = next(d for d in final["history"] if d["reason"] == "StepCompleted" and d["step"] == 2)
    print(f"\n15s pause with minRequests 20: held {held:.1f}s ({started['time']} -> {ended['time']})")
    assert s.route_weights() == {LEGACY: 0, CANDIDATE: 100}


def test_abort_through_the_plugin_rolls_back_at_once_not_at_the_next_interval(
    scene: Callable[..., Scene], cluster: ClusterState
) -> None:
    s = scene(rps=10)
    steps: list[dict[str, Any]] = [{"setWeight": 30}, {"pause": {}}]
    manifest = s.rollout_manifest("stop", steps=steps, minSamples=10, gates=[ERROR_GATE])
    s.apply(manifest)
    paused = s.wait_for_phase("stop", "Paused", timeout_s=60)
    assert paused["currentStep"] == 1 and "waiting for approval" in paused["message"], paused
    assert s.route_weights() == {LEGACY: 70, CANDIDATE: 30}

    # Now a 30 s interval: the reconcile that sees the edit is the last one for 30 s unless woken.
    manifest["spec"]["analysis"]["interval"] = "30s"
    s.apply(manifest)
    wait_until(
        "the operator saw the 30s interval", lambda: s.status("stop").get("observedGeneration") == 2, 30
    )
    legacy_before = s.kube.apps.read_namespaced_deployment(LEGACY, s.namespace)

    start = time.monotonic()
    out = plugin(cluster, "abort", "stop", s.namespace)
    assert "abort requested" in out, out
    wait_until("legacy 100", lambda: s.route_weights() == {LEGACY: 100, CANDIDATE: 0}, 30, every_s=0.05)
    took = time.monotonic() - start
    print(f"\nplugin abort -> route legacy 100 / candidate 0 in {took:.2f}s (interval 30s)")
    assert took < 15, f"abort took {took:.1f}s: the operator was not woken by it"

    status = s.wait_for_phase("stop", "RolledBack", timeout_s=10)
    assert status["weights"] == {"legacy": 100, "candidate": 0}
    decision = status["history"][-1]
    assert decision["reason"] == "Aborted" and "aborted by a human" in decision["message"], decision
    wait_until("an Aborted event", lambda: "Aborted" in s.event_reasons("stop"), 10)
    # The legacy Deployment is untouched: same spec, still fully available.
    legacy = s.kube.apps.read_namespaced_deployment(LEGACY, s.namespace)
    assert legacy.metadata and legacy_before.metadata and legacy.spec and legacy_before.spec
    assert legacy.metadata.generation == legacy_before.metadata.generation
    assert legacy.spec.template == legacy_before.spec.template
    assert legacy.spec.replicas == 1 and legacy.status and legacy.status.available_replicas == 1

    # Verbs that mean nothing in RolledBack are refused or answered, never left set for later.
    refused = run_plugin(cluster, "promote", "stop", s.namespace)
    assert refused.returncode == 1 and refused.stdout == "", refused
    assert refused.stderr.startswith(
        f"error: cannot promote agentrollout {s.namespace}/stop: it is RolledBack"
    )
    again = plugin(cluster, "abort", "stop", s.namespace)
    assert "is already RolledBack" in again and "nothing to do" in again, again
    assert s.status("stop").get("promote") is not True, "a refused verb must not be sent"

    # The on-call engineer finds the rollback was a false alarm: retry the same candidate from step 1.
    out = plugin(cluster, "retry", "stop", s.namespace)
    assert "retry requested" in out, out
    wait_until(
        "candidate 30 again", lambda: s.route_weights() == {LEGACY: 70, CANDIDATE: 30}, 15, every_s=0.1
    )
    # Step 1 (setWeight 30) may already be done and the rollout back at its approval pause.
    retried = s.status("stop")
    assert retried["phase"] in ("Progressing", "Paused") and retried["currentStep"] in (0, 1), retried
    assert retried.get("retry") is not True and retried.get("abort") is not True, "verbs must be consumed"
    reasons = [d["reason"] for d in retried["history"]]
    assert reasons[reasons.index("Aborted") + 1] == "Retried", reasons


def test_promote_through_the_plugin_ends_an_approval_pause(
    scene: Callable[..., Scene], cluster: ClusterState
) -> None:
    s = scene(rps=10)
    steps: list[dict[str, Any]] = [{"setWeight": 30}, {"pause": {}}, {"setWeight": 100}]
    s.apply(s.rollout_manifest("approve", steps=steps, minSamples=10, gates=[ERROR_GATE]))
    paused = s.wait_for_phase("approve", "Paused", timeout_s=60)
    assert paused["currentStep"] == 1 and "waiting for approval" in paused["message"], paused
    time.sleep(6)  # more than one interval: an approval pause waits for nobody but a human
    assert s.status("approve")["currentStep"] == 1
    assert s.route_weights() == {LEGACY: 70, CANDIDATE: 30}

    out = plugin(cluster, "promote", "approve", s.namespace)
    assert "promote requested" in out, out

    final = s.wait_for_phase("approve", "Promoted", timeout_s=60)
    assert s.route_weights() == {LEGACY: 0, CANDIDATE: 100}
    assert final.get("promote") is not True, "the verb must be consumed"
    reasons = [d["reason"] for d in final["history"]]
    assert reasons == ["Started", "StepCompleted", "ManualPromotion", "Promoted"], reasons
    assert "approved by a human" in final["history"][2]["message"]
