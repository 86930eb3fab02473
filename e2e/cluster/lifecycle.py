"""Start, check and stop a whole local cluster: etcd, control plane, kwok and Prometheus."""

from __future__ import annotations

import functools
import json
import logging
import shutil
import ssl
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from e2e.cluster import components, procs, prometheus, tools
from e2e.cluster.kubectl import kubectl_for, run_kubectl, wait_established
from e2e.cluster.paths import RUN_ROOT, scratch_root
from e2e.cluster.pki import Pki, make_pki
from e2e.cluster.ports import free_ports
from e2e.cluster.state import ClusterState

STARTUP_TIMEOUT_S = 90.0
GATEWAY_CRDS = ("httproutes.gateway.networking.k8s.io", "gateways.gateway.networking.k8s.io")


log = logging.getLogger(__name__)


class ClusterStartError(RuntimeError):
    """Carries the tail of every component log; the run directory is kept for a closer look."""


def _get(url: str, context: ssl.SSLContext | None = None, timeout_s: float = 2.0) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=timeout_s, context=context) as resp:
        return resp.status, resp.read().decode(errors="replace")


def _client_tls(pki: Pki) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(pki.ca_cert))
    ctx.load_cert_chain(str(pki.admin_cert), str(pki.admin_key))
    return ctx


def _self_signed_tls() -> ssl.SSLContext:
    # controller-manager and scheduler serve /healthz on a throwaway self-signed cert; only liveness matters.
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def _ok(url: str, context: ssl.SSLContext | None = None, body: str | None = None) -> bool:
    status, text = _get(url, context)
    return status == 200 and (body is None or body in text)


def logs_tail(state: ClusterState, lines: int = 25) -> str:
    """Processes that died come first: their last lines usually say what went wrong."""
    ordered = sorted(state.processes, key=procs.is_running)
    parts = []
    for p in ordered:
        status = "running" if procs.is_running(p) else "EXITED"
        parts.append(f"--- {p.name} ({status}; {p.log}) ---\n{procs.tail(p.log, lines)}")
    return "\n".join(parts)


def _fresh_dir(path: Path) -> Path:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def start_cluster(name: str, *, die_with_parent: bool) -> ClusterState:
    """die_with_parent ties the processes to the calling process (pytest); `up` leaves them running."""
    t0 = time.monotonic()

    def step(what: str) -> None:
        log.info("[%5.1fs] %s", time.monotonic() - t0, what)

    tools.ensure_system_deps()
    bin_dir = tools.kube_bin_dir()
    crd_dir = tools.gateway_api_crd_dir()
    step(f"binaries in {bin_dir}, Gateway API CRDs in {crd_dir}")

    run_dir = _fresh_dir(RUN_ROOT / name)
    scratch = _fresh_dir(scratch_root() / name)
    logs = run_dir / "logs"
    pki = make_pki(run_dir / "pki")
    etcd_client, etcd_peer, api_port, cm_port, sched_port, prom_port = free_ports(6)
    file_sd_dir = _fresh_dir(run_dir / "file_sd")
    state = ClusterState(
        name=name,
        run_dir=run_dir,
        scratch_dir=scratch,
        bin_dir=bin_dir,
        kubeconfig=run_dir / "kubeconfig",
        apiserver_url=f"https://127.0.0.1:{api_port}",
        prometheus_url=f"http://127.0.0.1:{prom_port}",
        file_sd_dir=file_sd_dir,
    )

    def spawn(proc_name: str, argv: list[str], env: dict[str, str] | None = None) -> procs.ProcessInfo:
        info = procs.spawn(
            proc_name, argv, logs / f"{proc_name}.log", env=env, die_with_parent=die_with_parent
        )
        state.processes.append(info)
        state.save()  # saved after every spawn so `down` can clean up even a half-started cluster
        return info

    try:
        etcd = spawn("etcd", components.etcd_argv(bin_dir, scratch / "etcd", etcd_client, etcd_peer))
        etcd_url = f"http://127.0.0.1:{etcd_client}"
        procs.wait_until(
            lambda: _ok(f"{etcd_url}/health", body='"true"'), timeout_s=30, what="etcd /health", alive=[etcd]
        )

        step("etcd ready")
        audit_policy = run_dir / "audit-policy.yaml"
        components.write_audit_policy(audit_policy)
        apiserver = spawn(
            "kube-apiserver",
            components.apiserver_argv(
                bin_dir,
                pki,
                etcd_url,
                api_port,
                run_dir / "apiserver-certs",
                audit_policy,
                components.audit_log_path(run_dir),
            ),
        )
        tls = _client_tls(pki)
        procs.wait_until(
            lambda: _ok(f"{state.apiserver_url}/readyz", tls),
            timeout_s=STARTUP_TIMEOUT_S,
            what="kube-apiserver /readyz",
            alive=[apiserver, etcd],
        )
        components.write_kubeconfig(state.kubeconfig, state.apiserver_url, pki)
        step("kube-apiserver ready")

        # Independent of each other: start them all, then wait for all.
        kwok_config = run_dir / "kwok.yaml"
        components.write_kwok_config(kwok_config)
        prom_config = run_dir / "prometheus.yml"
        prometheus.write_config(prom_config, file_sd_dir)
        cm = spawn(
            "kube-controller-manager",
            components.controller_manager_argv(bin_dir, pki, state.kubeconfig, cm_port, run_dir),
        )
        sched = spawn(
            "kube-scheduler", components.scheduler_argv(bin_dir, state.kubeconfig, sched_port, run_dir)
        )
        kwok = spawn("kwok", components.kwok_argv(bin_dir, state.kubeconfig, kwok_config))
        prom = spawn("prometheus", prometheus.prometheus_argv(prom_config, scratch / "prometheus", prom_port))

        def kubectl(*args: str, stdin: str | None = None) -> None:
            run_kubectl(state.kubectl_bin, state.kubeconfig, *args, stdin=stdin, timeout_s=STARTUP_TIMEOUT_S)

        kubectl("apply", "-f", "-", stdin=json.dumps(components.fake_node_manifest()))
        # The CRD apply takes seconds (big schemas); let it overlap with the components' start.
        # Server-side apply: the Gateway CRDs are too big for the last-applied annotation.
        with ThreadPoolExecutor(max_workers=1) as pool:
            crds_applied = pool.submit(
                kubectl, "apply", "--server-side", "--force-conflicts", "-f", str(crd_dir)
            )
            _wait_for_components(state, cm, cm_port, sched, sched_port, prom)
            crds_applied.result()
        step("controller-manager, scheduler, prometheus healthy; Gateway API CRDs applied")
        wait_established(kubectl_for(state), *GATEWAY_CRDS)
        procs.wait_until(
            lambda: _node_ready(state), timeout_s=STARTUP_TIMEOUT_S, what="kwok node Ready", alive=[kwok]
        )
        # Pods are rejected until the namespace's `default` ServiceAccount exists; wait for its controller.
        procs.wait_until(
            lambda: (
                run_kubectl(
                    state.kubectl_bin, state.kubeconfig, "get", "serviceaccount", "default", "-n", "default"
                ).returncode
                == 0
            ),
            timeout_s=STARTUP_TIMEOUT_S,
            what="default ServiceAccount",
            alive=[cm],
        )
        step("node Ready, default ServiceAccount present: cluster up")
    except Exception as e:
        tail = logs_tail(state)
        procs.stop_all(state.processes)
        shutil.rmtree(scratch, ignore_errors=True)
        raise ClusterStartError(f"cluster {name!r} failed to start: {e}\nlogs kept in {logs}\n{tail}") from e
    return state


def _wait_for_components(
    state: ClusterState,
    cm: procs.ProcessInfo,
    cm_port: int,
    sched: procs.ProcessInfo,
    sched_port: int,
    prom: procs.ProcessInfo,
) -> None:
    checks = [
        (cm, f"https://127.0.0.1:{cm_port}/healthz", _self_signed_tls()),
        (sched, f"https://127.0.0.1:{sched_port}/healthz", _self_signed_tls()),
        (prom, f"{state.prometheus_url}/-/ready", None),
    ]
    for info, url, tls in checks:
        procs.wait_until(
            functools.partial(_ok, url, tls),
            timeout_s=STARTUP_TIMEOUT_S,
            what=f"{info.name} {url}",
            alive=[info],
        )


def _node_ready(state: ClusterState) -> bool:
    out = run_kubectl(
        state.kubectl_bin,
        state.kubeconfig,
        "get",
        "node",
        components.FAKE_NODE_NAME,
        "-o",
        "jsonpath={.status.conditions[?(@.type=='Ready')].status}",
    ).stdout
    return out.strip() == "True"


def is_healthy(state: ClusterState) -> bool:
    if not all(procs.is_running(p) for p in state.processes):
        return False
    try:
        pki_dir = state.run_dir / "pki"
        ctx = ssl.create_default_context(cafile=str(pki_dir / "ca.crt"))
        ctx.load_cert_chain(str(pki_dir / "admin.crt"), str(pki_dir / "admin.key"))
        return _ok(f"{state.apiserver_url}/readyz", ctx) and _ok(f"{state.prometheus_url}/-/ready")
    except OSError:
        return False


# (start, end) wall-clock seconds of outages caused on purpose (restart_component), plus a grace period
# after each: what clients log meanwhile (refused connections, an authorizer not ready) is expected.
OUTAGES: list[tuple[float, float]] = []
OUTAGE_GRACE_S = 15.0


def in_outage(at: float) -> bool:
    return any(start - 1 <= at <= end for start, end in OUTAGES)


def restart_component(state: ClusterState, name: str, down_s: float, timeout_s: float = 60.0) -> None:
    """An outage of one component for tests: SIGKILL it, wait `down_s`, start it again with the same
    command line (read from /proc), and wait until the cluster is healthy again."""
    started = time.time()
    OUTAGES.append((started, started + down_s + timeout_s + OUTAGE_GRACE_S))  # until we know the end
    info = next(p for p in state.processes if p.name == name)
    argv = [a.decode() for a in Path(f"/proc/{info.pid}/cmdline").read_bytes().split(b"\0")[:-1]]
    procs.kill(info)
    time.sleep(down_s)
    # Not tied to this process: a cluster reused across test runs (`make cluster-up`) must outlive it;
    # stop_cluster stops it with the rest.
    again = procs.spawn(name, argv, Path(info.log))
    state.processes[state.processes.index(info)] = again
    state.save()
    procs.wait_until(lambda: is_healthy(state), timeout_s=timeout_s, what=f"{name} back", alive=[again])
    OUTAGES[-1] = (started, time.time() + OUTAGE_GRACE_S)


def stop_cluster(state: ClusterState, *, keep_logs: bool = True) -> None:
    procs.stop_all(state.processes)
    shutil.rmtree(state.scratch_dir, ignore_errors=True)
    state.state_file.unlink(missing_ok=True)
    if not keep_logs:
        shutil.rmtree(state.run_dir, ignore_errors=True)


def load_state(name: str) -> ClusterState | None:
    state_file = RUN_ROOT / name / "state.json"
    return ClusterState.load(state_file) if state_file.is_file() else None
