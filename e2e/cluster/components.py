"""Command lines and config files of the control-plane components. No process handling here."""

from __future__ import annotations

from pathlib import Path

import yaml

from e2e.cluster.pki import Pki

SERVICE_CIDR = "10.0.0.0/24"
FAKE_NODE_NAME = "kwok-node-0"
# kwok only manages nodes carrying this annotation, so it could never touch a real node.
KWOK_NODE_ANNOTATION = ("kwok.x-k8s.io/node", "fake")


def etcd_argv(bin_dir: Path, data_dir: Path, client_port: int, peer_port: int) -> list[str]:
    client = f"http://127.0.0.1:{client_port}"
    peer = f"http://127.0.0.1:{peer_port}"
    return [
        str(bin_dir / "etcd"),
        "--name=e2e",
        f"--data-dir={data_dir}",
        f"--listen-client-urls={client}",
        f"--advertise-client-urls={client}",
        f"--listen-peer-urls={peer}",
        f"--initial-advertise-peer-urls={peer}",
        f"--initial-cluster=e2e={peer}",
        "--logger=zap",
        "--log-outputs=stderr",
        # Fewer raft entries kept in memory between snapshots: a test cluster never needs 100k.
        "--snapshot-count=5000",
    ]


# Requests made with ServiceAccount tokens outside kube-system (the operator's, and the identities tests
# mint) are audited at Metadata level: tests compare what an identity used with what its RBAC grants.
# The controller-manager's own ServiceAccounts (kube-system) and the admin certificate are not logged.
AUDIT_POLICY = """\
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
  - level: None
    userGroups: ["system:serviceaccounts:kube-system"]
  - level: Metadata
    userGroups: ["system:serviceaccounts"]
  - level: None
"""


def audit_log_path(run_dir: Path) -> Path:
    return run_dir / "logs" / "audit.log"


def write_audit_policy(path: Path) -> None:
    path.write_text(AUDIT_POLICY)


def apiserver_argv(
    bin_dir: Path, pki: Pki, etcd_url: str, port: int, cert_dir: Path, audit_policy: Path, audit_log: Path
) -> list[str]:
    return [
        str(bin_dir / "kube-apiserver"),
        f"--etcd-servers={etcd_url}",
        "--bind-address=127.0.0.1",
        "--advertise-address=127.0.0.1",
        f"--secure-port={port}",
        f"--cert-dir={cert_dir}",
        f"--tls-cert-file={pki.serving_cert}",
        f"--tls-private-key-file={pki.serving_key}",
        f"--client-ca-file={pki.ca_cert}",
        "--authorization-mode=RBAC",
        "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
        f"--service-account-key-file={pki.sa_pub}",
        f"--service-account-signing-key-file={pki.sa_key}",
        f"--service-cluster-ip-range={SERVICE_CIDR}",
        # No kubelets, so nothing could serve the `kubernetes` Service endpoints anyway.
        "--endpoint-reconciler-type=none",
        f"--audit-policy-file={audit_policy}",
        f"--audit-log-path={audit_log}",
        "--audit-log-format=json",
    ]


def controller_manager_argv(bin_dir: Path, pki: Pki, kubeconfig: Path, port: int, run_dir: Path) -> list[str]:
    return [
        str(bin_dir / "kube-controller-manager"),
        f"--kubeconfig={kubeconfig}",
        "--bind-address=127.0.0.1",
        f"--secure-port={port}",
        f"--cert-dir={run_dir / 'controller-manager-certs'}",
        "--leader-elect=false",
        "--use-service-account-credentials",
        f"--service-account-private-key-file={pki.sa_key}",
        f"--root-ca-file={pki.ca_cert}",
        f"--cluster-signing-cert-file={pki.ca_cert}",
        f"--cluster-signing-key-file={pki.ca_key}",
        f"--service-cluster-ip-range={SERVICE_CIDR}",
        # The default is under /usr/libexec; ours keeps the harness from writing outside the repo.
        f"--flex-volume-plugin-dir={run_dir / 'flexvolume'}",
    ]


def scheduler_argv(bin_dir: Path, kubeconfig: Path, port: int, run_dir: Path) -> list[str]:
    return [
        str(bin_dir / "kube-scheduler"),
        f"--kubeconfig={kubeconfig}",
        "--bind-address=127.0.0.1",
        f"--secure-port={port}",
        f"--cert-dir={run_dir / 'scheduler-certs'}",
        "--leader-elect=false",
    ]


def kwok_argv(bin_dir: Path, kubeconfig: Path, config: Path) -> list[str]:
    key, value = KWOK_NODE_ANNOTATION
    return [
        str(bin_dir / "kwok"),
        f"--config={config}",
        f"--kubeconfig={kubeconfig}",
        "--manage-all-nodes=false",
        f"--manage-nodes-with-annotation-selector={key}={value}",
        "--cidr=10.244.0.1/24",
        "--node-ip=127.0.0.1",
    ]


# The fake node's heartbeat, as a kubelet's: kwok renews the node's Lease every quarter of this.
NODE_LEASE_DURATION_S = 40


def write_kwok_config(path: Path) -> None:
    # An explicit config: otherwise kwok reads ~/.kwok/kwok.yaml of whoever runs the tests. With no
    # stages configured kwok uses its default stages (node initialize and heartbeat, pods turn
    # Running/Ready). The lease is what keeps the node Ready: the kwok binary's lease duration
    # defaults to 0 (no Lease), and v0.7.0 then picks its slow heartbeat stage, which posts node
    # status every 600 s. The controller-manager declares a node lost after 50 s without either
    # (--node-monitor-grace-period) and marks every pod on it Ready=False; kwok soon restores the
    # node, never the pods, so every Deployment stayed at 0 available from ~50 s on.
    config = {
        "apiVersion": "config.kwok.x-k8s.io/v1alpha1",
        "kind": "KwokConfiguration",
        "options": {"nodeLeaseDurationSeconds": NODE_LEASE_DURATION_S},
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))


def write_kubeconfig(path: Path, server: str, pki: Pki) -> None:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": "e2e", "cluster": {"server": server, "certificate-authority": str(pki.ca_cert)}}
        ],
        "users": [
            {
                "name": "e2e-admin",
                "user": {"client-certificate": str(pki.admin_cert), "client-key": str(pki.admin_key)},
            }
        ],
        "contexts": [{"name": "e2e", "context": {"cluster": "e2e", "user": "e2e-admin"}}],
        "current-context": "e2e",
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))


def fake_node_manifest(name: str = FAKE_NODE_NAME) -> dict[str, object]:
    key, value = KWOK_NODE_ANNOTATION
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": {key: value, "node.alpha.kubernetes.io/ttl": "0"},
            "labels": {
                "type": "kwok",
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
            },
        },
        # kwok's node-initialize stage fills status (capacity, conditions) from here on.
        "spec": {},
    }
