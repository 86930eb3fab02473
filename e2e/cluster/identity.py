"""Real, non-admin identities for e2e: ServiceAccount tokens from the TokenRequest API, in kubeconfigs.

Tests and the operator authenticate as these instead of the harness's admin certificate (system:masters
bypasses RBAC), so a permission the chart lacks or a check the apiserver makes shows up as it would in
production. No impersonation: the apiserver authenticates the token itself.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import yaml
from kubernetes import client

from e2e.cluster import pki
from e2e.cluster.kubeapi import KubeApi

# Long enough for a `cluster up` that several sessions reuse; tokens are bound to their ServiceAccount,
# so deleting it (or its namespace) revokes them.
TOKEN_EXPIRATION_S = 24 * 3600


def username(namespace: str, service_account: str) -> str:
    """How the apiserver names a ServiceAccount's token holder (request.userInfo.username)."""
    return f"system:serviceaccount:{namespace}:{service_account}"


def request_token(kube: KubeApi, namespace: str, service_account: str) -> str:
    body: Any = {"spec": {"expirationSeconds": TOKEN_EXPIRATION_S}}
    response = kube.core.create_namespaced_service_account_token(service_account, namespace, body)
    assert response.status is not None, f"TokenRequest for {namespace}/{service_account} returned no status"
    return cast(str, response.status.token)


def token_kubeconfig(admin_kubeconfig: Path, path: Path, user: str, token: str) -> Path:
    """The admin kubeconfig's cluster (server, CA) with a bearer token instead of the client cert."""
    admin = yaml.safe_load(admin_kubeconfig.read_text())
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": admin["clusters"],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": user, "context": {"cluster": admin["clusters"][0]["name"], "user": user}}],
        "current-context": user,
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    path.chmod(0o600)
    return path


def service_account_kubeconfig(kube: KubeApi, namespace: str, service_account: str, path: Path) -> Path:
    """A kubeconfig authenticating as the (existing) ServiceAccount namespace/service_account."""
    token = request_token(kube, namespace, service_account)
    return token_kubeconfig(kube.kubeconfig, path, username(namespace, service_account), token)


def ensure_service_account(kube: KubeApi, namespace: str, name: str) -> None:
    try:
        kube.core.create_namespaced_service_account(namespace, cast(Any, {"metadata": {"name": name}}))
    except client.ApiException as e:
        if e.status != 409:
            raise


def client_certificate_kubeconfig(
    admin_kubeconfig: Path, pki_dir: Path, path: Path, user: str, groups: tuple[str, ...] = ()
) -> Path:
    """A kubeconfig authenticating as `user` in `groups` with a client certificate minted from the
    harness CA (CN is the user name, each O a group), as a company's SSO or kubelogin would hand out.
    The apiserver vouches for exactly these names in request.userInfo."""
    name = "user-" + "".join(c if c.isalnum() else "-" for c in user)
    subject = "".join(f"/O={g}" for g in groups) + f"/CN={user}"
    extensions = (
        "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth\n"
    )
    pki.issue(pki_dir, name, subject, extensions, (pki_dir / "ca.crt", pki_dir / "ca.key"))
    admin = yaml.safe_load(admin_kubeconfig.read_text())
    credentials = {
        "client-certificate": str(pki_dir / f"{name}.crt"),
        "client-key": str(pki_dir / f"{name}.key"),
    }
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": admin["clusters"],
        "users": [{"name": user, "user": credentials}],
        "contexts": [{"name": user, "context": {"cluster": admin["clusters"][0]["name"], "user": user}}],
        "current-context": user,
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    path.chmod(0o600)
    return path
