"""StageHealthMonitor's reading of channel states, with scripted channels: a stage that fails
its connections is down at once, a reconnect that settles (the servers' max_connection_age
closes every connection after 5 minutes) never flips the gateway's health, one that does not
settle is down after `settle_seconds`."""

from __future__ import annotations

import asyncio

import grpc

from gateway.stage_health import StageHealthMonitor

S = grpc.ChannelConnectivity


class _ScriptedChannel:
    """get_state answers the current state; `move` changes it and wakes the waiters."""

    def __init__(self, state: grpc.ChannelConnectivity = S.READY) -> None:
        self.state = state
        self.changed = asyncio.Event()

    def get_state(self, try_to_connect: bool = False) -> grpc.ChannelConnectivity:
        return self.state

    async def wait_for_state_change(self, last: grpc.ChannelConnectivity) -> None:
        while self.state == last:
            self.changed.clear()
            await self.changed.wait()

    def move(self, state: grpc.ChannelConnectivity) -> None:
        self.state = state
        self.changed.set()


async def _monitor(settle: float) -> tuple[StageHealthMonitor, _ScriptedChannel, list[bool]]:
    verdicts: list[bool] = []

    async def record(ok: bool) -> None:
        verdicts.append(ok)

    channel = _ScriptedChannel()
    monitor = StageHealthMonitor({"flow": channel, "llm": _ScriptedChannel()}, record, settle_seconds=settle)
    monitor.start()
    await asyncio.sleep(0)
    return monitor, channel, verdicts


async def _settled() -> None:
    for _ in range(5):  # let the watch task run to its next wait
        await asyncio.sleep(0)


async def test_a_failed_connection_is_down_at_once_and_ready_again_is_up():
    monitor, flow, verdicts = await _monitor(settle=3600)
    flow.move(S.CONNECTING)
    flow.move(S.TRANSIENT_FAILURE)
    await _settled()
    assert verdicts == [False] and monitor.down == ["flow"]
    flow.move(S.READY)
    await _settled()
    assert verdicts == [False, True] and monitor.down == []
    await monitor.stop()


async def test_a_reconnect_that_settles_never_flips_health():
    monitor, flow, verdicts = await _monitor(settle=3600)
    for _ in range(3):
        flow.move(S.IDLE)
        await _settled()
        flow.move(S.CONNECTING)
        await _settled()
        flow.move(S.READY)
        await _settled()
    assert verdicts == []
    await monitor.stop()


async def test_a_reconnect_that_does_not_settle_is_down():
    monitor, flow, verdicts = await _monitor(settle=0.05)
    flow.move(S.CONNECTING)
    await asyncio.wait_for(_until(lambda: verdicts == [False]), timeout=60)  # a hang guard
    assert monitor.down == ["flow"]
    await monitor.stop()


async def _until(condition) -> None:
    while not condition():
        await asyncio.sleep(0.01)
