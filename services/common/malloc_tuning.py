"""Give freed tensor memory back to the operating system (glibc only).

glibc's malloc serves a request of 128 kB or more with its own mmap and returns it on free, but
after the first such block is freed it raises that threshold to the block's size, up to 32 MB.
From then on every tensor below the new threshold comes from the heap, and the heap keeps what
it frees. A stage whose tensors change size with every request (the flow's prefix, the
vocoder's mel chunks) therefore grows to its largest mix of live tensors and stays there:
measured in a 30-minute soak at 16 streams on the tiny model, the flow's lowest RSS grew 45 %
and the vocoder's 41 % after the warm-up (docs/reliability.md). Fixing both thresholds turns the
adjustment off: large blocks are mapped and unmapped again, and RSS follows the live memory.

Applied in every `cosyvoice serve` process before it loads anything. An operator who sets
MALLOC_MMAP_THRESHOLD_ or MALLOC_TRIM_THRESHOLD_ (glibc's own variables) keeps their values.

Blocks below the threshold still come from the heap, and glibc only returns the free space at
the top of each arena on its own. The flow's incremental caches and the tiny model's tensors are
many such blocks of changing sizes, so free space piles up inside the arenas: in an in-process
flow soak at 16 streams, the idle flow held 862-1032 MB that `malloc_trim(0)` brought back to
377-408 MB. `HeapTrimmer` calls it from the batch thread of the flow and the vocoder: when the
queue is empty (no caller waits) and at least every TRIM_INTERVAL_SECONDS under steady load.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform
import time
from typing import Callable

# From glibc's <malloc.h>.
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
THRESHOLD_BYTES = 128 * 1024  # glibc's own starting value, now kept fixed
_OPERATOR_VARIABLES = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")


def return_freed_memory_to_os(environ: dict[str, str] | None = None) -> bool:
    """Fix glibc's mmap and trim thresholds; True when applied (glibc, and not set by the operator)."""
    environ = dict(os.environ) if environ is None else environ
    if any(name in environ for name in _OPERATOR_VARIABLES):
        return False
    libc = _glibc()
    if libc is None:
        return False
    return bool(libc.mallopt(M_MMAP_THRESHOLD, THRESHOLD_BYTES)) and bool(libc.mallopt(M_TRIM_THRESHOLD, THRESHOLD_BYTES))


TRIM_INTERVAL_SECONDS = 10.0  # under steady load; a trim costs milliseconds (docs/reliability.md)
IDLE_TRIM_SECONDS = 1.0  # the queue has been empty this long: trim before waiting on


def _glibc() -> ctypes.CDLL | None:
    """The C library when it is glibc (mallopt and malloc_trim are glibc's), else None."""
    if platform.libc_ver()[0] != "glibc":
        return None
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")


def _glibc_malloc_trim() -> Callable[[int], int] | None:
    libc = _glibc()
    return None if libc is None else libc.malloc_trim


class HeapTrimmer:
    """Hands the free pages inside glibc's arenas back to the OS (`malloc_trim(0)`): at most
    every `interval` seconds while work keeps coming, and once the worker has been idle for
    `idle_after` seconds (the caller's part, see Batcher). Disabled off glibc. One thread calls it."""

    def __init__(self, interval: float = TRIM_INTERVAL_SECONDS, idle_after: float = IDLE_TRIM_SECONDS,
                 clock: Callable[[], float] = time.monotonic,
                 malloc_trim: Callable[[int], int] | None = None) -> None:
        self.interval, self.idle_after, self._clock = interval, idle_after, clock
        self._malloc_trim = malloc_trim if malloc_trim is not None else _glibc_malloc_trim()
        self._last = clock()
        self.dirty = False  # work ran since the last trim; otherwise there is nothing to give back
        self.trims = 0

    @property
    def enabled(self) -> bool:
        return self._malloc_trim is not None

    def worked(self) -> None:
        self.dirty = True

    def due(self) -> bool:
        """Work ran and the last trim is `interval` seconds old."""
        return self.enabled and self.dirty and self._clock() - self._last >= self.interval

    def trim(self) -> None:
        if self._malloc_trim is not None:
            self._malloc_trim(0)
            self.trims += 1
        self._last, self.dirty = self._clock(), False
