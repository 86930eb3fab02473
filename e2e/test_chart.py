"""The Helm chart as users get it: linted, validated by the real apiserver, installed, upgraded, uninstalled.

Everything runs the repo's pinned helm (built from its Go module) against the session's control plane.
No kubelet runs here: kwok marks the chart's pod Running, so `helm install --wait` behaves as on a real
cluster, and the operator itself runs as a local process standing in for the pod, with a token of the
ServiceAccount the release installed and the exact arguments of the installed Deployment.

The module has a control plane of its own: the rest of the suite runs an operator cluster-wide under a
status policy that admits only that operator, and a release installed here has a policy of its own;
on one control plane each would refuse the other's status writes.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent_rollout import api
from agent_rollout.comparator.app import parse_args as parse_comparator_args
from agent_rollout.comparator.compare import Comparison, Mode
from agent_rollout.deletion import FINALIZER
from e2e.cluster import ClusterState, chart, identity, tools
from e2e.cluster.kubeapi import KubeApi
from e2e.cluster.kubectl import kubectl_for, run_kubectl
from e2e.cluster.lifecycle import start_cluster, stop_cluster
from e2e.cluster.paths import REPO_ROOT
from e2e.cluster.procs import set_parent_death_signal
from e2e.rollout.scene import wait_until

Kubectl = Callable[..., "subprocess.CompletedProcess[str]"]
STANDARD_LABELS = (
    "app.kubernetes.io/name",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/version",
    "app.kubernetes.io/managed-by",
    "app.kubernetes.io/part-of",
    "helm.sh/chart",
)
CLUSTER_SCOPED = {
    "ClusterRole",
    "ClusterRoleBinding",
    "ValidatingAdmissionPolicy",
    "ValidatingAdmissionPolicyBinding",
}
# Every optional value set, so a typo in a rarely used branch of a template cannot hide.
EVERY_OPTION: dict[str, Any] = {
    "image": {"digest": "sha256:" + "ab" * 32},
    "imagePullSecrets": [{"name": "registry"}],
    "commonLabels": {"team": "platform"},
    "serviceAccount": {"annotations": {"example.com/role": "operator"}},
    "logLevel": "debug",
    "env": [{"name": "AGENT_ROLLOUT_KUBE_QPS", "value": "20"}],
    "podAnnotations": {"example.com/scrape": "false"},
    "metrics": {
        "port": 9100,
        "serviceAnnotations": {"prometheus.io/scrape": "true"},
        "prometheusRule": {"enabled": True, "labels": {"release": "prometheus"}},  # no CRD here: not rendered
        "dashboard": {"enabled": True},
    },
    "alertReceiver": {"enabled": True, "port": 9443, "tokenSecret": {"name": "alert-token", "key": "bearer"}},
    "comparator": {
        "enabled": True,
        "legacyUrl": "http://support-legacy.support.svc:80",
        "candidateUrl": "http://support-candidate.support.svc:80",
        "namespaceLabel": "support",
        "version": "v2",
        "compare": {
            "mode": "text",
            "fields": ["/answer"],
            "threshold": 0.7,
            "judgeUrl": "http://judge:80/v1",
        },
        "noiseShare": 0.1,
        "mismatchSample": 50,
        "timeoutSeconds": 20,
        "maxInFlight": 64,
        "maxBodyBytes": 262144,
        "replicas": 2,
        "port": 8088,
        "adminPort": 9099,
        "serviceAnnotations": {"prometheus.io/scrape": "true", "prometheus.io/port": "9099"},
        "resources": {"requests": {"cpu": "20m"}},
    },
    "notifications": {
        "secretsInWatchedNamespaces": True,
        "sinks": [
            {
                "name": "oncall",
                "type": "slack",
                "urlFrom": {"secretKeyRef": {"name": "oncall-slack", "key": "url"}},
                "events": ["RolledBack", "Escalated"],
                "namespaces": ["support"],
            }
        ],
    },
    "podLabels": {"example.com/tier": "control"},
    "priorityClassName": "system-cluster-critical",
    "nodeSelector": {"kubernetes.io/os": "linux"},
    "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "ops", "effect": "NoSchedule"}],
    "affinity": {
        "nodeAffinity": {
            "preferredDuringSchedulingIgnoredDuringExecution": [
                {"weight": 1, "preference": {"matchExpressions": [{"key": "ops", "operator": "Exists"}]}}
            ]
        }
    },
}


@dataclass
class Helm:
    """The repo's helm with the session's kubeconfig and its own config/cache dirs (nothing of ~ is read)."""

    binary: Path
    env: dict[str, str]

    def __call__(
        self, *args: str, check: bool = True, timeout_s: float = 180
    ) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [str(self.binary), *args], capture_output=True, text=True, timeout=timeout_s, env=self.env
        )
        if check and done.returncode != 0:
            raise AssertionError(f"helm {' '.join(args)} failed (rc={done.returncode}):\n{done.stderr}")
        return done


@pytest.fixture(scope="module")
def cluster() -> Iterator[ClusterState]:
    state = start_cluster(f"chart-{os.getpid()}", die_with_parent=True)
    try:
        yield state
    finally:
        stop_cluster(state)


@pytest.fixture(scope="module")
def kube_api(cluster: ClusterState) -> Iterator[KubeApi]:
    client = KubeApi(cluster.kubeconfig)
    yield client
    client.close()


@pytest.fixture(scope="module")
def kubectl(cluster: ClusterState) -> Kubectl:
    return kubectl_for(cluster)


@pytest.fixture(scope="module")
def helm(cluster: ClusterState, tmp_path_factory: pytest.TempPathFactory) -> Helm:
    home = tmp_path_factory.mktemp("helm")
    env = {
        **os.environ,
        "KUBECONFIG": str(cluster.kubeconfig),
        "HELM_CONFIG_HOME": str(home / "config"),
        "HELM_CACHE_HOME": str(home / "cache"),
        "HELM_DATA_HOME": str(home / "data"),
    }
    return Helm(tools.helm_bin(), env)


def values_file(directory: Path, name: str, values: dict[str, Any]) -> str:
    path = directory / name
    path.write_text(yaml.safe_dump(values))
    return str(path)


def create_namespace(kubectl: Kubectl, name: str, labels: dict[str, str] | None = None) -> None:
    doc = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels or {}}}
    kubectl("apply", "-f", "-", stdin=yaml.safe_dump(doc))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_status(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return int(response.status)
    except OSError:
        return None


def get_json(kubectl: Kubectl, *args: str) -> Any:
    return json.loads(kubectl("get", *args, "-o", "json").stdout)


# ---------------------------------------------------------------- rendering


def test_helm_lint_is_clean_in_cluster_and_namespaced_mode(helm: Helm) -> None:
    for extra in ([], ["--set", "watchNamespaces={team-a,team-b}"]):
        done = helm("lint", "--strict", str(chart.CHART_DIR), *extra)
        assert "0 chart(s) failed" in done.stdout, done.stdout


@pytest.mark.parametrize(
    ("values", "complaint"),
    [
        ({"replicas": 0}, "/replicas"),
        ({"leaderElection": {"leaseDuration": 0, "renewDeadline": 10, "retryPeriod": 2}}, "/leaderElection"),
        ({"image": {"pullPolicy": "Sometimes"}}, "/image/pullPolicy"),
        ({"watchNamespaces": ["Team_A"]}, "/watchNamespaces/0"),
        ({"replica": 1}, "replica"),  # a misspelt key is refused, not ignored
        ({"serviceAccount": {"create": "yes"}}, "/serviceAccount/create"),
        ({"comparator": {"enabled": True, "candidateUrl": "http://c"}}, "/comparator/legacyUrl"),
        ({"comparator": {"compare": {"mode": "fuzzy"}}}, "/comparator/compare/mode"),
        ({"comparator": {"noiseShare": 1.5}}, "/comparator/noiseShare"),
        ({"comparator": {"legacyUrl": "legacy:80"}}, "/comparator/legacyUrl"),  # a URL, with its scheme
    ],
)
def test_values_the_schema_refuses_fail_before_anything_is_rendered(
    helm: Helm, tmp_path: Path, values: dict[str, Any], complaint: str
) -> None:
    done = helm(
        "template", "x", str(chart.CHART_DIR), "-f", values_file(tmp_path, "v.yaml", values), check=False
    )
    assert done.returncode != 0 and complaint in done.stderr, done.stderr


def test_every_object_has_the_standard_labels_and_releases_never_share_names_or_pods() -> None:
    one = chart.render({}, release="ops", namespace="team-a")
    same_name_elsewhere = chart.render({}, release="ops", namespace="team-b")
    neighbour = chart.render({}, release="ops2", namespace="team-a")
    for manifest in one:
        labels = manifest["metadata"].get("labels", {})
        assert [k for k in STANDARD_LABELS if k not in labels] == [], manifest["kind"]
        assert labels["app.kubernetes.io/instance"] == "ops"
        assert labels["app.kubernetes.io/managed-by"] == "Helm"

    def cluster_names(rendering: list[dict[str, Any]]) -> set[str]:
        return {m["metadata"]["name"] for m in rendering if m["kind"] in CLUSTER_SCOPED}

    assert len(cluster_names(one)) == 2 and cluster_names(one) & cluster_names(same_name_elsewhere) == set()

    def deployment(rendering: list[dict[str, Any]]) -> dict[str, Any]:
        return next(m for m in rendering if m["kind"] == "Deployment")

    selector = deployment(one)["spec"]["selector"]["matchLabels"]
    assert selector.items() <= deployment(one)["spec"]["template"]["metadata"]["labels"].items()
    assert not selector.items() <= deployment(neighbour)["spec"]["template"]["metadata"]["labels"].items()


def test_the_comparator_is_off_by_default_and_on_runs_the_same_image_with_the_values_as_its_flags() -> None:
    assert {m["kind"] for m in chart.render({}) if "comparator" in m["metadata"]["name"]} == set()
    rendering = chart.render(EVERY_OPTION, release="ops", namespace="team-a")
    comparator = [m for m in rendering if m["metadata"]["name"] == "ops-agent-rollout-comparator"]
    assert sorted(m["kind"] for m in comparator) == ["Deployment", "Service"]
    deployment = next(m for m in comparator if m["kind"] == "Deployment")
    operator = next(m for m in rendering if m["kind"] == "Deployment" and m is not deployment)
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"] == operator["spec"]["template"]["spec"]["containers"][0]["image"]
    assert container["command"] == ["agent-rollout-comparator"]  # a console script of the package
    assert pod["automountServiceAccountToken"] is False
    assert container["securityContext"]["readOnlyRootFilesystem"] is True

    # The rendered flags are the comparator's own: its parser reads them back as the values say.
    settings = parse_comparator_args(container["args"])
    assert (settings.legacy_url, settings.candidate_url) == (
        "http://support-legacy.support.svc:80",
        "http://support-candidate.support.svc:80",
    )
    assert (settings.namespace, settings.version, settings.judge_url) == (
        "support",
        "v2",
        "http://judge:80/v1",
    )
    assert settings.comparison == Comparison(Mode.TEXT, ("/answer",), 0.7)
    assert (settings.noise_share, settings.mismatch_sample, settings.max_in_flight) == (0.1, 50, 64)
    assert (settings.timeout_s, settings.max_body_bytes, settings.port, settings.admin_port) == (
        20,
        262144,
        8088,
        9099,
    )

    # Neither Deployment's pods are selected by the other's selectors, nor by the operator's Service.
    comparator_pods = deployment["spec"]["template"]["metadata"]["labels"].items()
    operator_pods = operator["spec"]["template"]["metadata"]["labels"].items()
    services = {
        m["metadata"]["name"]: m["spec"]["selector"].items() for m in rendering if m["kind"] == "Service"
    }
    assert not operator["spec"]["selector"]["matchLabels"].items() <= comparator_pods
    assert not deployment["spec"]["selector"]["matchLabels"].items() <= operator_pods
    assert not services["ops-agent-rollout"] <= comparator_pods
    assert services["ops-agent-rollout-comparator"] <= comparator_pods
    ports = next(m for m in comparator if m["kind"] == "Service")["spec"]["ports"]
    assert [(p["name"], p["port"]) for p in ports] == [("mirror", 8088), ("admin", 9099)]


def test_the_rendering_with_every_option_set_is_accepted_by_the_apiserver(
    helm: Helm, kubectl: Kubectl, tmp_path: Path
) -> None:
    """Server-side dry-run: the apiserver's own schema and admission judge every object (nothing stored)."""
    watched = f"chart-dry-{secrets.token_hex(3)}"
    create_namespace(kubectl, watched)  # Roles go into the watched namespaces, which must exist
    try:
        for mode in ({}, {"watchNamespaces": [watched]}):
            values = values_file(tmp_path, "v.yaml", {**EVERY_OPTION, **mode})
            rendered = helm("template", "dry", str(chart.CHART_DIR), "-n", "default", "-f", values).stdout
            done = kubectl("apply", "--dry-run=server", "--validate=strict", "-f", "-", stdin=rendered)
            assert "deployment.apps/dry-agent-rollout created (server dry run)" in done.stdout, done.stdout
    finally:
        kubectl("delete", "namespace", watched, "--wait=false")


# ---------------------------------------------------------------- a real release


@contextlib.contextmanager
def operator_standing_in_for_the_pod(
    cluster: ClusterState, kube_api: KubeApi, kubectl: Kubectl, release_namespace: str, deployment: str
) -> Iterator[tuple[str, Path]]:
    """The image's entry point, run locally with the installed Deployment's args and ServiceAccount.

    Yields (health URL, log path); the health URL is the probes' path on a free local port.
    """
    live = get_json(kubectl, "deployment", deployment, "-n", release_namespace)
    pod = live["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["livenessProbe"]["httpGet"]["path"] == container["readinessProbe"]["httpGet"]["path"]
    path = container["livenessProbe"]["httpGet"]["path"]
    port, metrics_port = free_port(), free_port()
    # Local ports instead of the pod's: this process shares the host's network with everything else.
    args = [
        f"--liveness=http://127.0.0.1:{port}{path}"
        if arg.startswith("--liveness=")
        else f"--metrics-port={metrics_port}"
        if arg.startswith("--metrics-port=")
        else arg
        for arg in container["args"]
    ]
    assert len(args) == len(container["args"]) and any(a.startswith("--liveness=") for a in container["args"])
    kubeconfig = identity.service_account_kubeconfig(
        kube_api,
        release_namespace,
        pod["serviceAccountName"],
        cluster.run_dir / f"chart-{release_namespace}.kubeconfig",
    )
    log_path = cluster.run_dir / f"chart-{release_namespace}-operator.log"
    env = {**os.environ, "KUBECONFIG": str(kubeconfig), "PYTHONUNBUFFERED": "1"}
    # What the downward API would give the pod: its name and namespace.
    fields = {"metadata.name": f"{deployment}-stand-in", "metadata.namespace": release_namespace}
    for var in container.get("env", []):
        ref = (var.get("valueFrom") or {}).get("fieldRef")
        env[var["name"]] = fields[ref["fieldPath"]] if ref else var["value"]
    entry_point = REPO_ROOT / ".venv" / "bin" / "agent-rollout-operator"  # the image's ENTRYPOINT
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            [str(entry_point), *args],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=set_parent_death_signal,
        )
    try:
        yield f"http://127.0.0.1:{port}{path}", log_path
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)


def rollout_manifest(namespace: str, name: str, prometheus_url: str) -> dict[str, Any]:
    """A rollout whose Deployments do not exist: the operator holds it and says so in status."""
    return {
        "apiVersion": f"{api.GROUP}/{api.VERSION}",
        "kind": api.KIND,
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "legacy": {"deployment": "legacy"},
            "candidate": {"deployment": "candidate"},
            "traffic": {
                "gatewayAPI": {
                    "httpRoute": "route",
                    "legacyBackend": "legacy",
                    "candidateBackend": "candidate",
                }
            },
            "analysis": {
                "prometheus": {"url": prometheus_url, "timeout": "3s"},
                "interval": "5s",
                "gates": [{"name": "error-rate", "template": "errorRate", "max": 0.01}],
            },
            "steps": [{"setWeight": 10}],
        },
    }


def test_install_run_upgrade_and_uninstall_in_a_pod_security_restricted_namespace(
    helm: Helm, kubectl: Kubectl, kube_api: KubeApi, cluster: ClusterState, tmp_path: Path
) -> None:
    suffix = secrets.token_hex(3)
    release, release_ns = "agent-rollout", f"chart-system-{suffix}"
    team_a, team_b = f"chart-team-a-{suffix}", f"chart-team-b-{suffix}"
    restricted = {
        "pod-security.kubernetes.io/enforce": "restricted",
        "pod-security.kubernetes.io/enforce-version": "latest",
    }
    create_namespace(kubectl, release_ns, restricted)
    for ns in (team_a, team_b):
        create_namespace(kubectl, ns)
    rollout_name = "triage"
    try:
        # --- install: namespaced mode, watching team-a only
        first = values_file(tmp_path, "first.yaml", {"watchNamespaces": [team_a]})
        helm(
            "install",
            release,
            str(chart.CHART_DIR),
            "-n",
            release_ns,
            "-f",
            first,
            "--wait",
            "--timeout",
            "90s",
        )
        deployment = get_json(kubectl, "deployment", release, "-n", release_ns)
        pod_spec = deployment["spec"]["template"]["spec"]
        assert pod_spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert pod_spec["securityContext"]["runAsNonRoot"] is True
        container = pod_spec["containers"][0]
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
        assert container["securityContext"]["allowPrivilegeEscalation"] is False
        # The pod exists: Pod Security "restricted" admitted it (enforced on pods, not Deployments).
        pods = get_json(kubectl, "pods", "-n", release_ns, "-l", f"app.kubernetes.io/instance={release}")
        assert len(pods["items"]) == 1, pods
        assert get_json(kubectl, "roles", "-n", team_a)["items"]
        assert not get_json(kubectl, "roles", "-n", team_b)["items"]

        # The same namespace refuses a pod without seccompProfile: the check above can fail.
        unconfined = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "unconfined", "namespace": release_ns},
            "spec": {**pod_spec, "securityContext": {"runAsNonRoot": True}},
        }
        refused = kubectl("apply", "--dry-run=server", "-f", "-", stdin=json.dumps(unconfined), check=False)
        assert refused.returncode != 0 and "seccompProfile" in refused.stderr, refused.stderr

        # --- the operator, standing in for the pod, serves the probes' endpoint and writes status
        with operator_standing_in_for_the_pod(cluster, kube_api, kubectl, release_ns, release) as (
            health,
            log,
        ):
            wait_until(
                f"{health} to answer 200 (log {log})", lambda: http_status(health) == 200, timeout_s=60
            )
            manifest = rollout_manifest(team_a, rollout_name, cluster.prometheus_url)
            kubectl("apply", "-f", "-", stdin=yaml.safe_dump(manifest))
            status = wait_until(
                f"the operator to write the status of {team_a}/{rollout_name} (log {log})",
                lambda: (
                    get_json(kubectl, api.PLURAL, rollout_name, "-n", team_a).get("status", {}).get("phase")
                ),
                timeout_s=60,
            )
            assert status in {p.value for p in api.Phase}
            # --- upgrade to a changed values file while the operator runs
            second = values_file(
                tmp_path,
                "second.yaml",
                {
                    "watchNamespaces": [team_a, team_b],
                    "logLevel": "debug",
                    "podAnnotations": {"example.com/changed": "yes"},
                },
            )
            helm(
                "upgrade",
                release,
                str(chart.CHART_DIR),
                "-n",
                release_ns,
                "-f",
                second,
                "--wait",
                "--timeout",
                "90s",
            )
        history = json.loads(helm("history", release, "-n", release_ns, "-o", "json").stdout)
        assert [h["revision"] for h in history] == [1, 2] and history[-1]["status"] == "deployed"
        upgraded = get_json(kubectl, "deployment", release, "-n", release_ns)
        args = upgraded["spec"]["template"]["spec"]["containers"][0]["args"]
        assert f"--namespace={team_b}" in args and "--verbose" in args
        assert upgraded["spec"]["template"]["metadata"]["annotations"] == {"example.com/changed": "yes"}
        assert get_json(kubectl, "roles", "-n", team_b)["items"]

        # --- uninstall: every object of the release goes; the CRD and the rollouts stay
        helm("uninstall", release, "-n", release_ns, "--wait", "--timeout", "90s")
        selector = f"app.kubernetes.io/instance={release},app.kubernetes.io/part-of=agent-rollout"
        for ns in (release_ns, team_a, team_b):
            left = kubectl(
                "get", "deployment,serviceaccount,role,rolebinding", "-n", ns, "-l", selector, "-o", "name"
            )
            assert left.stdout.strip() == "", left.stdout
        cluster_left = kubectl(
            "get",
            "clusterrole,clusterrolebinding,validatingadmissionpolicy,validatingadmissionpolicybinding",
            "-o",
            "name",
        )
        assert release_ns not in cluster_left.stdout
        kubectl("get", "crd", f"{api.PLURAL}.{api.GROUP}")
        orphan = get_json(kubectl, api.PLURAL, rollout_name, "-n", team_a)
        # The operator's finalizer comes with its first route write: this rollout (no Deployments, no
        # route here) never moved traffic, so it has none, and its deletion needs no operator.
        assert FINALIZER not in (orphan["metadata"].get("finalizers") or []), orphan["metadata"]
        kubectl("delete", api.PLURAL, rollout_name, "-n", team_a, "--wait=false")
        wait_until(
            "the orphaned rollout to be deleted",
            lambda: kubectl("get", api.PLURAL, rollout_name, "-n", team_a, check=False).returncode != 0,
            timeout_s=30,
        )
    finally:
        helm("uninstall", release, "-n", release_ns, "--ignore-not-found", check=False)
        for ns in (release_ns, team_a, team_b):
            kubectl("delete", "namespace", ns, "--wait=false", check=False)


# ---------------------------------------------------------------- the README, run as written

README = REPO_ROOT / "README.md"
DOCS_BEGIN, DOCS_END = "## Install and operate", "<!-- end of the tested install docs -->"
ARGOCD_DOCS = REPO_ROOT / "docs" / "argocd"


def readme_install_commands() -> list[str]:
    text = README.read_text()
    start = text.index(DOCS_BEGIN)
    section = text[start : text.index(DOCS_END, start)]
    blocks = re.findall(r"^```sh\n(.*?)^```", section, flags=re.S | re.M)
    assert len(blocks) >= 6, blocks
    return blocks


def test_readme_install_docs_run_as_written(tmp_path: Path) -> None:
    """Every shell block of the README's install section, in order, on a control plane of its own.

    Its own: the docs install in cluster mode (a status policy for every namespace), uninstall and
    delete the CRD, which the rest of the suite must not see. The plugin is installed with pipx from
    PyPI and the clone, as the README says; kubectl then finds it on PATH (the venv is not on PATH).
    """
    state = start_cluster(f"readme-{os.getpid()}", die_with_parent=True)
    try:
        kubectl_bin = state.kubectl_bin
        kubectl = lambda *a, **kw: run_kubectl(kubectl_bin, state.kubeconfig, *a, **kw)  # noqa: E731
        # What an Argo CD install leaves for the docs' argocd-cm patch.
        kubectl("create", "namespace", "argocd")
        kubectl("create", "configmap", "argocd-cm", "--namespace", "argocd")
        tools_venv = tmp_path / "tools"
        subprocess.run([sys.executable, "-m", "venv", str(tools_venv)], check=True, timeout=120)
        subprocess.run(
            [str(tools_venv / "bin" / "pip"), "install", "--quiet", "pipx"], check=True, timeout=600
        )
        pipx_bin = tmp_path / "pipx-bin"
        path = [pipx_bin, tools.helm_bin().parent, kubectl_bin.parent, tools_venv / "bin"]
        env = {
            "PATH": os.pathsep.join([*map(str, path), "/usr/local/bin", "/usr/bin", "/bin"]),
            "HOME": str(tmp_path / "home"),
            "KUBECONFIG": str(state.kubeconfig),
            "PIPX_HOME": str(tmp_path / "pipx"),
            "PIPX_BIN_DIR": str(pipx_bin),
            "PIPX_MAN_DIR": str(tmp_path / "pipx-man"),
            "PIP_DISABLE_PIP_VERSION_CHECK": "1",
        }
        script = "set -euxo pipefail\n" + "\n".join(readme_install_commands())
        done = subprocess.run(
            ["bash", "-c", script], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=900
        )
        assert done.returncode == 0, f"README commands failed:\n{done.stdout[-3000:]}\n{done.stderr[-6000:]}"

        from importlib import metadata

        assert f"kubectl-agentrollout {metadata.version('agent-rollout')}" in done.stdout
        # kubectl's shell completion finds the plugin's completer that pipx put on PATH.
        completed = subprocess.run(
            ["kubectl", "__complete", "agentrollout", "pro"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert completed.stdout.splitlines() == ["promote", ":4"], completed
        # Argo CD got exactly the health check and actions of docs/argocd/.
        data = json.loads(kubectl("get", "configmap", "argocd-cm", "-n", "argocd", "-o", "json").stdout)[
            "data"
        ]
        assert (
            data["resource.customizations.health.agentrollout.io_AgentRollout"]
            == (ARGOCD_DOCS / "health.lua").read_text()
        )
        actions = re.search(r"```yaml\n(.*?)```", (ARGOCD_DOCS / "actions.lua.md").read_text(), flags=re.S)
        assert actions is not None
        assert data["resource.customizations.actions.agentrollout.io_AgentRollout"] == actions[1]
        # Uninstalled: no release left, and the CRD went with the docs' last command only.
        releases = subprocess.run(
            [str(tools.helm_bin()), "list", "--all-namespaces", "-q"], env=env, capture_output=True, text=True
        )
        assert releases.returncode == 0 and releases.stdout.strip() == "", releases
        crd = kubectl("get", "crd", f"{api.PLURAL}.{api.GROUP}", check=False)
        assert crd.returncode != 0 and "NotFound" in crd.stderr
    finally:
        stop_cluster(state, keep_logs=False)
