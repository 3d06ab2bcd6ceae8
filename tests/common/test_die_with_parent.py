"""A command started through die_with_parent gets SIGTERM when its starter dies, even by
SIGKILL; and it is started without a preexec_fn, so no fork handlers run in a gRPC process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from services.common import die_with_parent
from tests.waiting import eventually

STARTER = """
import subprocess, sys
from services.common import die_with_parent
child = subprocess.Popen(die_with_parent.command([sys.executable, "-c", "import time; time.sleep(120)"]))
print(child.pid, flush=True)
child.wait()
"""


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split()[2] != "Z"  # a zombie has exited
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux-only")
async def test_the_child_dies_with_a_killed_starter():
    starter = subprocess.Popen([sys.executable, "-c", STARTER], stdout=subprocess.PIPE, text=True)
    try:
        child = int(starter.stdout.readline())
        assert _alive(child)
        # It is the command itself now, not the launcher: the launcher exec'd it.
        with open(f"/proc/{child}/cmdline", "rb") as cmdline:
            assert b"time.sleep(120)" in cmdline.read()
        os.kill(starter.pid, signal.SIGKILL)
        starter.wait()
        await eventually(lambda: not _alive(child), timeout=30, what="the orphan exiting")
    finally:
        starter.kill()
        starter.wait()


def test_a_dead_parent_before_arming_means_no_exec():
    result = subprocess.run(
        [sys.executable, "-m", "services.common.die_with_parent", "1", sys.executable, "-c", "print('ran')"],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 1 and "ran" not in result.stdout  # our parent is not pid 1


def test_command_wraps_the_argv():
    assert die_with_parent.command(["cosyvoice", "serve", "llm"])[-3:] == ["cosyvoice", "serve", "llm"]
    assert die_with_parent.command(["x"])[3] == str(os.getpid())
