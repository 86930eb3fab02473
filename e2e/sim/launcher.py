"""Start simulated agents as separate processes and register them with Prometheus via file_sd.

    group = start_agents(namespace, {"legacy": {}, "candidate": {"error_ratio": 0.1}}, ...,
                         kubeconfig=cluster.kubeconfig)

With a kubeconfig, the pods labelled agent-rollout.dev/version=<version> in the namespace follow their
agent process, as with a kubelet's readiness probe (e2e/sim/readiness.py): they are Ready while the
agent serves, Ready=False (and their Deployment's availableReplicas drops) while it does not.
To make a version unavailable for real and bring it back:

    group.kill("candidate")    # SIGKILL, a crash: its pods turn Ready=False within about a second
    group.stop("candidate")    # SIGTERM, a clean shutdown: the same for the pods
    group.start("candidate")   # the same version again on the same port (so routes and URLs hold),
                               # with the profile it was launched with and counters from 0 (a restart)
    group.close()              # the end: every agent, the readiness bridge, the Prometheus target file

A stopped agent stays registered with Prometheus (its target reads up=0, as a crashed pod's would).
`stop()` without versions is `close()`, for callers that tear the whole group down.
"""

from __future__ import annotations

import json
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from e2e.cluster import procs, prometheus
from e2e.cluster.paths import REPO_ROOT
from e2e.sim.profile import FaultProfile
from e2e.sim.readiness import ProbeTarget, ReadinessBridge

START_TIMEOUT_S = 20.0


def _http(method: str, url: str, data: Any = None, timeout_s: float = 10.0) -> tuple[int, Any]:
    body = None if data is None else json.dumps(data).encode()
    req = urllib.request.Request(url, data=body, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:
            return resp.status, json.load(resp)
    except urllib.error.HTTPError as e:  # agent errors are answers too (simulated 500s)
        return e.code, json.load(e)


@dataclass
class SimAgent:
    """A handle on one agent process; `argv` starts it again (on the same port)."""

    version: str
    port: int
    process: procs.ProcessInfo
    argv: list[str]
    port_file: Path
    die_with_parent: bool = True

    def alive(self) -> bool:
        return procs.is_running(self.process)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def profile(self) -> dict[str, Any]:
        return dict(_http("GET", f"{self.url}/profile")[1])

    def set_profile(self, **changes: Any) -> dict[str, Any]:
        """Change the fault profile while the agent runs, e.g. set_profile(error_ratio=0.2)."""
        status, body = _http("POST", f"{self.url}/profile", changes)
        if status != 200:
            raise ValueError(f"agent {self.version} refused profile {changes}: {body}")
        return dict(body)

    def stats(self) -> dict[str, Any]:
        """{"version", "requests", "by_code": {"200": n, ...}} counted by the agent itself."""
        return dict(_http("GET", f"{self.url}/stats")[1])

    def invoke(self, n: int = 1) -> list[int]:
        """n direct calls, bypassing any route; returns the HTTP statuses."""
        return [_http("POST", f"{self.url}/invoke", {"input": f"direct call {i}"})[0] for i in range(n)]


@dataclass
class AgentGroup:
    """The agents of one namespace, registered as one file_sd group."""

    namespace: str
    agents: dict[str, SimAgent]
    file_sd_dir: Path
    prometheus_url: str
    kubeconfig: Path | None = None  # set: the pods of each version follow its agent (readiness bridge)
    group: str = field(init=False)
    bridge: ReadinessBridge | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        self.group = f"agents-{self.namespace}"
        if self.kubeconfig is not None:
            self.bridge = ReadinessBridge(self.kubeconfig, self.namespace, self._probe_targets)

    def _probe_targets(self) -> dict[str, ProbeTarget]:
        return {v: ProbeTarget(alive=a.alive, healthz_url=f"{a.url}/healthz") for v, a in self.agents.items()}

    def __getitem__(self, version: str) -> SimAgent:
        return self.agents[version]

    def url(self, version: str) -> str:
        return self.agents[version].url

    def urls(self) -> dict[str, str]:
        return {v: a.url for v, a in self.agents.items()}

    def register(self) -> None:
        targets = [(a.address, {"namespace": self.namespace}) for a in self.agents.values()]
        prometheus.write_targets(self.file_sd_dir, self.group, targets)

    def wait_scraped(self, timeout_s: float = 20.0) -> None:
        """Until Prometheus has scraped every agent of the group at least once."""
        want = {a.address for a in self.agents.values()}

        def all_up() -> bool:
            result = prometheus.query(self.prometheus_url, f'up{{namespace="{self.namespace}"}} == 1')
            return want <= {r["metric"].get("instance") for r in result}

        procs.wait_until(
            all_up,
            timeout_s=timeout_s,
            interval_s=0.25,
            what=f"Prometheus to scrape agents of {self.namespace}",
            alive=[a.process for a in self.agents.values()],
        )

    def _named(self, versions: tuple[str, ...]) -> list[SimAgent]:
        unknown = sorted(set(versions) - set(self.agents))
        if unknown:
            raise KeyError(f"no agent {unknown} in {self.namespace}; have {sorted(self.agents)}")
        return [self.agents[v] for v in versions]

    def kill(self, *versions: str) -> None:
        """SIGKILL the named agents (a crash); their pods turn Ready=False."""
        for agent in self._named(versions):
            procs.kill(agent.process)
        self._poke()

    def stop(self, *versions: str) -> None:
        """Stop the named agents (SIGTERM); with no version, `close()` the whole group."""
        if not versions:
            self.close()
            return
        procs.stop_all([a.process for a in self._named(versions)], grace_s=3.0)
        self._poke()

    def start(self, *versions: str, timeout_s: float = START_TIMEOUT_S) -> None:
        """Start stopped or killed agents again, on their port; returns once they listen."""
        for agent in self._named(versions):
            if agent.alive():
                continue
            agent.port_file.unlink(missing_ok=True)
            agent.process = procs.spawn(
                f"agent-{agent.version}",
                [*agent.argv, "--port", str(agent.port)],
                Path(agent.process.log),
                cwd=REPO_ROOT,
                die_with_parent=agent.die_with_parent,
            )
            procs.wait_until(
                agent.port_file.exists,
                timeout_s=timeout_s,
                what=f"agent {agent.version} to listen again on {agent.port}",
                alive=[agent.process],
            )
        self._poke()

    def close(self) -> None:
        if self.bridge is not None:
            self.bridge.close()
        prometheus.remove_targets(self.file_sd_dir, self.group)
        procs.stop_all([a.process for a in self.agents.values()], grace_s=3.0)

    def _poke(self) -> None:
        if self.bridge is not None:
            self.bridge.poke()


def start_agents(
    namespace: str,
    versions: Mapping[str, FaultProfile | Mapping[str, Any]],
    *,
    file_sd_dir: Path,
    prometheus_url: str,
    log_dir: Path,
    die_with_parent: bool = True,
    seed: int | None = None,
    kubeconfig: Path | None = None,
) -> AgentGroup:
    """One process per version; returns once every agent listens and is registered for scraping.

    With a kubeconfig, a readiness bridge makes the pods of each version follow its agent (module doc).
    """
    pending: list[tuple[str, Path, procs.ProcessInfo, list[str]]] = []
    log_dir.mkdir(parents=True, exist_ok=True)
    try:
        for i, (version, profile) in enumerate(versions.items()):
            p = profile if isinstance(profile, FaultProfile) else FaultProfile().updated(profile)
            port_file = log_dir / f"{namespace}-{version}.port"
            port_file.unlink(missing_ok=True)
            argv = [
                sys.executable,
                "-m",
                "e2e.sim.agent",
                "--version",
                version,
                "--port-file",
                str(port_file),
                "--profile",
                json.dumps(p.to_json()),
            ]
            if seed is not None:
                argv += ["--seed", str(seed + i)]
            info = procs.spawn(
                f"agent-{version}",
                argv,
                log_dir / f"{namespace}-{version}.log",
                cwd=REPO_ROOT,
                die_with_parent=die_with_parent,
            )
            pending.append((version, port_file, info, argv))
        agents: dict[str, SimAgent] = {}
        deadline = time.monotonic() + START_TIMEOUT_S
        for version, port_file, info, argv in pending:
            procs.wait_until(
                port_file.exists,
                timeout_s=max(0.1, deadline - time.monotonic()),
                what=f"agent {version} to listen",
                alive=[info],
            )
            agents[version] = SimAgent(
                version=version,
                port=int(port_file.read_text()),
                process=info,
                argv=argv,
                port_file=port_file,
                die_with_parent=die_with_parent,
            )
    except Exception:
        procs.stop_all([info for _, _, info, _ in pending])
        raise
    group = AgentGroup(
        namespace=namespace,
        agents=agents,
        file_sd_dir=file_sd_dir,
        prometheus_url=prometheus_url,
        kubeconfig=kubeconfig,
    )
    group.register()
    return group
