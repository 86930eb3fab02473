"""e2e.cluster.kubectl.wait_established: waits through a CRD whose status has no conditions yet."""

from __future__ import annotations

import re
import subprocess
from typing import Any

import pytest

from e2e.cluster.kubectl import KubectlError, wait_established

NO_CONDITIONS = ".status.conditions accessor error: <nil> is of the type <nil>, expected []interface{}"


def _kubectl(answers: list[tuple[int, str, str]], asked: list[tuple[str, ...]]) -> Any:
    """A kubectl stand-in answering (rc, stdout, stderr) in turn, the last one for ever."""

    def run(*args: str, stdin: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
        asked.append(args)
        rc, out, err = answers.pop(0) if len(answers) > 1 else answers[0]
        return subprocess.CompletedProcess(["kubectl", *args], rc, out, err)

    return run


def test_a_crd_without_conditions_yet_is_waited_for_not_failed() -> None:
    asked: list[tuple[str, ...]] = []
    kubectl = _kubectl([(1, "", NO_CONDITIONS), (0, "", ""), (0, "False", ""), (0, "True", "")], asked)
    wait_established(kubectl, "agentrollouts.agentrollout.io", timeout_s=10)
    assert len(asked) == 4
    assert all(a[:2] == ("get", "crd/agentrollouts.agentrollout.io") for a in asked)


def test_each_crd_is_waited_for_and_a_crd_never_established_fails_naming_it() -> None:
    asked: list[tuple[str, ...]] = []
    wait_established(_kubectl([(0, "True", "")], asked), "a.example.io", "b.example.io", timeout_s=1)
    assert [a[1] for a in asked] == ["crd/a.example.io", "crd/b.example.io"]
    with pytest.raises(KubectlError, match=re.escape("b.example.io not Established after 0.5s")):
        wait_established(_kubectl([(0, "False", "")], []), "b.example.io", timeout_s=0.5)
