"""Leader election over a coordination.k8s.io/v1 Lease: of several operator replicas, one writes.

kopf's peering pauses operators rather than electing one, so the operator holds a Lease of its own, as
client-go's leader election does. The rule is a pure function (`decide`); `LeaseElector` is the shell
that reads and writes the Lease from a thread of its own (the event loop never waits on it), every
write guarded by the resourceVersion it read: two replicas that both see an expired lease both try to
take it, and the apiserver lets exactly one of them (409 Conflict for the other).

What a replica does with the answer (controller.py): every replica lists and watches (a standby's
informers are warm, so a takeover plans at once), but only the leader runs the scheduler, which is what
writes routes, status and Events. A leader that cannot renew within `renew_deadline` stops at once by
ending the process (os._exit: no clean-up that could still write); its pod restarts it as a standby.
`renew_deadline < duration` leaves the margin for a write already sent when it stops.

Expiry is judged on the standby's own clock as well as on the lease's renewTime: a lease counts as
expired only when its renewTime is older than its duration *and* this replica has seen it unchanged for
that long (client-go's rule), so a clock running ahead on the standby's node cannot take a lease early.

Which replica wrote what: every API request of a replica carries its identity in the User-Agent
(`agent-rollout/<identity>`, kube.user_agent), so the apiserver's audit log counts writes per replica.
"""

from __future__ import annotations

import enum
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from agent_rollout.clock import parse_time

log = logging.getLogger(__name__)

LEASE_NAME = "agent-rollout"
# client-go's defaults: a leader found dead is replaced within about 15 s (plus one retry period).
DURATION = 15.0  # seconds a lease holds after its last renewal
RENEW_DEADLINE = 10.0  # seconds a leader keeps writing without a successful renewal
RETRY_PERIOD = 2.0  # seconds between two attempts to acquire or renew


class Move(enum.Enum):
    ACQUIRE = "acquire"  # no lease, no holder, or an expired one: take it
    RENEW = "renew"  # ours: renew it
    STANDBY = "standby"  # another replica's, still valid: wait


@dataclass(frozen=True)
class LeaseRecord:
    """The fields of a Lease the decision reads."""

    holder: str | None
    renew_time: datetime | None
    duration: float
    transitions: int = 0
    resource_version: str | None = None

    @classmethod
    def of(cls, lease: dict[str, Any]) -> LeaseRecord:
        spec = lease.get("spec") or {}
        renewed = spec.get("renewTime")
        duration = spec.get("leaseDurationSeconds")
        transitions = spec.get("leaseTransitions")
        return cls(
            holder=spec.get("holderIdentity") or None,
            renew_time=parse_time(renewed) if isinstance(renewed, str) else None,
            duration=float(duration) if isinstance(duration, int | float) else 0.0,
            transitions=transitions if isinstance(transitions, int) else 0,
            resource_version=(lease.get("metadata") or {}).get("resourceVersion"),
        )


def decide(record: LeaseRecord | None, identity: str, now: datetime, unchanged_for: float) -> Move:
    """What this replica does with the lease it just read.

    `unchanged_for`: seconds this replica has seen the record as it is (its own clock, monotonic).
    """
    if record is None or record.holder is None:
        return Move.ACQUIRE
    if record.holder == identity:
        return Move.RENEW
    renewed_long_ago = (
        record.renew_time is None or (now - record.renew_time).total_seconds() >= record.duration
    )
    if renewed_long_ago and unchanged_for >= record.duration:
        return Move.ACQUIRE
    return Move.STANDBY


def lease_body(
    record: LeaseRecord | None, move: Move, identity: str, duration: float, now: datetime
) -> dict[str, Any]:
    """The Lease to write for an ACQUIRE or a RENEW, with the resourceVersion it must replace."""
    stamp = now.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")
    spec: dict[str, Any] = {
        "holderIdentity": identity,
        "leaseDurationSeconds": max(1, round(duration)),
        "renewTime": stamp,
        "leaseTransitions": record.transitions if record is not None else 0,
    }
    if move is Move.ACQUIRE:
        spec["acquireTime"] = stamp
        if record is not None and record.holder is not None:
            spec["leaseTransitions"] = record.transitions + 1
    metadata: dict[str, Any] = {}
    if record is not None and record.resource_version is not None:
        metadata["resourceVersion"] = record.resource_version
    return {"metadata": metadata, "spec": spec}


def default_identity() -> str:
    """The pod's name (downward API, POD_NAME), else host and pid: unique per process."""
    return os.environ.get("POD_NAME") or f"{socket.gethostname()}-{os.getpid()}"


class LeaseStore(Protocol):
    """What the elector needs of the API (kube.LeaseClient in production, a fake in tests)."""

    def get(self) -> dict[str, Any] | None: ...
    def create(self, body: dict[str, Any]) -> dict[str, Any]: ...
    def replace(self, body: dict[str, Any]) -> dict[str, Any]: ...  # 409 (LeaseConflict) on a stale version


class LeaseConflict(Exception):
    """Another replica wrote the Lease since we read it."""


def _lost_lease(reason: str) -> None:
    log.critical(
        "leader election: %s; exiting so that nothing more is written (restarted as a standby)", reason
    )
    logging.shutdown()
    os._exit(1)


class LeaseElector:
    """Acquires and renews the Lease in a daemon thread; `on_started` runs (in that thread) once it leads.

    `on_lost` runs when a leader can no longer be sure it leads; by default it ends the process."""

    def __init__(
        self,
        store: LeaseStore,
        identity: str,
        on_started: Callable[[], None],
        duration: float = DURATION,
        renew_deadline: float = RENEW_DEADLINE,
        retry_period: float = RETRY_PERIOD,
        on_lost: Callable[[str], None] = _lost_lease,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if not 0 < retry_period < renew_deadline < duration:
            raise ValueError(
                "leader election needs 0 < retry period < renew deadline < lease duration, got "
                f"{retry_period!r} < {renew_deadline!r} < {duration!r}"
            )
        self.identity = identity
        self._store = store
        self._on_started, self._on_lost = on_started, on_lost
        self.duration, self.renew_deadline, self.retry_period = duration, renew_deadline, retry_period
        self._clock, self._monotonic = clock, monotonic
        self.leading = False
        self._renewed_at = 0.0  # monotonic start of our last successful write of the lease
        self._seen: tuple[Any, ...] | None = None  # the record as last read, and since when
        self._seen_since = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="leader-election", daemon=True)
        self._thread.start()
        # Its own thread: a lease request that hangs must not keep a leader writing past the deadline.
        threading.Thread(target=self._watchdog, name="leader-deadline", daemon=True).start()

    def stop(self, release: bool = True) -> None:
        """Stop trying; a leader hands the lease back (holder cleared) so a standby takes it at once.
        Call only once nothing of ours writes any more."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.renew_deadline)
        if release and self.leading:
            try:
                record = self._read()
                if record is not None and record.holder == self.identity:
                    body = lease_body(record, Move.RENEW, self.identity, self.duration, self._clock())
                    body["spec"]["holderIdentity"] = None
                    body["spec"]["leaseDurationSeconds"] = 1
                    self._store.replace(body)
                    log.info("leader election: lease released by %s", self.identity)
            except Exception as e:  # the standby then waits for the lease to expire instead
                log.warning("leader election: could not release the lease: %r", e)
        self.leading = False

    def _read(self) -> LeaseRecord | None:
        lease = self._store.get()
        return LeaseRecord.of(lease) if lease is not None else None

    def attempt(self) -> Move | None:
        """One read and, when due, one write. Returns the move made, or None when the write lost."""
        started = self._monotonic()
        record = self._read()
        seen = None if record is None else (record.holder, record.renew_time, record.resource_version)
        if seen != self._seen or self._seen is None:
            self._seen, self._seen_since = seen, started
        move = decide(record, self.identity, self._clock(), started - self._seen_since)
        if move is Move.STANDBY:
            if self.leading:
                self.leading = False
                self._on_lost(f"the lease is held by {record.holder if record else None} now")
            return move
        body = lease_body(record, move, self.identity, self.duration, self._clock())
        try:
            if record is None:
                self._store.create(body)
            else:
                self._store.replace(body)
        except LeaseConflict:
            return None
        self._renewed_at = started
        if not self.leading:
            self.leading = True
            log.info(
                "leader election: %s leads (lease %s, transitions %d)",
                self.identity,
                move.value,
                body["spec"]["leaseTransitions"],
            )
            self._on_started()
        return move

    def _run(self) -> None:
        log.info("leader election: %s waiting for the lease", self.identity)
        while not self._stop.is_set():
            try:
                self.attempt()
            except Exception as e:  # an unreachable apiserver, a 5xx: try again next period
                log.warning("leader election: %s could not read or write the lease: %r", self.identity, e)
            self._stop.wait(self.retry_period)

    def overdue(self) -> bool:
        """A leader whose last successful renewal began more than the renew deadline ago."""
        return self.leading and self._monotonic() - self._renewed_at > self.renew_deadline

    def _watchdog(self) -> None:
        while not self._stop.wait(min(0.25, self.retry_period / 2)):
            if self.overdue():
                self.leading = False
                self._on_lost(f"lease not renewed for {self.renew_deadline:g} s")
                return
