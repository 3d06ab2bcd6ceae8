"""Run the `cosyvoice` CLI as a real process from an async test, without blocking the event
loop that serves the in-process stack it talks to."""

from __future__ import annotations

import asyncio
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Run:
    code: int
    out: str
    err: str


async def cosyvoice(*args: str) -> Run:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "services.cli.main", *args, cwd=ROOT,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 300)  # a hang guard, not a timing check
    return Run(process.returncode, out.decode(), err.decode())


def assert_ok(run: Run) -> str:
    assert run.code == 0, run
    return run.out


def assert_error(run: Run, message: str) -> None:
    """Exit 1 and exactly `message` as the only stderr line (no traceback)."""
    assert run.code == 1, run
    assert run.err.splitlines() == [message], run.err
