"""erpwatch's own native heap (glibc malloc): one arena, and free pages handed back.

glibc gives each thread that allocates an arena of its own (up to eight per core), and
keeps the free pages of every arena. erpwatch's threads (the store writer, asyncio's pool
for the page's queries) are few and run Python under the GIL, so one arena costs no
contention: after the status page has been served once, erpwatch holds ~3 MiB less. The
page's first render (jinja2 compiling the template) frees ~3 MiB more than it keeps;
`trim` gives those pages back to the kernel.

Both only ever touch erpwatch's own process (targets start with their own heap) and do
nothing off glibc, or when the operator set ``MALLOC_ARENA_MAX`` for erpwatch.
"""

from __future__ import annotations

import ctypes
import os

from watchdog.reaper import libc

M_ARENA_MAX = -8  # mallopt's parameter number, from glibc's malloc.h


def one_arena() -> bool:
    """Have every thread allocate from the main arena; call before threads start. False
    when not on glibc or when ``MALLOC_ARENA_MAX`` (the operator's choice) is set."""
    if "MALLOC_ARENA_MAX" in os.environ:
        return False
    c = libc()
    if c is None or not hasattr(c, "mallopt"):
        return False
    try:
        return int(c.mallopt(M_ARENA_MAX, 1)) == 1
    except (OSError, ctypes.ArgumentError):
        return False


def trim() -> bool:
    """Hand the heap's free pages back to the kernel (``malloc_trim(0)``, ~1 ms); False
    off glibc or when there was nothing to give back."""
    c = libc()
    if c is None or not hasattr(c, "malloc_trim"):
        return False
    try:
        return int(c.malloc_trim(0)) == 1
    except (OSError, ctypes.ArgumentError):
        return False
