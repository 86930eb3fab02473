"""The e2e harness' own process checks (e2e/cluster/procs.py): a harness that reports a live process as
dead fails tests for nothing, one that reports a dead one as live hides a crash."""

from __future__ import annotations

import os
import subprocess

import pytest

from e2e.cluster import procs
from e2e.cluster.procs import ProcessInfo

# This test process as the harness would have recorded it: the argv[0] it was started with.
with open(f"/proc/{os.getpid()}/cmdline", "rb") as _f:
    ME = ProcessInfo(name="me", pid=os.getpid(), exe=_f.read().split(b"\0", 1)[0].decode(), log="/dev/null")


def test_a_process_still_inside_execve_is_running(monkeypatch: pytest.MonkeyPatch) -> None:
    """Right after Popen returns, /proc/PID/cmdline can still be empty: the new program's arguments
    are not in place yet. A restarted kube-apiserver was reported dead at that moment."""
    monkeypatch.setattr(procs, "_cmdline", lambda pid: b"")
    assert procs.is_running(ME)


def test_another_program_under_the_pid_and_a_finished_process_are_not_running() -> None:
    assert procs.is_running(ME)
    assert not procs.is_running(ProcessInfo(name="me", pid=os.getpid(), exe="/bin/false", log="/dev/null"))
    done = subprocess.Popen(["true"])
    done.wait()
    assert not procs.is_running(ProcessInfo(name="true", pid=done.pid, exe="true", log="/dev/null"))
