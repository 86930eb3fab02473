"""The run state of one cluster: written by `up`, read by `down` and by pytest sessions that reuse it."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from e2e.cluster.procs import ProcessInfo


@dataclass
class ClusterState:
    name: str
    run_dir: Path
    scratch_dir: Path  # etcd and Prometheus data, deleted on stop
    bin_dir: Path
    kubeconfig: Path
    apiserver_url: str
    prometheus_url: str
    file_sd_dir: Path  # one JSON file per agent group; Prometheus picks changes up within a second
    processes: list[ProcessInfo] = field(default_factory=list)

    @property
    def kubectl_bin(self) -> Path:
        return self.bin_dir / "kubectl"

    @property
    def state_file(self) -> Path:
        return self.run_dir / "state.json"

    def process(self, name: str) -> ProcessInfo:
        return next(p for p in self.processes if p.name == name)

    def save(self) -> None:
        data = {
            "name": self.name,
            "run_dir": str(self.run_dir),
            "scratch_dir": str(self.scratch_dir),
            "bin_dir": str(self.bin_dir),
            "kubeconfig": str(self.kubeconfig),
            "apiserver_url": self.apiserver_url,
            "prometheus_url": self.prometheus_url,
            "file_sd_dir": str(self.file_sd_dir),
            "processes": [p.to_json() for p in self.processes],
        }
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=2) + "\n")
        os.replace(tmp, self.state_file)

    @classmethod
    def load(cls, state_file: Path) -> ClusterState:
        data = json.loads(state_file.read_text())
        return cls(
            name=data["name"],
            run_dir=Path(data["run_dir"]),
            scratch_dir=Path(data["scratch_dir"]),
            bin_dir=Path(data["bin_dir"]),
            kubeconfig=Path(data["kubeconfig"]),
            apiserver_url=data["apiserver_url"],
            prometheus_url=data["prometheus_url"],
            file_sd_dir=Path(data["file_sd_dir"]),
            processes=[ProcessInfo.from_json(p) for p in data["processes"]],
        )
