"""The gateway's own health follows its stages: NOT_SERVING while a stage has no serving replica.

Without this a load balancer keeps sending requests to a gateway whose llm or flow is dead,
and every one of them fails. Each stage channel already balances over the stage's replicas
with client-side health checking (gateway/clients.py): its connectivity state is READY exactly
while at least one replica is connected and its Health.Watch says SERVING. So the monitor
watches that state, one `wait_for_state_change` per stage (events, no polling), and tells the
server host whenever the verdict "every stage has a serving replica" changes.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Awaitable, Callable, Mapping

import grpc

logger = logging.getLogger(__name__)
READY = grpc.ChannelConnectivity.READY
IDLE = grpc.ChannelConnectivity.IDLE
CONNECTING = grpc.ChannelConnectivity.CONNECTING


class StageHealthMonitor:
    """Watches the stage channels; calls `on_change(all_serving)` when the verdict changes."""

    def __init__(
        self,
        channels: Mapping[str, grpc.aio.Channel],
        on_change: Callable[[bool], Awaitable[None]],
        settle_seconds: float = 1.0,
    ) -> None:
        self.channels = dict(channels)
        self.on_change = on_change
        self.settle_seconds = settle_seconds  # how long a reconnect may take before it counts as down
        self.serving = {name: True for name in self.channels}  # started once every stage was SERVING
        self._verdict = True
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def down(self) -> list[str]:
        """The stages without a serving replica, in the order they were given."""
        return [name for name, ok in self.serving.items() if not ok]

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._watch(name, channel), name=f"stage-health-{name}")
                       for name, channel in self.channels.items()]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

    async def _watch(self, name: str, channel: grpc.aio.Channel) -> None:
        # try_to_connect: a channel that went IDLE (its replicas went away) reconnects by itself
        # only when a call is made; the monitor asks it to, so a restarted stage is found
        # without waiting for the next request.
        state = channel.get_state(try_to_connect=True)
        while True:
            if state in (IDLE, CONNECTING):
                # A reconnect: the servers close each connection after max_connection_age (5 min)
                # and the channel is READY again within milliseconds, while a stage that died
                # fails its connection attempts (TRANSIENT_FAILURE) at once. Only a reconnect that
                # does not settle counts as the stage being down, so health does not flap.
                try:
                    await asyncio.wait_for(channel.wait_for_state_change(state), self.settle_seconds)
                except asyncio.TimeoutError:
                    await self._update(name, False, state)
                else:
                    state = channel.get_state(try_to_connect=True)
                    continue
            else:
                await self._update(name, state == READY, state)
            await channel.wait_for_state_change(state)
            state = channel.get_state(try_to_connect=True)

    async def _update(self, name: str, ok: bool, state: grpc.ChannelConnectivity) -> None:
        if self.serving[name] != ok:
            self.serving[name] = ok
            if ok:
                logger.info("the %s stage has a serving replica again", name)
            else:
                logger.warning("the %s stage has no serving replica (%s)", name, state.name)
        verdict = all(self.serving.values())
        if verdict != self._verdict:
            self._verdict = verdict
            logger.warning("gateway health: %s", "SERVING" if verdict else f"NOT_SERVING (down: {', '.join(self.down)})")
            await self.on_change(verdict)
