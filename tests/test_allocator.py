"""glibc's allocator bounded and trimmed (allocator.py), measured on a process of its own."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from agent_rollout import allocator

OPERATOR = str(Path(__file__).resolve().parents[1] / "operator")

# Chunks freed between live ones (no free memory at the heap's top for free() to give back): what the
# fleet-wide answers leave behind in the arenas. The RSS before and after a trim, in MiB.
FRAGMENTED = """
import json, sys
from agent_rollout import allocator

def rss():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:")) / 1024

chunks = [b"x" * 100_000 for _ in range(2_000)]  # written (resident), under the mmap threshold
del chunks[::2]
before = rss()
returned = allocator.trim()
print(json.dumps({"before": before, "after": rss(), "returned": returned}))
"""


def _run(code: str, **env: str) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "PYTHONPATH": OPERATOR, **env},
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return json.loads(out.stdout)  # type: ignore[no-any-return]


@pytest.mark.skipif(allocator._LIBC is None, reason="glibc only: elsewhere nothing is trimmed")
def test_a_trim_returns_the_free_pages_between_live_chunks_to_the_system() -> None:
    measured = _run(FRAGMENTED)
    assert measured["returned"]
    # About 100 MB freed between live chunks; free() alone keeps it all.
    assert measured["before"] - measured["after"] > 60, measured


@pytest.mark.skipif(allocator._LIBC is None, reason="glibc only: elsewhere nothing is trimmed")
def test_the_operators_trimming_task_returns_them_within_its_period() -> None:
    """What the operator runs (handlers: allocator.keep_trimmed), at a period of 0.05 s."""
    looped = FRAGMENTED.replace(
        "returned = allocator.trim()",
        "import asyncio\n"
        "try:\n"
        "    asyncio.run(asyncio.wait_for(allocator.keep_trimmed(0.05), 0.5))\n"
        "except TimeoutError:\n"
        "    returned = True",
    )
    measured = _run(looped)
    assert measured["before"] - measured["after"] > 60, measured


def test_the_arenas_setting_must_be_a_whole_number_and_zero_leaves_glibc_alone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(allocator.ENV, "two")
    with pytest.raises(ValueError, match=allocator.ENV):
        allocator.bound_arenas()
    monkeypatch.setenv(allocator.ENV, "0")
    assert allocator.bound_arenas() is None
