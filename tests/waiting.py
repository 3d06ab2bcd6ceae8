"""Wait for a condition with a generous bound instead of sleeping a guessed time."""

from __future__ import annotations

import asyncio
import time
from typing import Callable


async def eventually(condition: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not hold within {timeout} s")
        await asyncio.sleep(0.01)
