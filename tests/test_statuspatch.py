from __future__ import annotations

from agent_rollout.statuspatch import merge_patch


def test_unchanged_status_produces_no_patch() -> None:
    status = {"phase": "Progressing", "weights": {"legacy": 90, "candidate": 10}, "history": [{"a": 1}]}
    assert merge_patch(status, dict(status), owned={"phase", "weights", "history"}) == {}


def test_only_changed_keys_are_sent() -> None:
    old = {"phase": "Progressing", "weights": {"legacy": 90, "candidate": 10}, "currentStep": 1}
    new = {"phase": "Progressing", "weights": {"legacy": 50, "candidate": 50}, "currentStep": 2}
    assert merge_patch(old, new) == {"weights": {"legacy": 50, "candidate": 50}, "currentStep": 2}


def test_foreign_keys_are_left_alone_and_owned_missing_keys_are_removed() -> None:
    old = {"kopf": {"progress": {}}, "stepStartedAt": "2026-01-01T00:00:00Z", "phase": "Progressing"}
    new = {"phase": "Promoted"}
    assert merge_patch(old, new, owned={"phase", "stepStartedAt"}) == {
        "phase": "Promoted",
        "stepStartedAt": None,
    }


def test_a_human_abort_set_meanwhile_is_not_clobbered() -> None:
    # We read status without abort, planned, and diff against what we read: abort is never in the patch.
    old = {"phase": "Progressing", "currentStep": 1}
    new = {"phase": "Progressing", "currentStep": 2}
    assert "abort" not in merge_patch(old, new, owned={"phase", "currentStep", "abort"})


def test_lists_are_replaced_whole() -> None:
    assert merge_patch({"history": [1, 2]}, {"history": [2, 3]}) == {"history": [2, 3]}
