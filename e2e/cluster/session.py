"""Which cluster a pytest session uses: a healthy `python -m e2e.cluster up` one, or its own."""

from __future__ import annotations

import os
import shutil

from e2e.cluster.lifecycle import is_healthy, load_state, start_cluster
from e2e.cluster.paths import RUN_ROOT, SHARED_CLUSTER_NAME, scratch_root
from e2e.cluster.state import ClusterState

# E2E_REUSE_CLUSTER=0 forces a private cluster even when `cluster up` left one running.
REUSE_ENV = "E2E_REUSE_CLUSTER"
SESSION_PREFIX = "pytest-"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_session_runs(prefix: str = SESSION_PREFIX) -> None:
    """Run dirs named <prefix><pid> whose process no longer exists (killed, or kept for their logs)."""
    for root in (RUN_ROOT, scratch_root()):
        if not root.is_dir():
            continue
        for d in root.glob(f"{prefix}*"):
            pid = d.name.removeprefix(prefix)
            if pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
                shutil.rmtree(d, ignore_errors=True)


def acquire_cluster() -> tuple[ClusterState, bool]:
    """(state, owned): owned clusters are this session's to stop; a reused shared one is left running."""
    if os.environ.get(REUSE_ENV, "1") != "0":
        shared = load_state(SHARED_CLUSTER_NAME)
        if shared is not None and is_healthy(shared):
            return shared, False
    remove_stale_session_runs()
    return start_cluster(f"{SESSION_PREFIX}{os.getpid()}", die_with_parent=True), True
