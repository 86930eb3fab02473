"""JSON merge patch (RFC 7386) between the status as stored and the status we want.

Only keys that changed are sent, so a field a human set meanwhile (status.abort) is never clobbered,
and an unchanged status produces an empty patch: no API write at all.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any


def merge_patch(old: dict[str, Any], new: dict[str, Any], owned: Collection[str] = ()) -> dict[str, Any]:
    """The merge patch that turns `old` into `new`, touching only top-level keys we own.

    Top-level keys in neither `new` nor `owned` are left alone (kopf keeps bookkeeping in status);
    an owned key missing from `new` is removed. Nested objects are diffed recursively; lists are
    replaced whole, as merge patch requires.
    """
    return _diff({k: v for k, v in old.items() if k in new or k in owned}, new)


def _diff(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    patch: dict[str, Any] = {k: None for k in old if k not in new}
    for key, value in new.items():
        if key not in old:
            patch[key] = value
        elif isinstance(value, dict) and isinstance(old[key], dict):
            sub = _diff(old[key], value)
            if sub:
                patch[key] = sub
        elif old[key] != value:
            patch[key] = value
    return patch
