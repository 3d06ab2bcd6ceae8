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
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform

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
    if platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    return bool(libc.mallopt(M_MMAP_THRESHOLD, THRESHOLD_BYTES)) and bool(libc.mallopt(M_TRIM_THRESHOLD, THRESHOLD_BYTES))
