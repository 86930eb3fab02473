"""Run the project's shadow comparator (agent_rollout.comparator) as a local process for tests and benchmarks.

    comparator = start_comparator(legacy_url, candidate_url, log_dir=..., args=["--mode", "json"])
    comparator.counts()   # {"match": 12.0, "mismatch": 1.0, ...} from its /metrics
    comparator.close()

It is the same console entry point the chart's comparator Deployment runs, on loopback ports of its own.
"""

from __future__ import annotations

import json
import sys
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from e2e.cluster import procs, prometheus
from e2e.cluster.paths import REPO_ROOT

START_TIMEOUT_S = 20.0


@dataclass
class SimComparator:
    process: procs.ProcessInfo
    port: int
    admin_port: int
    registered: tuple[Path, str] | None = None  # the file_sd dir and group it is scraped through

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    def counts(self, metric: str = "agent_shadow_comparisons_total") -> dict[str, float]:
        """outcome -> count of one of its counters (the noise floor: agent_shadow_noise_comparisons_total)."""
        with urllib.request.urlopen(f"{self.admin_url}/metrics", timeout=5) as resp:
            text = resp.read().decode()
        return {
            s.labels["outcome"]: s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
            if s.name == metric
        }

    def register(self, file_sd_dir: Path, namespace: str) -> None:
        """Scraped by the e2e Prometheus with the agents (file_sd), so shadowAgreement gates read its
        counters; the target's namespace label is the one the gates select on."""
        prometheus.write_targets(
            file_sd_dir,
            f"comparator-{namespace}",
            [(f"127.0.0.1:{self.admin_port}", {"namespace": namespace})],
        )
        self.registered = (file_sd_dir, f"comparator-{namespace}")

    def close(self) -> None:
        if self.registered is not None:
            prometheus.remove_targets(*self.registered)
        procs.stop_all([self.process], grace_s=3.0)


def start_comparator(
    legacy_url: str,
    candidate_url: str,
    *,
    log_dir: Path,
    name: str = "comparator",
    args: Sequence[str] = (),
    die_with_parent: bool = True,
) -> SimComparator:
    log_dir.mkdir(parents=True, exist_ok=True)
    port_file = log_dir / f"{name}.ports"
    port_file.unlink(missing_ok=True)
    argv = [sys.executable, "-m", "agent_rollout.comparator", "--legacy-url", legacy_url]
    argv += ["--candidate-url", candidate_url, "--host", "127.0.0.1", "--port", "0", "--admin-port", "0"]
    argv += ["--port-file", str(port_file), *args]
    info = procs.spawn(name, argv, log_dir / f"{name}.log", cwd=REPO_ROOT, die_with_parent=die_with_parent)
    try:
        procs.wait_until(port_file.exists, timeout_s=START_TIMEOUT_S, what=f"{name} to listen", alive=[info])
    except Exception:
        procs.stop_all([info])
        raise
    ports = json.loads(port_file.read_text())
    return SimComparator(info, int(ports["port"]), int(ports["adminPort"]))
