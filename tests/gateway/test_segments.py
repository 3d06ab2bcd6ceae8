"""Segments back to back: order, when the next segment starts, failures, early exit."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from gateway.pipeline import AudioPiece
from gateway.segments import back_to_back
from tests.waiting import eventually


def piece(value: float, final: bool = False) -> AudioPiece:
    return AudioPiece(np.full(4, value, np.float32), 24000, final)


class FakeSegments:
    """Segment k yields pieces k.0 and k.5 (final). The test decides when its LLM is done
    (`llm_finish[k]`) and when its last piece comes (`release[k]`)."""

    def __init__(self, count: int, fail: int | None = None) -> None:
        self.started: list[int] = []
        self.closed: list[int] = []
        self.llm_finish = [asyncio.Event() for _ in range(count)]
        self.release = [asyncio.Event() for _ in range(count)]
        self.fail = fail

    def finish_all(self) -> None:
        for event in (*self.llm_finish, *self.release):
            event.set()

    async def run(self, index: int, llm_done: asyncio.Event):
        self.started.append(index)
        try:
            yield piece(index)
            if index == self.fail:
                raise RuntimeError(f"segment {index} failed")
            await self.llm_finish[index].wait()
            llm_done.set()
            await self.release[index].wait()
            yield piece(index + 0.5, final=True)
        finally:  # where a pipeline frees its stage calls: must run at once, not at garbage collection
            self.closed.append(index)


async def test_pieces_come_in_order_and_the_next_segment_starts_when_the_llm_is_done():
    fake = FakeSegments(3)
    stream = back_to_back(3, fake.run, queue_depth=2)
    assert (await anext(stream)).samples[0] == 0
    assert fake.started == [0]  # segment 0's LLM is still working: nothing else started
    fake.llm_finish[0].set()
    # Segment 0's LLM is done but its last piece is not: segment 1 runs already, 2 does not.
    await eventually(lambda: fake.started == [0, 1], what="segment 1 starting")
    fake.finish_all()
    values = [p.samples[0] async for p in stream]
    assert values == [0.5, 1, 1.5, 2, 2.5]
    assert fake.started == [0, 1, 2]


async def test_a_failure_is_raised_in_its_turn_after_the_earlier_audio():
    fake = FakeSegments(3, fail=1)
    fake.finish_all()
    seen = []
    with pytest.raises(RuntimeError, match="segment 1 failed"):
        async for item in back_to_back(3, fake.run, queue_depth=2):
            seen.append(item.samples[0])
    assert seen == [0, 0.5, 1]
    assert 2 not in fake.started  # nothing after the failed segment was started


async def test_leaving_early_closes_every_started_segment_at_once():
    fake = FakeSegments(2)
    stream = back_to_back(2, fake.run, queue_depth=1)
    await anext(stream)
    fake.llm_finish[0].set()
    await eventually(lambda: fake.started == [0, 1], what="segment 1 starting")
    await stream.aclose()
    assert sorted(fake.closed) == [0, 1]


async def test_at_most_two_segments_are_alive():
    fake = FakeSegments(5)
    for event in fake.llm_finish:
        event.set()  # every LLM is done at once: only the player holds segments back
    stream = back_to_back(5, fake.run, queue_depth=1)
    assert (await anext(stream)).samples[0] == 0
    await eventually(lambda: fake.started == [0, 1], what="segment 1 starting")
    for _ in range(20):
        await asyncio.sleep(0)
    assert fake.started == [0, 1]  # segment 2 waits until segment 0 has been played
    fake.release[0].set()
    assert (await anext(stream)).samples[0] == 0.5
    assert (await anext(stream)).samples[0] == 1  # segment 0 fully played
    await eventually(lambda: fake.started == [0, 1, 2], what="segment 2 starting")
    fake.finish_all()
    assert [p.samples[0] async for p in stream] == [1.5, 2, 2.5, 3, 3.5, 4, 4.5]
