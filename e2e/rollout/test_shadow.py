"""Shadow steps on the real control plane: the operator writes a RequestMirror filter on the real
HTTPRoute, the harness's traffic driver mirrors as a gateway does to the real comparator process
(agent_rollout.comparator), which replays each copy to the simulated legacy and candidate and exports
its counters to the e2e Prometheus, where the shadowAgreement gate reads them.

Answers can disagree for real: the simulated agents answer every input, reworded with the profile's
noise_ratio (a non-deterministic agent) and wrong with its disagreement_ratio; the comparator compares
the `answer` fields (json mode) and sends half the copies to legacy twice for the noise floor.
"""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from agent_rollout import api
from agent_rollout.reconcile import CRASH_AFTER_ROUTE_WRITE, FAULT_ENV
from e2e.cluster import ClusterState, chart, identity
from e2e.cluster.podrunner import PodRunner
from e2e.rollout.conftest import wait_for_rbac
from e2e.rollout.scene import CANDIDATE, LEGACY, ROUTE, OperatorProcess, Scene, wait_until
from e2e.rollout.test_evaluation import evaluate_step
from e2e.sim.comparator import SimComparator, start_comparator

COMPARATOR = "agent-rollout-comparator"  # the Service the spec's default comparator names
HEADERS = {
    "type": "RequestHeaderModifier",
    "requestHeaderModifier": {"set": [{"name": "x-team", "value": "a"}]},
}
AGREEMENT = {
    "name": "agreement",
    "template": "shadowAgreement",
    "compare": {"twoProportion": True, "margin": 0.1},
    "minSamples": 30,
}
ERRORS = {"name": "errors", "template": "errorRate", "max": 0.05, "minSamples": 20}


@pytest.fixture
def comparator(cluster: ClusterState) -> Iterator[Callable[..., SimComparator]]:
    """comparator(scene) -> the real comparator for the scene's agents, scraped by Prometheus, and the
    route's mirror Service resolved to it (as the chart's Service would be). `compare` replaces its
    comparison flags (default: json on /answer), `more` adds flags."""
    started: list[SimComparator] = []

    def start(
        s: Scene, compare: Sequence[str] = ("--mode", "json", "--field", "/answer"), more: Sequence[str] = ()
    ) -> SimComparator:
        args = ["--namespace", s.namespace, "--version", CANDIDATE, *compare]
        c = start_comparator(
            s.agents.url(LEGACY),
            s.agents.url(CANDIDATE),
            log_dir=cluster.run_dir / "comparators",
            name=f"comparator-{s.namespace}",
            args=[*args, "--noise-share", "0.5", *more],
        )
        started.append(c)
        c.register(cluster.file_sd_dir, s.namespace)
        s.driver.backends[COMPARATOR] = c.url
        return c

    yield start
    for c in started:
        c.close()


def add_user_filter(s: Scene) -> list[dict[str, Any]]:
    """A filter of the user's own on the rule the mirror goes to: it must come through untouched."""
    route = s.kube.get_httproute(s.namespace, ROUTE)
    route["spec"]["rules"][0]["filters"] = [HEADERS]
    s.kube.custom.replace_namespaced_custom_object(
        "gateway.networking.k8s.io", "v1", s.namespace, "httproutes", ROUTE, route
    )
    filters: list[dict[str, Any]] = s.kube.get_httproute(s.namespace, ROUTE)["spec"]["rules"][0]["filters"]
    return filters


def ours(route: dict[str, Any]) -> list[dict[str, Any]]:
    filters = route["spec"]["rules"][0].get("filters") or []
    return [f for f in filters if f.get("requestMirror", {}).get("backendRef", {}).get("name") == COMPARATOR]


def shadow(percent: int = 50, duration: str = "15s", min_requests: int = 60) -> dict[str, Any]:
    return {"shadow": {"percent": percent, "duration": duration, "minRequests": min_requests}}


def test_evaluate_shadow_then_weights_promote_a_good_candidate_and_leave_the_route_as_it_was(
    scene: Callable[..., Scene],
    runner: Callable[[Scene], PodRunner],
    comparator: Callable[[Scene], SimComparator],
) -> None:
    s = scene(legacy={"noise_ratio": 0.02}, candidate={"noise_ratio": 0.02, "eval_accuracy": 0.99}, rps=20)
    runner(s)
    c = comparator(s)
    before = add_user_filter(s)
    steps = [evaluate_step(), shadow(), {"setWeight": 10}, {"setWeight": 100}]
    s.apply(s.rollout_manifest("shadowed", steps=steps, gates=[AGREEMENT, ERRORS]))
    shadowing = s.driver.wait_for_mirrors([COMPARATOR], timeout_s=120)
    assert dict(shadowing.weights) == {LEGACY: 100, CANDIDATE: 0}  # users stay on legacy meanwhile
    status = s.wait_for_phase("shadowed", "Promoted", timeout_s=240)
    route = s.kube.get_httproute(s.namespace, ROUTE)
    assert route["spec"]["rules"][0]["filters"] == before  # identical before and after
    # Exactly one mirror of ours at any time the route was seen, and users never mirrored with weight.
    for seen in s.driver.weight_history:
        mirrored = [m for m in seen.mirrors if m.service == COMPARATOR]
        assert len(mirrored) <= 1 and (not mirrored or seen.weights.get(CANDIDATE) == 0), seen
    completed = next(d for d in status["history"] if d["message"].startswith("step 2/4 completed"))
    agreement = next(e for e in completed["evidence"] if e["name"] == "agreement")
    assert agreement["verdict"] == "Pass" and agreement["samples"] >= 30 and agreement["legacySamples"] >= 30
    counts = c.counts()
    assert counts["match"] > 60 and counts["mismatch"] < counts["match"] / 4, counts


def test_a_candidate_that_disagrees_is_rolled_back_in_the_shadow_step_with_users_on_legacy(
    scene: Callable[..., Scene], comparator: Callable[[Scene], SimComparator]
) -> None:
    s = scene(legacy={"noise_ratio": 0.025}, candidate={"disagreement_ratio": 0.3}, rps=20)
    comparator(s)
    steps = [shadow(duration="10m"), {"setWeight": 50}, {"setWeight": 100}]
    s.apply(s.rollout_manifest("disagreeing", steps=steps, gates=[AGREEMENT, ERRORS]))
    s.driver.wait_for_mirrors([COMPARATOR], timeout_s=60)
    status = s.wait_for_phase("disagreeing", "RolledBack", timeout_s=120)
    decision = status["history"][-1]
    assert decision["reason"] == "GateFailed" and decision["step"] == 0, decision
    evidence = next(e for e in decision["evidence"] if e["name"] == "agreement")
    print(f"\nshadow rollback evidence: {evidence}")
    assert evidence["value"] < 0.8 and evidence["legacyValue"] > 0.85, evidence  # ~0.7 vs ~0.95
    assert evidence["samples"] >= 30 and evidence["legacySamples"] >= 30, evidence
    # The mirror is gone and no user request ever went to the candidate.
    s.driver.wait_for_mirrors([], timeout_s=10)
    assert ours(s.kube.get_httproute(s.namespace, ROUTE)) == []
    assert {r.service for r in s.driver.records()} == {LEGACY}
    assert all(d["weights"]["candidate"] == 0 for d in status["history"])


def test_operator_killed_in_a_shadow_step_keeps_exactly_one_mirror_and_removes_it_at_the_end(
    scene: Callable[..., Scene],
    comparator: Callable[[Scene], SimComparator],
    operator: OperatorProcess,
    cluster: ClusterState,
) -> None:
    s = scene(legacy={"noise_ratio": 0.02}, candidate={"noise_ratio": 0.02}, rps=20, duration_s=400)
    comparator(s)
    before = add_user_filter(s)
    operator.kill()
    # Dies right after every route write that landed, before its status write: the mirror is on the
    # route, status does not know yet; the next process must resume from the write-ahead record.
    faulty = OperatorProcess(
        operator.kubeconfig,
        cluster.run_dir / "operator-shadow-faulty.log",
        env={FAULT_ENV: CRASH_AFTER_ROUTE_WRITE},
    )
    crashes, checked = 0, False
    try:
        faulty.start()
        s.apply(
            s.rollout_manifest(
                "crashing", steps=[shadow(duration="20s"), {"setWeight": 100}], gates=[AGREEMENT]
            )
        )
        deadline = time.monotonic() + 240
        while s.status("crashing").get("phase") != "Promoted":
            assert time.monotonic() < deadline, (
                f"not promoted after {crashes} crashes: {s.status('crashing')}"
            )
            if not faulty.alive():
                crashes += 1
                faulty.start()
            st = s.status("crashing")
            if not checked and crashes and st.get("phase") == "Progressing" and st.get("currentStep") == 0:
                time.sleep(3)  # a few reconciles of the restarted operator in the shadow step
                route = s.kube.get_httproute(s.namespace, ROUTE)
                assert len(ours(route)) == 1, route["spec"]["rules"][0]
                checked = True
            time.sleep(0.2)
    finally:
        faulty.kill()
        operator.start()
    print(f"\nshadow step promoted through {crashes} crashes after route writes")
    assert checked and crashes >= 2  # the mirror's add, then its removal with the weights
    history = s.status("crashing")["history"]
    assert any("write-ahead" in d["message"] for d in history)
    route = s.kube.get_httproute(s.namespace, ROUTE)
    assert route["spec"]["rules"][0]["filters"] == before
    for seen in s.driver.weight_history:
        assert len([m for m in seen.mirrors if m.service == COMPARATOR]) <= 1, seen
    assert any(m.service == COMPARATOR for seen in s.driver.weight_history for m in seen.mirrors)


def test_bad_shadow_specs_are_refused_naming_the_field(scene: Callable[..., Scene]) -> None:
    s = scene(rps=5)
    for percent in (0, 101):
        refused = s.apply(s.rollout_manifest("bad-percent", steps=[shadow(percent=percent)]), check=False)
        assert refused.returncode != 0 and "spec.steps[0].shadow.percent" in refused.stderr, refused.stderr
    late = [{"setWeight": 10}, shadow(), {"setWeight": 100}]
    s.apply(s.rollout_manifest("late-shadow", steps=late))
    status = s.wait_for_phase("late-shadow", "Failed", timeout_s=60)
    condition = next(c for c in status["conditions"] if c["type"] == "SpecValid")
    assert condition["reason"] == "InvalidSpec" and "spec.steps[1].shadow" in condition["message"], condition
    assert ours(s.kube.get_httproute(s.namespace, ROUTE)) == []


def gauge(c: SimComparator, name: str) -> float | None:
    with urllib.request.urlopen(f"{c.admin_url}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    values = [s.value for f in text_string_to_metric_families(text) for s in f.samples if s.name == name]
    return values[0] if values else None


def comparator_access(s: Scene, rollout: str) -> list[dict[str, Any]]:
    """The chart's comparator ServiceAccount, Role and RoleBinding for `rollout`, rendered for the scene's
    namespace as the release namespace."""
    values = {
        "comparator": {
            "enabled": True,
            "legacyUrl": "http://l",
            "candidateUrl": "http://c",
            "rollout": rollout,
        }
    }
    rendered = chart.render(values, release="ar", namespace=s.namespace)
    return [
        m
        for m in rendered
        if m["kind"] in ("ServiceAccount", "Role", "RoleBinding") and "comparator" in m["metadata"]["name"]
    ]


def test_the_shadow_steps_own_comparison_counts_answers_that_agree_on_a_field_as_matches(
    scene: Callable[..., Scene], comparator: Callable[..., SimComparator], cluster: ClusterState
) -> None:
    """The comparator runs with its default flags (exact: legacy's and the candidate's answers always
    differ byte for byte, in `version` and `latency_s`) and follows the rollout, with a token of the chart's
    own comparator ServiceAccount and Role; the step's `compare: {mode: json, fields: [/answer]}` makes
    them matches, so the rollout passes the step; after it, the same requests are mismatches again."""
    s = scene(legacy={}, candidate={}, rps=20)
    name = "shadow-json"
    access = comparator_access(s, name)
    assert sorted(m["kind"] for m in access) == ["Role", "RoleBinding", "ServiceAccount"]
    (account,) = (m["metadata"]["name"] for m in access if m["kind"] == "ServiceAccount")
    identity.ensure_service_account(s.kube, s.namespace, account)
    kubeconfig = identity.service_account_kubeconfig(
        s.kube, s.namespace, account, cluster.run_dir / f"comparator-{s.namespace}.kubeconfig"
    )
    c = comparator(
        s, compare=(), more=("--rollout", f"{s.namespace}/{name}", "--kubeconfig", str(kubeconfig))
    )
    # No Role yet: the rollout is unreadable (403), which the comparator shows and survives.
    wait_until(
        "the comparator to report its rollout unreadable",
        lambda: gauge(c, "agent_shadow_rollout_unreadable") == 1.0,
        timeout_s=30,
    )
    s.apply({"apiVersion": "v1", "kind": "List", "items": access})
    wait_for_rbac(cluster, kubeconfig, ("watch", f"{api.PLURAL}.{api.GROUP}/{name}", "-n", s.namespace))
    wait_until(
        "the comparator to read its rollout",
        lambda: gauge(c, "agent_shadow_rollout_unreadable") == 0.0,
        timeout_s=60,
    )
    # Exact, the agreement would be 0: every pair differs in `version`. A few copies mirrored between the
    # operator's route write and its status write are still compared exactly, hence 0.8, not 1.
    agreement = {"name": "agreement", "template": "shadowAgreement", "min": 0.8, "minSamples": 30}
    step = {
        "shadow": {
            "percent": 50,
            "duration": "15s",
            "minRequests": 60,
            "compare": {"mode": "json", "fields": ["/answer"]},
        }
    }
    s.apply(s.rollout_manifest(name, steps=[step, {"setWeight": 100}], gates=[agreement]))
    s.driver.wait_for_mirrors([COMPARATOR], timeout_s=60)
    wait_until(
        "the step's comparison to apply",
        lambda: gauge(c, "agent_shadow_step_comparison") == 1.0,
        timeout_s=30,
    )
    status = s.wait_for_phase(name, "Promoted", timeout_s=180)
    completed = next(d for d in status["history"] if d["message"].startswith("step 1/2 completed"))
    evidence = next(e for e in completed["evidence"] if e["name"] == "agreement")
    print(f"\nshadow step compare evidence: {evidence}, comparator counts {c.counts()}")
    assert evidence["verdict"] == "Pass" and evidence["value"] >= 0.8 and evidence["samples"] >= 30, evidence
    during = c.counts()
    assert during["match"] >= 60 and during["mismatch"] <= during["match"] / 5, during
    # The step is over: the comparator's own exact mode again, and the same kind of request, replayed to
    # the same agents, is a mismatch every time.
    wait_until(
        "the flags' comparison to apply",
        lambda: gauge(c, "agent_shadow_step_comparison") == 0.0,
        timeout_s=30,
    )
    for i in range(10):
        body = f'{{"input": "after the step {i}"}}'.encode()
        request = urllib.request.Request(
            f"{c.url}/invoke", data=body, method="POST", headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=5) as resp:
            assert resp.status == 202
    wait_until(
        "ten exact mismatches", lambda: c.counts()["mismatch"] >= during["mismatch"] + 10, timeout_s=30
    )
    after = c.counts()
    assert after["match"] <= during["match"] + 3, (during, after)  # at most the mirror's last copies
