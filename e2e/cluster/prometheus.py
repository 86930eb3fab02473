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

SCRAPE_JOB = "sim-agents"


def write_config(path: Path, file_sd_dir: Path) -> None:
    config = {
        # 1 s everywhere so tests see new samples quickly; the tests' targets are few and tiny.
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [
            {
                "job_name": SCRAPE_JOB,
                "file_sd_configs": [{"files": [str(file_sd_dir / "*.json")], "refresh_interval": "1s"}],
            }
        ],
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))


def prometheus_argv(config: Path, data_dir: Path, port: int) -> list[str]:
    return [
        "prometheus",
        f"--config.file={config}",
        f"--web.listen-address=127.0.0.1:{port}",
        f"--storage.tsdb.path={data_dir}",
        "--storage.tsdb.retention.time=1d",
        "--log.level=warn",
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


def query(prometheus_url: str, promql: str, timeout_s: float = 5.0) -> list[dict[str, Any]]:
    """An instant query; the harness only needs this much, tests use prometheus-api-client."""
    url = f"{prometheus_url}/api/v1/query?{urllib.parse.urlencode({'query': promql})}"
    with urllib.request.urlopen(url, timeout=timeout_s) as resp:
        body = json.load(resp)
    if body.get("status") != "success":
        raise RuntimeError(f"prometheus query {promql!r} failed: {body}")
    result: list[dict[str, Any]] = body["data"]["result"]
    return result
