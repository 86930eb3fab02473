"""Incident alerts for the e2e tests and benchmarks: rules loaded into the cluster's real Prometheus, and
what its ALERTS series says is firing."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path
from typing import Any

import yaml
from prometheus_api_client import PrometheusConnect

from e2e.cluster import ClusterState
from e2e.cluster.prometheus import reload as reload_prometheus
from e2e.cluster.prometheus import rules_dir
from e2e.rollout.scene import CANDIDATE, wait_until


def _rule_groups(prometheus_url: str) -> set[str]:
    with urllib.request.urlopen(f"{prometheus_url}/api/v1/rules", timeout=5) as resp:
        body = json.load(resp)
    return {g["name"] for g in body["data"]["groups"]}


def load_rules(cluster: ClusterState, name: str, text: str, group: str) -> Path:
    path = rules_dir(cluster.run_dir) / f"{name}.yml"
    path.write_text(text)
    reload_prometheus(cluster.prometheus_url)
    wait_until(f"rule group {group} loaded", lambda: group in _rule_groups(cluster.prometheus_url), 20)
    return path


def firing(prom: PrometheusConnect, alertname: str, **labels: str) -> list[dict[str, Any]]:
    matchers = ",".join(
        [f'alertname="{alertname}"', 'alertstate="firing"', *(f'{k}="{v}"' for k, v in labels.items())]
    )
    result: list[dict[str, Any]] = prom.custom_query(f"ALERTS{{{matchers}}}")
    return result


def incident_rules(namespace: str, rollout: str) -> str:
    """The kind of rule an on-call team writes: the candidate's error ratio, labelled with the rollout."""
    requests = f'agent_requests_total{{namespace="{namespace}",version="{CANDIDATE}"}}'
    errors = f'agent_requests_total{{namespace="{namespace}",version="{CANDIDATE}",code=~"5.."}}'
    rule = {
        "alert": "AgentErrorSpike",
        "expr": f"sum(rate({errors}[10s])) / sum(rate({requests}[10s])) > 0.1",
        "labels": {"agentrollout": rollout, "namespace": namespace, "severity": "page"},
        "annotations": {"summary": "candidate error ratio above 10%"},
    }
    return yaml.safe_dump({"groups": [{"name": f"incident-{namespace}", "rules": [rule]}]})
