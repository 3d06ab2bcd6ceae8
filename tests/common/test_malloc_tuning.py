"""glibc's malloc thresholds are fixed in every `cosyvoice serve` process (the soak figures in
docs/reliability.md show why), unless the operator set glibc's own variables."""

from __future__ import annotations

import platform

import pytest

from services.common.malloc_tuning import return_freed_memory_to_os

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")


def test_applied_on_glibc():
    assert return_freed_memory_to_os({}) is True


@pytest.mark.parametrize("variable", ["MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_"])
def test_an_operator_setting_wins(variable):
    assert return_freed_memory_to_os({variable: "1048576"}) is False
