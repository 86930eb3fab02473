"""Start and stop the harness's background processes.

Every process gets its own session (so its whole group can be killed), a log file, and, when it
belongs to a pytest session, a parent-death signal so a killed pytest leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

_PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class ProcessInfo:
    """Enough to find, check and stop a process from another Python process (the state file)."""

    name: str
    pid: int
    exe: str
    log: str

    def to_json(self) -> dict[str, object]:
        return {"name": self.name, "pid": self.pid, "exe": self.exe, "log": self.log}

    @classmethod
    def from_json(cls, data: Mapping[str, object]) -> ProcessInfo:
        return cls(
            name=str(data["name"]), pid=int(str(data["pid"])), exe=str(data["exe"]), log=str(data["log"])
        )


def set_parent_death_signal() -> None:
    """preexec_fn: the child gets SIGTERM when its parent dies, so an interrupted run leaves nothing."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def spawn(
    name: str,
    argv: Sequence[str],
    log: Path,
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    die_with_parent: bool = False,
) -> ProcessInfo:
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            start_new_session=True,
            preexec_fn=set_parent_death_signal if die_with_parent else None,
        )
    # Popen would warn when garbage-collected while the child still runs; we track it by pid.
    proc.returncode = 0
    return ProcessInfo(name=name, pid=proc.pid, exe=str(argv[0]), log=str(log))


def _reap(pid: int) -> bool:
    """True when pid is gone (reaped here, or not our child and no longer running)."""
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return True
    except ChildProcessError:
        pass
    try:
        with open(f"/proc/{pid}/stat") as f:
            zombie = f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True
    if zombie:
        # It may have died just after the waitpid above; reap it if it is ours, else its parent will.
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
    return zombie


def is_running(info: ProcessInfo) -> bool:
    """Running and still the program we started (pids are reused after reboots or long runs)."""
    if _reap(info.pid):
        return False
    try:
        cmdline = _cmdline(info.pid)
    except FileNotFoundError:
        return False
    if not cmdline:
        # Alive and not a zombie, but no arguments yet: execve is still loading the program (Popen
        # returns once the close-on-exec pipe closes, before the new argv is in place). Read as "gone",
        # a restarted kube-apiserver was reported dead the moment it was spawned (CI, 2026-11-27).
        return True
    return cmdline.split(b"\0", 1)[0].decode(errors="replace") == info.exe


def _cmdline(pid: int) -> bytes:
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return f.read()


def stop(info: ProcessInfo, grace_s: float = 5.0) -> None:
    if not is_running(info):
        return
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(info.pid, sig)
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline:
            if _reap(info.pid):
                return
            time.sleep(0.05)


def kill(info: ProcessInfo, timeout_s: float = 5.0) -> None:
    """SIGKILL at once, as a crash would end it; returns once it is gone."""
    if not is_running(info):
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(info.pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout_s
    while not _reap(info.pid) and time.monotonic() < deadline:
        time.sleep(0.02)


def stop_all(infos: Sequence[ProcessInfo], grace_s: float = 5.0) -> None:
    """SIGTERM everything first so shutdowns overlap, then wait and escalate one by one."""
    for info in infos:
        if is_running(info):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(info.pid, signal.SIGTERM)
    for info in infos:
        stop(info, grace_s)


def tail(path: Path | str, lines: int = 30) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 64 * 1024))
            text = f.read().decode(errors="replace")
    except FileNotFoundError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


def wait_until(
    check: Callable[[], bool],
    *,
    timeout_s: float,
    what: str,
    interval_s: float = 0.1,
    alive: Sequence[ProcessInfo] = (),
) -> None:
    """Poll check(); give up early when a process it depends on has died (no point waiting)."""
    deadline = time.monotonic() + timeout_s
    while True:
        with contextlib.suppress(Exception):
            if check():
                return
        for info in alive:
            if not is_running(info):
                raise RuntimeError(f"{info.name} exited while waiting for {what} (log: {info.log})")
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s:.0f}s waiting for {what}")
        time.sleep(interval_s)
