"""glibc's allocator at 10,000 rollouts: few arenas, and free pages given back to the system.

CPython takes objects over 512 bytes (dict tables, answer bodies, decoded strings' buffers) from
malloc. glibc gives each thread that allocates its own arena, up to 8 per core, and the operator's
threads all allocate: the kube client's pool, Prometheus' gateway, one list/watch thread per kind and
namespace. Memory freed in an arena stays there for that arena's next allocations, and free pages
between live chunks are returned to the system only by malloc_trim. So the fleet-wide answers,
decoded in whichever worker thread took them, left free pages in many arenas, counted in the RSS.

Two things, both glibc only (elsewhere nothing happens): the arenas are bounded (ARENAS, before the
first thread is started; CPython allocates under the GIL, so threads rarely wait on an arena's lock),
and `keep_trimmed` returns free pages once a minute, in a worker thread: a trim walks every arena's
free chunks (20 ms on a fragmented 400 MiB heap), and the event loop must not wait for that.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging
import os
import time

log = logging.getLogger(__name__)

ENV = "AGENT_ROLLOUT_MALLOC_ARENAS"
ARENAS = 2  # default; 0 leaves glibc's own (8 per core)
TRIM_EVERY = 60.0  # seconds between two trims
_M_ARENA_MAX = -8  # mallopt's parameter number in glibc's malloc.h


def _glibc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
        libc.gnu_get_libc_version  # noqa: B018  (present in glibc only: musl has no malloc_trim)
        libc.malloc_trim  # noqa: B018
        libc.mallopt  # noqa: B018
    except (OSError, AttributeError):
        return None
    return libc


_LIBC = _glibc()


def bound_arenas(arenas: int | None = None) -> int | None:
    """Bound glibc's arenas to `arenas` (default: env AGENT_ROLLOUT_MALLOC_ARENAS, else ARENAS);
    returns the bound set, None when nothing was set (not glibc, or 0). Call it before any thread
    starts: an arena a thread has is kept."""
    if arenas is None:
        text = os.environ.get(ENV, str(ARENAS))
        if not text.isdigit():
            raise ValueError(f"{ENV} must be a whole number of arenas (0: glibc's default), got {text!r}")
        arenas = int(text)
    if _LIBC is None or arenas < 1:
        return None
    if _LIBC.mallopt(_M_ARENA_MAX, arenas) != 1:
        log.warning("glibc refused mallopt(M_ARENA_MAX, %d): its default arenas stay", arenas)
        return None
    return arenas


def trim() -> bool:
    """Return free pages of every arena to the system; True if any was returned. Blocks for as long
    as it walks the arenas: run it off the event loop."""
    return _LIBC is not None and bool(_LIBC.malloc_trim(0))


async def keep_trimmed(every: float = TRIM_EVERY) -> None:
    """Return free pages every `every` seconds, off the event loop, until cancelled."""
    if _LIBC is None:
        return
    while True:
        await asyncio.sleep(every)
        started = time.perf_counter()
        returned = await asyncio.to_thread(trim)
        log.debug("free pages returned: %s, in %.3f s", returned, time.perf_counter() - started)
