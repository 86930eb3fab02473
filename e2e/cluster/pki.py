"""TLS material for the local control plane, made with the openssl CLI (no Python crypto deps)."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

_DAYS = "30"


@dataclass(frozen=True)
class Pki:
    ca_cert: Path
    ca_key: Path
    serving_cert: Path
    serving_key: Path
    admin_cert: Path
    admin_key: Path
    sa_key: Path
    sa_pub: Path


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def _genkey(path: str, d: Path) -> None:
    # ECDSA P-256: instant to generate (RSA keys took ~1 s of a start), and every component accepts it,
    # including the service-account token signer (ES256).
    _openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", path, cwd=d)


def issue(d: Path, name: str, subject: str, extensions: str, ca: tuple[Path, Path]) -> None:
    _genkey(f"{name}.key", d)
    _openssl("req", "-new", "-key", f"{name}.key", "-subj", subject, "-out", f"{name}.csr", cwd=d)
    (d / f"{name}.ext").write_text(extensions)
    _openssl(
        "x509",
        "-req",
        "-in",
        f"{name}.csr",
        "-CA",
        str(ca[0]),
        "-CAkey",
        str(ca[1]),
        "-CAcreateserial",
        "-days",
        _DAYS,
        "-sha256",
        "-extfile",
        f"{name}.ext",
        "-out",
        f"{name}.crt",
        cwd=d,
    )


def make_pki(d: Path) -> Pki:
    d.mkdir(parents=True, exist_ok=True)
    _genkey("ca.key", d)
    _openssl(
        "req",
        "-x509",
        "-key",
        "ca.key",
        "-nodes",
        "-out",
        "ca.crt",
        "-days",
        _DAYS,
        "-subj",
        "/CN=agent-rollout-e2e-ca",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign,digitalSignature",
        cwd=d,
    )
    ca = (d / "ca.crt", d / "ca.key")
    # 10.0.0.1 is the `kubernetes` Service IP of --service-cluster-ip-range=10.0.0.0/24.
    issue(
        d,
        "apiserver",
        "/CN=kube-apiserver",
        "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n"
        "extendedKeyUsage=serverAuth\n"
        "subjectAltName=IP:127.0.0.1,IP:10.0.0.1,DNS:localhost,DNS:kubernetes,"
        "DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local\n",
        ca,
    )
    # O=system:masters is bound to cluster-admin by the default RBAC policy.
    issue(
        d,
        "admin",
        "/O=system:masters/CN=e2e-admin",
        "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth\n",
        ca,
    )
    _genkey("sa.key", d)
    _openssl("pkey", "-in", "sa.key", "-pubout", "-out", "sa.pub", cwd=d)
    return Pki(
        ca_cert=d / "ca.crt",
        ca_key=d / "ca.key",
        serving_cert=d / "apiserver.crt",
        serving_key=d / "apiserver.key",
        admin_cert=d / "admin.crt",
        admin_key=d / "admin.key",
        sa_key=d / "sa.key",
        sa_pub=d / "sa.pub",
    )
