"""A request's text segments, back to back.

Each segment is its own pass through the stages (as in the reference, which synthesises the
sentences of a text one after another). Run strictly in turn, the LLM would idle while a
segment's last flow and vocoder chunks are computed, and a listener could hear that as a
pause between sentences. Here segment k+1 starts as soon as segment k's LLM has sent its last
token (and segment k-1 has been played), so the LLM moves straight on while the other stages
finish segment k; audio still leaves in segment order, and each segment's pieces wait in a
bounded queue (backpressure) until the segments before it are done.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from typing import AsyncGenerator, AsyncIterator, Callable

from gateway.metrics import LiveQueues
from gateway.pipeline import AudioPiece

_END = object()


@dataclass
class _Segment:
    queue: asyncio.Queue
    llm_done: asyncio.Event = field(default_factory=asyncio.Event)
    consumed: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task | None = None
    error: BaseException | None = None


async def _produce(segment: _Segment, pieces: AsyncGenerator[AudioPiece, None]) -> None:
    try:
        async for piece in pieces:
            await segment.queue.put(piece)
    except asyncio.CancelledError:
        raise
    except BaseException as exc:  # noqa: BLE001 - handed to the consumer, raised there in order
        segment.error = exc
    finally:
        segment.llm_done.set()  # a failed or finished segment must not hold the next one back
        # Closed here, not left to the garbage collector: cancelled while waiting for room in
        # the queue, the pipeline's generator would otherwise keep its stage calls open.
        await pieces.aclose()
    await segment.queue.put(_END)


async def back_to_back(
    count: int,
    run_segment: Callable[[int, asyncio.Event], AsyncGenerator[AudioPiece, None]],
    queue_depth: int,
    queues: LiveQueues | None = None,
) -> AsyncIterator[AudioPiece]:
    """The pieces of segments 0..count-1 in order; `run_segment(k, llm_done)` runs segment k
    and sets `llm_done` when its LLM is done. At most two segments are alive: the one being
    played and the next (so memory, stage streams and each segment's stage deadline stay
    bounded however long the text). The first failure is raised when its segment's turn
    comes; leaving early cancels and closes every segment that was started. With `queues`,
    each segment's waiting audio counts as vocoder_to_client queue depth."""
    segments: list[_Segment] = []
    tracked = contextlib.ExitStack()
    created = [asyncio.get_running_loop().create_future() for _ in range(count)]

    async def launch() -> None:
        for index in range(count):
            if index >= 2:
                await segments[index - 2].consumed.wait()
            segment = _Segment(asyncio.Queue(queue_depth))
            if queues is not None:
                tracked.enter_context(queues.tracking("vocoder_to_client", segment.queue))
            segment.task = asyncio.create_task(_produce(segment, run_segment(index, segment.llm_done)))
            segments.append(segment)
            created[index].set_result(segment)
            await segment.llm_done.wait()
            if segment.error is not None:
                return  # later segments would be thrown away

    launcher = asyncio.create_task(launch())
    try:
        for index in range(count):
            segment: _Segment = await created[index]
            while (item := await segment.queue.get()) is not _END:
                yield item
            segment.consumed.set()
            if segment.error is not None:
                raise segment.error
    finally:
        launcher.cancel()
        tasks = [launcher, *(s.task for s in segments if s.task is not None)]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for future in created:
            future.cancel()
        tracked.close()
