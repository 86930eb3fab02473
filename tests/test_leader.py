"""Leader election: the decision rule, and two electors sharing one Lease with optimistic concurrency."""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from agent_rollout.leader import LeaseConflict, LeaseElector, LeaseRecord, Move, decide

T0 = datetime(2026, 11, 26, 12, 0, 0, tzinfo=UTC)


def record(holder: str | None, renewed: datetime | None = T0, duration: float = 15) -> LeaseRecord:
    return LeaseRecord(holder=holder, renew_time=renewed, duration=duration, resource_version="1")


def test_no_lease_or_no_holder_is_acquired() -> None:
    assert decide(None, "a", T0, 0) is Move.ACQUIRE
    assert decide(record(None), "a", T0, 0) is Move.ACQUIRE  # released by a leader that stopped cleanly


def test_our_own_lease_is_renewed_even_late() -> None:
    assert decide(record("a"), "a", T0 + timedelta(seconds=60), 60) is Move.RENEW


def test_a_lease_another_replica_renewed_recently_is_left_alone() -> None:
    assert decide(record("b"), "a", T0 + timedelta(seconds=14), 14) is Move.STANDBY


def test_an_expired_lease_is_taken_once_seen_unchanged_for_its_duration() -> None:
    assert decide(record("b"), "a", T0 + timedelta(seconds=15), 15) is Move.ACQUIRE


def test_a_clock_ahead_does_not_take_a_lease_this_replica_saw_renewed_just_now() -> None:
    # By our wall clock the renewal is a minute old, but we saw the record change 2 s ago.
    assert decide(record("b"), "a", T0 + timedelta(seconds=60), 2) is Move.STANDBY


class FakeLeaseApi:
    """A Lease in memory with the apiserver's rules: create fails when it exists, replace fails on a
    stale resourceVersion."""

    def __init__(self) -> None:
        self.lease: dict[str, Any] | None = None
        self.version = 0
        self.failing = False

    def get(self) -> dict[str, Any] | None:
        if self.failing:
            raise OSError("apiserver unreachable")
        return copy.deepcopy(self.lease)

    def create(self, body: dict[str, Any]) -> dict[str, Any]:
        if self.lease is not None:
            raise LeaseConflict("already exists")
        return self._store(body)

    def replace(self, body: dict[str, Any]) -> dict[str, Any]:
        if self.failing:
            raise OSError("apiserver unreachable")
        assert self.lease is not None
        if body["metadata"].get("resourceVersion") != self.lease["metadata"]["resourceVersion"]:
            raise LeaseConflict("the object has been modified")
        return self._store(body)

    def _store(self, body: dict[str, Any]) -> dict[str, Any]:
        self.version += 1
        self.lease = {"metadata": {"resourceVersion": str(self.version)}, "spec": copy.deepcopy(body["spec"])}
        return copy.deepcopy(self.lease)

    @property
    def holder(self) -> str | None:
        holder = (self.lease or {}).get("spec", {}).get("holderIdentity")
        return str(holder) if holder is not None else None


class Clocks:
    def __init__(self) -> None:
        self.seconds = 0.0

    def wall(self) -> datetime:
        return T0 + timedelta(seconds=self.seconds)

    def monotonic(self) -> float:
        return self.seconds


def elector(store: FakeLeaseApi, name: str, clocks: Clocks, lost: list[str]) -> LeaseElector:
    return LeaseElector(
        store,
        name,
        on_started=lambda: None,
        duration=4,
        renew_deadline=3,
        retry_period=1,
        on_lost=lambda why: lost.append(f"{name}: {why}"),
        clock=clocks.wall,
        monotonic=clocks.monotonic,
    )


def test_of_two_replicas_one_leads_and_the_other_takes_over_only_once_the_lease_expired() -> None:
    store, clocks, lost = FakeLeaseApi(), Clocks(), list[str]()
    a, b = elector(store, "a", clocks, lost), elector(store, "b", clocks, lost)
    assert a.attempt() is Move.ACQUIRE and a.leading
    assert b.attempt() is Move.STANDBY and not b.leading
    for _ in range(10):  # a renews every period: b never takes it
        clocks.seconds += 1
        assert a.attempt() is Move.RENEW
        assert b.attempt() is Move.STANDBY
    # a is killed: its lease stays as it was; b takes it once it has seen it unchanged for 4 s.
    moves = []
    for _ in range(5):
        clocks.seconds += 1
        moves.append(b.attempt())
    assert moves == [Move.STANDBY] * 3 + [Move.ACQUIRE, Move.RENEW]
    assert store.holder == "b" and b.leading
    assert store.lease is not None and store.lease["spec"]["leaseTransitions"] == 1
    assert lost == []


def test_two_replicas_that_both_see_an_expired_lease_cannot_both_take_it() -> None:
    store, clocks, lost = FakeLeaseApi(), Clocks(), list[str]()
    store.create(
        {
            "spec": {
                "holderIdentity": "dead",
                "renewTime": "2026-11-26T11:00:00.000000Z",
                "leaseDurationSeconds": 4,
            }
        }
    )
    a, b = elector(store, "a", clocks, lost), elector(store, "b", clocks, lost)
    a.attempt(), b.attempt()  # both start watching the dead replica's lease
    clocks.seconds += 5
    # Both read the same version, then both write: the second write is refused by its resourceVersion.
    read_by_b = store.get()
    assert a.attempt() is Move.ACQUIRE
    store_get, store.get = store.get, lambda: copy.deepcopy(read_by_b)  # type: ignore[method-assign]
    assert b.attempt() is None and not b.leading
    store.get = store_get  # type: ignore[method-assign]
    assert store.holder == "a" and a.leading


def test_a_leader_that_cannot_renew_gives_up_by_the_renew_deadline_before_the_lease_expires() -> None:
    store, clocks, lost = FakeLeaseApi(), Clocks(), list[str]()
    a = elector(store, "a", clocks, lost)
    a.attempt()
    store.failing = True
    clocks.seconds += 3
    assert not a.overdue()
    clocks.seconds += 0.1
    assert a.overdue()  # 3.1 s unrenewed: past the deadline, 0.9 s before a standby may take it


def test_a_leader_that_finds_the_lease_taken_stops_at_once() -> None:
    store, clocks, lost = FakeLeaseApi(), Clocks(), list[str]()
    a = elector(store, "a", clocks, lost)
    a.attempt()
    assert store.lease is not None
    store.lease["spec"]["holderIdentity"] = "b"
    assert a.attempt() is Move.STANDBY
    assert not a.leading and lost == ["a: the lease is held by b now"]


def test_a_released_lease_is_taken_at_once() -> None:
    store, clocks, lost = FakeLeaseApi(), Clocks(), list[str]()
    a, b = elector(store, "a", clocks, lost), elector(store, "b", clocks, lost)
    a.attempt()
    b.attempt()
    a.stop(release=True)
    assert store.holder is None
    assert b.attempt() is Move.ACQUIRE and store.holder == "b"


def test_timings_that_would_let_two_leaders_overlap_are_refused() -> None:
    with pytest.raises(ValueError, match="renew deadline < lease duration"):
        LeaseElector(FakeLeaseApi(), "a", lambda: None, duration=10, renew_deadline=10, retry_period=2)
