"""What the gateway's stage pipeline and the in-process monolith share: the job and audio
types, and the driver that runs a synthesis as three pump tasks joined by bounded queues.

    tokens ──▶ queue ──▶ mel ──▶ queue ──▶ audio ──▶ queue ──▶ caller

The pumps differ (gRPC streams in the gateway, runner calls in the monolith); how they are
run, how the first failure surfaces and how everything is torn down does not.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, AsyncIterator, Callable, Coroutine

import numpy as np


@dataclass(frozen=True)
class SynthesisJob:
    request_id: str
    text: str
    speaker_id: str
    seed: int
    stream: bool = True  # False: one flow call over every token (full attention), one audio piece
    prompt_text: str = ""  # LLM: the zero-shot transcript or the instruct2 instruction
    prompt_speech_tokens: tuple[int, ...] = ()  # LLM: the zero-shot prompt's speech tokens
    flow_prompt: Any = None  # the flow's voice (gateway: a SpeakerPrompt); None: preset `speaker_id`
    num_flow_prompt_tokens: int = 0  # prompt tokens the flow sees: they set the first hop's pad
    speed: float = 1.0  # time stretch of a non-streaming request


@dataclass
class FirstChunkTimings:
    llm_seconds: float = 0.0  # request receipt → the token that completes the first chunk
    flow_seconds: float = 0.0  # the flow's compute for the first chunk (batch wait included)
    vocoder_seconds: float = 0.0  # the vocoder's compute for the first chunk (batch wait included)


@dataclass
class AudioPiece:
    samples: np.ndarray  # float32 mono
    sample_rate: int
    is_final: bool
    timings: FirstChunkTimings | None = None  # on the first piece only


# How long pumps get to end by themselves after the final piece; stages answer at once.
FINISH_SECONDS = 5.0


async def run_pumps(
    pumps: list[Coroutine[object, object, None]],
    audio_out: asyncio.Queue,
    on_exit: Callable[[], None] | None = None,
) -> AsyncIterator[AudioPiece]:
    """Run `pumps` as tasks and yield the AudioPieces they put on `audio_out`, up to the final
    one. The first pump failure is raised here. However the caller leaves (done, error,
    cancellation, closing the iterator early), `on_exit` runs and every pump is cancelled and
    awaited, so their `finally` blocks free the request's state at once."""
    tasks = [asyncio.create_task(pump) for pump in pumps]
    failure: asyncio.Future = asyncio.get_running_loop().create_future()

    def _on_done(task: asyncio.Task) -> None:
        if not task.cancelled() and task.exception() is not None and not failure.done():
            failure.set_exception(task.exception())

    for task in tasks:
        task.add_done_callback(_on_done)
    getter: asyncio.Future | None = None
    finished = False
    try:
        while True:
            getter = asyncio.ensure_future(audio_out.get())
            await asyncio.wait({getter, failure}, return_when=asyncio.FIRST_COMPLETED)
            if not getter.done():
                getter.cancel()
                failure.result()  # raises the first stage error
            piece: AudioPiece = getter.result()
            finished = piece.is_final
            yield piece
            if piece.is_final:
                return
    finally:
        if getter is not None and not getter.done():
            getter.cancel()  # the caller was cancelled while waiting for audio
        if finished:
            # After the final piece every pump ends by itself: readers take their stream's
            # status, writers half-close. Letting them (instead of cancelling calls whose
            # status is still on its way) is what keeps the gateway's memory flat: grpc.aio
            # leaks a call, its reader and its last message when the call is cancelled with
            # an operation in flight (docs/reliability.md, "The gateway's memory").
            await asyncio.wait(tasks, timeout=FINISH_SECONDS)
        if on_exit is not None:
            on_exit()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if failure.done() and not failure.cancelled():
            failure.exception()  # mark retrieved: it was raised above or superseded
