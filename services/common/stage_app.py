"""A service process as a value: its host, how it loads, how it closes. Tests run it in-process."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Awaitable, Callable

from services.common.server import ServiceHost, run_until_signal


@dataclass
class StageApp:
    name: str
    host: ServiceHost
    load: Callable[[], Awaitable[None]]
    close: Callable[[], Awaitable[None]]
    servicer: Any

    async def start(self) -> None:
        """In-process start for tests: bind, load and warm up, serve."""
        await self.host.start()
        await self.host.warm_up(self.load)

    async def stop(self, grace: float = 0.0) -> None:
        await self.host.stop(grace)
        await self.close()

    async def run(self) -> None:
        """The process entry point: serve until SIGTERM/SIGINT, then drain."""
        await run_until_signal(self.host, self.load, on_stop=self.close, name=self.name)
