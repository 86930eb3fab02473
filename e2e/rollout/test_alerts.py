"""Incidents end to end: an alert rule in the cluster's real Prometheus fires, a real Alertmanager calls the
operator's webhook receiver, and the planner rolls the rollout back with the alert as evidence; the
chart's own alert rules (on the operator's metrics) fire on that rollback and stay quiet on a healthy
rollout."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from datetime import datetime

import pytest
from prometheus_api_client import PrometheusConnect

from e2e.cluster import ClusterState, alertmanager
from e2e.cluster.paths import REPO_ROOT
from e2e.cluster.prometheus import reload as reload_prometheus
from e2e.rollout.conftest import OperatorEndpoints
from e2e.rollout.incident import firing, incident_rules, load_rules
from e2e.rollout.scene import CANDIDATE, LEGACY, OperatorProcess, Scene, wait_until

CHART_RULES = REPO_ROOT / "charts" / "agent-rollout" / "files" / "agent-rollout.rules.yml"
LENIENT_GATE = {"name": "error-rate", "template": "errorRate", "max": 0.9, "window": "30s"}


@pytest.fixture(scope="module")
def chart_rules(cluster: ClusterState) -> Iterator[None]:
    """The chart's rules on the operator's metrics, loaded as they ship."""
    path = load_rules(cluster, "chart", CHART_RULES.read_text(), "agent-rollout")
    yield
    path.unlink(missing_ok=True)
    reload_prometheus(cluster.prometheus_url)


@pytest.fixture(scope="module")
def alertmanager_url(
    cluster: ClusterState, operator: OperatorProcess, operator_endpoints: OperatorEndpoints
) -> Iterator[str]:
    """A real Alertmanager, sent the cluster Prometheus' alerts, calling the operator's receiver."""
    with alertmanager.running(
        cluster.run_dir, "session", operator_endpoints.alerts_url, operator_endpoints.token_file
    ) as url:
        yield url


def test_firing_alert_rolls_the_rollout_back_through_a_real_alertmanager(
    scene: Callable[..., Scene],
    cluster: ClusterState,
    prometheus: PrometheusConnect,
    alertmanager_url: str,
    chart_rules: None,
) -> None:
    # The candidate errs on 30% of calls, its gate tolerates 90%: only the incident alert can roll it back.
    s = scene(candidate={"error_ratio": 0.3})
    s.apply(
        s.rollout_manifest(
            "incident", steps=[{"setWeight": 20}, {"pause": {"duration": "10m"}}], gates=[LENIENT_GATE]
        )
    )
    wait_until("candidate at 20%", lambda: s.route_weights()[CANDIDATE] == 20, timeout_s=60)
    assert s.status("incident")["phase"] == "Progressing"

    rules = load_rules(
        cluster, f"incident-{s.namespace}", incident_rules(s.namespace, "incident"), f"incident-{s.namespace}"
    )
    try:
        fired_at = wait_until(
            "AgentErrorSpike firing in Prometheus",
            lambda: (
                time.monotonic() if firing(prometheus, "AgentErrorSpike", namespace=s.namespace) else None
            ),
            timeout_s=60,
            every_s=0.1,
        )
        rolled_back_at = wait_until(
            "candidate weight 0",
            lambda: time.monotonic() if s.route_weights()[CANDIDATE] == 0 else None,
            30,
            0.1,
        )
        print(f"\nalert firing in Prometheus -> candidate weight 0: {rolled_back_at - fired_at:.2f}s")
    finally:
        rules.unlink(missing_ok=True)
        reload_prometheus(cluster.prometheus_url)

    status = s.wait_for_phase("incident", "RolledBack", timeout_s=10)
    assert s.route_weights() == {LEGACY: 100, CANDIDATE: 0}
    decision = next(d for d in status["history"] if d["reason"] == "AlertFired")
    assert "alert AgentErrorSpike fired" in decision["message"] and decision["weights"]["candidate"] == 0
    (evidence,) = decision["evidence"]
    assert evidence["name"] == "alert:AgentErrorSpike" and evidence["verdict"] == "Fail"
    assert (
        "agentrollout=incident" in evidence["query"]
        and evidence["message"] == "candidate error ratio above 10%"
    )
    assert "AlertFired" in s.event_reasons("incident")
    assert "GateFailed" not in [d["reason"] for d in status["history"]]

    # The chart's own rule sees the rollback in the operator's metrics and names the rollout and cause.
    wait_until(
        "AgentRolloutRolledBack firing for the rollout",
        lambda: firing(
            prometheus,
            "AgentRolloutRolledBack",
            namespace=s.namespace,
            rollout="incident",
            cause="AlertFired",
        ),
        timeout_s=30,
    )


def test_the_charts_spike_alert_rolls_a_live_rollout_back_through_alertmanager(
    scene: Callable[..., Scene],
    prometheus: PrometheusConnect,
    alertmanager_url: str,
    chart_rules: None,
) -> None:
    """The chart's AgentCandidateErrorSpike, as it ships: the candidate's own metrics joined with the
    operator's agent_rollout_candidate_info give the alert the rollout's name, and Alertmanager's webhook
    to the operator rolls it back. The legacy side's metrics never fire it (no live rollout judges them)."""
    s = scene(candidate={"error_ratio": 0.45}, legacy={"error_ratio": 0.45}, rps=20)
    s.apply(
        s.rollout_manifest(
            "spiking", steps=[{"setWeight": 50}, {"pause": {"duration": "10m"}}], gates=[LENIENT_GATE]
        )
    )
    wait_until("candidate at 50%", lambda: s.route_weights()[CANDIDATE] == 50, timeout_s=60)
    alert = wait_until(
        "AgentCandidateErrorSpike firing for the rollout",
        lambda: firing(prometheus, "AgentCandidateErrorSpike", namespace=s.namespace),
        timeout_s=150,
        every_s=0.5,
    )
    assert [a["metric"]["agentrollout"] for a in alert] == ["spiking"], alert
    assert {a["metric"]["version"] for a in alert} == {CANDIDATE}  # legacy errs as much, and is not paged
    status = s.wait_for_phase("spiking", "RolledBack", timeout_s=30)
    decision = next(d for d in status["history"] if d["reason"] == "AlertFired")
    assert [e["name"] for e in decision["evidence"]] == ["alert:AgentCandidateErrorSpike"]
    assert s.route_weights() == {LEGACY: 100, CANDIDATE: 0}


def prometheus_reload(cluster: ClusterState) -> None:
    reload_prometheus(cluster.prometheus_url)


def test_chart_alert_rules_stay_quiet_on_a_healthy_rollout(
    scene: Callable[..., Scene], prometheus: PrometheusConnect, chart_rules: None, cluster: ClusterState
) -> None:
    s = scene()
    s.apply(
        s.rollout_manifest(
            "healthy", steps=[{"setWeight": 20}, {"setWeight": 100}], minSamples=10, gates=[LENIENT_GATE]
        )
    )
    s.wait_for_phase("healthy", "Promoted", timeout_s=120)
    # Not quiet by being blind: the operator's metrics for this very rollout have reached Prometheus, and
    # every chart rule has been evaluated since, without error.
    wait_until(
        "operator metrics scraped after the promotion",
        lambda: prometheus.custom_query('agent_rollout_decisions_total{reason="Promoted"}'),
        timeout_s=30,
    )
    seen = time.time()

    def evaluated_since() -> bool:
        with urllib.request.urlopen(f"{cluster.prometheus_url}/api/v1/rules", timeout=5) as resp:
            groups = json.load(resp)["data"]["groups"]
        rules = [r for g in groups if g["name"].startswith("agent-rollout") for r in g["rules"]]
        assert len(rules) >= 9 and all(r["health"] == "ok" for r in rules), rules
        return all(_epoch(r["lastEvaluation"]) > seen + 1 for r in rules)

    wait_until("chart rules evaluated after the promotion", evaluated_since, timeout_s=30)
    quiet = prometheus.custom_query(f'ALERTS{{namespace="{s.namespace}"}}')
    assert quiet == [], quiet


def _epoch(rfc3339: str) -> float:
    return datetime.fromisoformat(rfc3339.replace("Z", "+00:00")).timestamp()


def test_receiver_refuses_requests_without_the_token_and_ignores_alerts_for_no_rollout(
    operator: OperatorProcess, operator_endpoints: OperatorEndpoints
) -> None:
    ends = operator_endpoints
    body = json.dumps(
        {
            "version": "4",
            "alerts": [
                {
                    "status": "firing",
                    "labels": {"alertname": "X", "agentrollout": "ghost", "namespace": "nowhere"},
                    "fingerprint": "1",
                }
            ],
        }
    ).encode()

    def post(token: str | None) -> tuple[int, str]:
        headers = {"Content-Type": "application/json"}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        request = urllib.request.Request(ends.alerts_url, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=5) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    log_start = operator.log_path.stat().st_size
    assert post(None)[0] == 401
    assert post("not-the-token")[0] == 401
    status, answer = post(ends.token_file.read_text().strip())
    assert (status, json.loads(answer)) == (200, {"matched": 0, "unmatched": 1})

    def refusals_logged() -> int:
        with operator.log_path.open("rb") as log:
            log.seek(log_start)
            return log.read().decode(errors="replace").count("alert receiver: refused a request")

    wait_until("both refusals logged", lambda: refusals_logged() == 2, timeout_s=10)
    assert (ends.sample("agent_rollout_alert_requests_refused_total") or 0) >= 2
    assert (ends.sample("agent_rollout_alerts_unmatched_total") or 0) >= 1
