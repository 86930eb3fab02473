"""Prometheus config and the file_sd target files through which agents are registered for scraping."""

from __future__ import annotations

import json
import os
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from prometheus_client.parser import text_string_to_metric_families

SCRAPE_JOB = "sim-agents"
# A Prometheus binary other than Debian's `prometheus` on PATH (the scale benchmarks build a current
# release with e2e/cluster/build-prometheus.sh and name it here).
BINARY_ENV = "E2E_PROMETHEUS"
OPERATOR_JOB = "agent-rollout-operator"


def rules_dir(run_dir: Path) -> Path:
    """Rule files (*.yml) tests drop here are loaded at the next reload()."""
    return run_dir / "rules"


def alertmanager_sd_dir(run_dir: Path) -> Path:
    """file_sd of the Alertmanagers Prometheus sends its alerts to (none until a test starts one)."""
    return run_dir / "alertmanagers"


def operator_sd_dir(run_dir: Path) -> Path:
    """file_sd of operators' /metrics endpoints, scraped as job agent-rollout-operator."""
    return run_dir / "operators"


def _file_sd(directory: Path) -> list[dict[str, Any]]:
    return [{"files": [str(directory / "*.json")], "refresh_interval": "1s"}]


def write_config(path: Path, file_sd_dir: Path) -> None:
    """The config lives in the cluster's run dir; so do the rule and discovery dirs it names."""
    run_dir = path.parent
    for directory in (rules_dir(run_dir), alertmanager_sd_dir(run_dir), operator_sd_dir(run_dir)):
        directory.mkdir(parents=True, exist_ok=True)
    config = {
        # 1 s everywhere so tests see new samples quickly; the tests' targets are few and tiny.
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(rules_dir(run_dir) / "*.yml")],
        "alerting": {"alertmanagers": [{"file_sd_configs": _file_sd(alertmanager_sd_dir(run_dir))}]},
        "scrape_configs": [
            {"job_name": SCRAPE_JOB, "file_sd_configs": _file_sd(file_sd_dir)},
            {"job_name": OPERATOR_JOB, "file_sd_configs": _file_sd(operator_sd_dir(run_dir))},
        ],
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))


def log_queries(config_path: Path, prometheus_url: str, log_file: Path | None) -> None:
    """Start (or, with None, stop) Prometheus' query log: one JSON line per query with its timings,
    so a benchmark can tell which queries its CPU went to. Reloaded at once; nothing else changes."""
    config = yaml.safe_load(config_path.read_text())
    if log_file is None:
        config["global"].pop("query_log_file", None)
    else:
        config["global"]["query_log_file"] = str(log_file)
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    reload(prometheus_url)


def reload(prometheus_url: str, timeout_s: float = 10.0) -> None:
    """Re-read the config and the rule files (rule files are only read at start and on reload)."""
    request = urllib.request.Request(f"{prometheus_url}/-/reload", method="POST")
    with urllib.request.urlopen(request, timeout=timeout_s) as resp:
        if resp.status != 200:
            raise RuntimeError(f"prometheus reload answered {resp.status}")


def binary() -> str:
    """Debian's `prometheus`, or the executable E2E_PROMETHEUS names (refused at once if it is none)."""
    chosen = os.environ.get(BINARY_ENV)
    if not chosen:
        return "prometheus"
    if not os.access(chosen, os.X_OK) or Path(chosen).is_dir():
        raise RuntimeError(
            f"{BINARY_ENV}={chosen!r} is not an executable file (e2e/cluster/build-prometheus.sh makes one)"
        )
    return chosen


def prometheus_argv(config: Path, data_dir: Path, port: int) -> list[str]:
    return [
        binary(),
        f"--config.file={config}",
        f"--web.listen-address=127.0.0.1:{port}",
        f"--storage.tsdb.path={data_dir}",
        "--storage.tsdb.retention.time=1d",
        "--log.level=warn",
        "--web.enable-lifecycle",  # POST /-/reload: tests load alert rules while it runs
        # Firing alerts are re-sent to Alertmanager this often (default 1m). A reload restarts the
        # discovery of Alertmanagers, and an alert first sent before it found one would wait a minute.
        "--rules.alert.resend-delay=1s",
    ]


def write_targets(file_sd_dir: Path, group: str, targets: Sequence[tuple[str, Mapping[str, str]]]) -> Path:
    """One file per group (e.g. per test namespace); replaced atomically so Prometheus never reads half."""
    path = file_sd_dir / f"{group}.json"
    body = [{"targets": [address], "labels": dict(labels)} for address, labels in targets]
    tmp = file_sd_dir / f".{group}.json.tmp"
    tmp.write_text(json.dumps(body, indent=1))
    os.replace(tmp, path)
    return path


def remove_targets(file_sd_dir: Path, group: str) -> None:
    (file_sd_dir / f"{group}.json").unlink(missing_ok=True)


def text_sample(text: str, name: str, **labels: str) -> float | None:
    """A sample of a /metrics page (Prometheus' text format) by name and labels (None: not there)."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return None


def version(prometheus_url: str) -> str:
    """The running Prometheus' own version (its build info), for a benchmark's header."""
    with urllib.request.urlopen(f"{prometheus_url}/api/v1/status/buildinfo", timeout=10) as resp:
        return str(json.load(resp)["data"]["version"])


def query(prometheus_url: str, promql: str, timeout_s: float = 5.0) -> list[dict[str, Any]]:
    """An instant query; the harness only needs this much, tests use prometheus-api-client."""
    url = f"{prometheus_url}/api/v1/query?{urllib.parse.urlencode({'query': promql})}"
    with urllib.request.urlopen(url, timeout=timeout_s) as resp:
        body = json.load(resp)
    if body.get("status") != "success":
        raise RuntimeError(f"prometheus query {promql!r} failed: {body}")
    result: list[dict[str, Any]] = body["data"]["result"]
    return result
