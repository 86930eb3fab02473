"""A real Alertmanager (Debian's prometheus-alertmanager) for the alert-triggered rollback e2e: it takes
the alerts of the cluster's Prometheus and calls the operator's webhook receiver with a bearer token."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import yaml

from e2e.cluster import procs, prometheus
from e2e.cluster.ports import free_ports

BINARY = "prometheus-alertmanager"
RECEIVER = "agent-rollout"


def write_config(path: Path, webhook_url: str, token_file: Path) -> None:
    config = {
        "route": {
            "receiver": RECEIVER,
            "group_by": ["alertname", "namespace", "agentrollout"],
            # Tests wait on conditions, not on Alertmanager's batching: send at once, re-send quickly.
            "group_wait": "0s",
            "group_interval": "1s",
            "repeat_interval": "1m",
        },
        "receivers": [
            {
                "name": RECEIVER,
                "webhook_configs": [
                    {
                        "url": webhook_url,
                        "send_resolved": True,
                        "http_config": {
                            "authorization": {"type": "Bearer", "credentials_file": str(token_file)}
                        },
                    }
                ],
            }
        ],
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))


def argv(config: Path, data_dir: Path, port: int) -> list[str]:
    return [
        BINARY,
        f"--config.file={config}",
        f"--storage.path={data_dir}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--cluster.listen-address=",  # one instance: no gossip port to collide with others
        "--log.level=warn",
    ]


def register(run_dir: Path, name: str, port: int) -> None:
    """Tell the cluster's Prometheus to send its alerts here (file_sd, picked up within a second)."""
    directory = prometheus.alertmanager_sd_dir(run_dir)
    tmp = directory / f".{name}.json.tmp"
    tmp.write_text(json.dumps([{"targets": [f"127.0.0.1:{port}"]}]))
    os.replace(tmp, directory / f"{name}.json")


def unregister(run_dir: Path, name: str) -> None:
    (prometheus.alertmanager_sd_dir(run_dir) / f"{name}.json").unlink(missing_ok=True)


@contextlib.contextmanager
def running(run_dir: Path, name: str, webhook_url: str, token_file: Path) -> Iterator[str]:
    """A real Alertmanager, sent the cluster Prometheus' alerts, calling `webhook_url`; yields its URL."""
    (port,) = free_ports(1)
    home = run_dir / f"alertmanager-{name}"
    shutil.rmtree(home, ignore_errors=True)
    home.mkdir(parents=True)
    config = home / "alertmanager.yml"
    write_config(config, webhook_url, token_file)
    info = procs.spawn(
        "alertmanager",
        argv(config, home / "data", port),
        run_dir / "logs" / f"alertmanager-{name}.log",
        die_with_parent=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:

        def ready() -> bool:
            try:
                with urllib.request.urlopen(f"{url}/-/ready", timeout=2) as resp:
                    return bool(resp.status == 200)
            except OSError:
                return False

        procs.wait_until(ready, timeout_s=30, what="alertmanager /-/ready", alive=[info])
        register(run_dir, name, port)
        yield url
    finally:
        unregister(run_dir, name)
        procs.stop(info)
