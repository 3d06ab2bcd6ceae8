"""glibc's malloc thresholds are fixed in every `cosyvoice serve` process (the soak figures in
docs/reliability.md show why), unless the operator set glibc's own variables."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import textwrap

import pytest

from services.common.malloc_tuning import HeapTrimmer, return_freed_memory_to_os
from tests.conftest import ROOT

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")


def test_applied_on_glibc():
    assert return_freed_memory_to_os({}) is True


@pytest.mark.parametrize("variable", ["MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_"])
def test_an_operator_setting_wins(variable):
    assert return_freed_memory_to_os({variable: "1048576"}) is False


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_trimmer_trims_only_after_work_and_at_most_every_interval():
    clock, calls = _Clock(), []
    trimmer = HeapTrimmer(interval=10, clock=clock, malloc_trim=lambda pad: calls.append(pad) or 1)
    clock.now += 60
    assert not trimmer.due()  # nothing ran since the start: nothing to give back
    trimmer.worked()
    assert trimmer.due()
    trimmer.trim()
    assert calls == [0] and not trimmer.dirty
    trimmer.worked()
    clock.now += 9.9
    assert not trimmer.due()
    clock.now += 0.1
    assert trimmer.due()


def test_freed_heap_pages_go_back_to_the_os():
    """What the flow stage relies on: blocks below the mmap threshold, freed around survivors,
    stay resident until malloc_trim(0). In a child, so this process's heap is left alone."""
    script = textwrap.dedent("""
        import ctypes, os
        from services.common.malloc_tuning import HeapTrimmer, return_freed_memory_to_os
        assert return_freed_memory_to_os({})
        page = os.sysconf("SC_PAGE_SIZE")
        rss = lambda: int(open("/proc/self/statm").read().split()[1]) * page
        libc = ctypes.CDLL("libc.so.6")
        libc.malloc.restype = ctypes.c_void_p
        libc.free.argtypes = [ctypes.c_void_p]
        blocks = []
        for _ in range(3000):  # 64 KiB blocks (under the 128 KiB threshold) with a tiny survivor after each
            block = libc.malloc(64 * 1024); ctypes.memset(block, 1, 64 * 1024); blocks.append(block)
            blocks.append(libc.malloc(64))
        for block in blocks[0::2]:
            libc.free(block)
        before = rss()
        trimmer = HeapTrimmer(interval=0)
        trimmer.worked(); trimmer.trim()
        print(before, rss(), trimmer.trims)
    """)
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr
    before, after, trims = (int(v) for v in out.stdout.split())
    assert trims == 1
    assert before - after > 150e6, (before, after)  # about 190 MB was free inside the heap
