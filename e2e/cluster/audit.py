"""Reads the apiserver's audit log (see components.AUDIT_POLICY): what an identity actually asked for."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

# (apiGroup, resource or resource/subresource, verb), with "" for the core group, as in RBAC rules.
Permission = tuple[str, str, str]


def used_permissions(audit_log: Path, username: str) -> set[Permission]:
    """Every resource request the user made, allowed or not (discovery and other URLs are not resources).

    Requests from kubectl are left out: with the same token, tests ask `kubectl auth can-i` (a
    SelfSubjectAccessReview, which every authenticated user may create).
    """
    if not audit_log.exists():
        raise FileNotFoundError(f"no audit log at {audit_log}: a cluster started before auditing? restart it")
    used: set[Permission] = set()
    for line in audit_log.read_text(errors="replace").splitlines():
        event = json.loads(line)
        ref = event.get("objectRef")
        if event.get("user", {}).get("username") != username or not ref or "resource" not in ref:
            continue
        if str(event.get("userAgent", "")).startswith("kubectl/"):
            continue
        resource = ref["resource"] + (f"/{ref['subresource']}" if ref.get("subresource") else "")
        used.add((ref.get("apiGroup", ""), resource, event["verb"]))
    return used


def granted_permissions(manifests: Iterable[Mapping[str, Any]]) -> set[Permission]:
    """Every (group, resource, verb) the Roles and ClusterRoles of a rendering grant (no wildcards here)."""
    granted: set[Permission] = set()
    for manifest in manifests:
        if manifest["kind"] not in ("Role", "ClusterRole"):
            continue
        for rule in manifest.get("rules", []):
            for group in rule.get("apiGroups", []):
                for resource in rule.get("resources", []):
                    granted.update((group, resource, verb) for verb in rule.get("verbs", []))
    return granted


WRITE_VERBS = frozenset({"create", "update", "patch", "delete", "deletecollection"})


@dataclass(frozen=True)
class Write:
    """One write request the apiserver answered, as its audit log recorded it."""

    at: datetime  # requestReceivedTimestamp
    user_agent: str
    verb: str
    resource: str  # group/resource[/subresource], "" for the core group
    namespace: str
    name: str
    code: int


def writes(audit_log: Path, username: str) -> list[Write]:
    """Every create/update/patch/delete of the user, in the order the apiserver received them."""
    found = []
    for line in audit_log.read_text(errors="replace").splitlines():
        event = json.loads(line)
        ref = event.get("objectRef")
        if (
            event.get("user", {}).get("username") != username
            or not ref
            or event.get("verb") not in WRITE_VERBS
        ):
            continue
        resource = f"{ref.get('apiGroup', '')}/{ref['resource']}" + (
            f"/{ref['subresource']}" if ref.get("subresource") else ""
        )
        found.append(
            Write(
                at=datetime.fromisoformat(event["requestReceivedTimestamp"].replace("Z", "+00:00")),
                user_agent=str(event.get("userAgent", "")),
                verb=event["verb"],
                resource=resource,
                namespace=str(ref.get("namespace", "")),
                name=str(ref.get("name", "")),
                code=int((event.get("responseStatus") or {}).get("code", 0)),
            )
        )
    return sorted(found, key=lambda w: w.at)
