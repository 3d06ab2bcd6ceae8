"""The public TextToSpeech servicer: validates, admits, plans, runs the stages, encodes."""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from typing import AsyncIterator

import grpc
import numpy as np

from gateway.audio import ENCODINGS, AudioEncoder, normalize_encoding
from gateway.metrics import GatewayMetrics
from gateway.modes import Mode
from gateway.pipeline import AudioPiece
from gateway.synthesis import SynthesisOptions, SynthesisPlan, Synthesizer, VoiceSpec
from gateway.token_budget import PieceCheck
from services.common.errors import InvalidRequest, Overloaded, ServingError, map_errors, status_of
from services.common.pb import tts_pb2, tts_pb2_grpc

logger = logging.getLogger(__name__)
MODES = {
    tts_pb2.SYNTHESIS_MODE_UNSPECIFIED: None,
    tts_pb2.SYNTHESIS_MODE_SFT: Mode.SFT,
    tts_pb2.SYNTHESIS_MODE_ZERO_SHOT: Mode.ZERO_SHOT,
    tts_pb2.SYNTHESIS_MODE_CROSS_LINGUAL: Mode.CROSS_LINGUAL,
    tts_pb2.SYNTHESIS_MODE_INSTRUCT2: Mode.INSTRUCT2,
}
MAX_TEXT_PIECE_CHARS = 4000


def voice_spec(message: tts_pb2.SynthesizeRequest | tts_pb2.TextStreamConfig) -> VoiceSpec:
    if message.WhichOneof("voice") == "prompt":
        return VoiceSpec(prompt_audio=message.prompt.audio, prompt_text=message.prompt.text)
    return VoiceSpec(speaker_id=message.speaker_id)


def mode_of(value: int) -> Mode | None:
    if value not in MODES:
        raise InvalidRequest(f"mode: unknown value {value}")
    return MODES[value]


def check_encoding(encoding: int) -> None:
    if normalize_encoding(encoding) not in ENCODINGS:
        raise InvalidRequest(f"encoding: unknown value {encoding}")


class TextToSpeechServicer(tts_pb2_grpc.TextToSpeechServicer):
    def __init__(self, synthesizer: Synthesizer, metrics: GatewayMetrics, max_concurrent_requests: int) -> None:
        self.synthesizer = synthesizer
        self.metrics = metrics
        self.max_concurrent_requests = max_concurrent_requests
        self.num_in_flight = 0

    @map_errors
    async def Synthesize(
        self, request: tts_pb2.SynthesizeRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[tts_pb2.SynthesizeResponse]:
        async def responses() -> AsyncIterator[tts_pb2.SynthesizeResponse]:
            check_encoding(request.encoding)
            options = SynthesisOptions(
                text=request.text,
                voice=voice_spec(request),
                mode=mode_of(request.mode),
                instruct_text=request.instruct_text,
                seed=request.seed if request.HasField("seed") else secrets.randbits(63),
                stream=request.stream,
                speed=request.speed if request.HasField("speed") else None,
                text_frontend=request.text_frontend if request.HasField("text_frontend") else True,
            )
            plan = await self.synthesizer.plan(options, context.time_remaining())
            pieces = self.synthesizer.run(plan, context.time_remaining())
            async for response in self._encode(plan, pieces, request.encoding, request.stream):
                yield response

        async for response in self.admitted(responses()):
            yield response

    @map_errors
    async def SynthesizeTextStream(
        self, requests: AsyncIterator[tts_pb2.TextStreamRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[tts_pb2.SynthesizeResponse]:
        async def responses() -> AsyncIterator[tts_pb2.SynthesizeResponse]:
            messages = requests.__aiter__()
            first = await anext(messages, None)
            if first is None or first.WhichOneof("payload") != "config":
                raise InvalidRequest("the first SynthesizeTextStream message must set `config`")
            config = first.config
            check_encoding(config.encoding)
            options = SynthesisOptions(
                text="",
                voice=voice_spec(config),
                mode=mode_of(config.mode),
                instruct_text=config.instruct_text,
                seed=config.seed if config.HasField("seed") else secrets.randbits(63),
                stream=True,
                text_frontend=False,
            )
            plan = await self.synthesizer.plan(options, context.time_remaining(), text_stream=True)
            token_check = await self.synthesizer.piece_check(plan, context.time_remaining())
            pieces = _TextPieces(messages, self.synthesizer.max_text_chars, token_check)
            audio = self.synthesizer.run(plan, context.time_remaining(), pieces.iterate())
            async for response in self._encode(plan, pieces.until_failed(audio), config.encoding, True):
                yield response

        async for response in self.admitted(responses()):
            yield response

    async def admitted(self, responses: AsyncIterator[tts_pb2.SynthesizeResponse]) -> AsyncIterator:
        """Admission control and outcome accounting around one call."""
        code = grpc.StatusCode.OK
        if self.num_in_flight >= self.max_concurrent_requests:
            self.metrics.requests.labels(grpc.StatusCode.RESOURCE_EXHAUSTED.name).inc()
            raise Overloaded(f"{self.num_in_flight} requests in flight (max_concurrent_requests)")
        self.num_in_flight += 1
        self.metrics.in_flight.inc()
        try:
            async for response in responses:
                yield response
        except (asyncio.CancelledError, GeneratorExit):  # the caller went away
            code = grpc.StatusCode.CANCELLED
            raise
        except Exception as exc:
            code = status_of(exc)[0]
            raise
        finally:
            self.num_in_flight -= 1
            self.metrics.in_flight.dec()
            self.metrics.requests.labels(code.name).inc()

    async def _encode(
        self, plan: SynthesisPlan, pieces: AsyncIterator[AudioPiece], encoding: int, stream: bool
    ) -> AsyncIterator[tts_pb2.SynthesizeResponse]:
        started = time.perf_counter()
        encoder: AudioEncoder | None = None
        num_samples, index = 0, 0
        if stream:
            timings = None
            async for piece in pieces:
                timings = timings or piece.timings
                if piece.samples.size == 0 and not piece.is_final:
                    continue  # nothing to play yet; its timings ride on the first real chunk
                if index == 0:
                    piece.timings = timings
                    self.metrics.time_to_first_audio.observe(time.perf_counter() - started)
                encoder = encoder or AudioEncoder(encoding, piece.sample_rate, streaming=True)
                yield self._response(encoder, piece, index)
                num_samples += piece.samples.size
                index += 1
        else:
            collected: list[AudioPiece] = [piece async for piece in pieces]
            whole = AudioPiece(
                np.concatenate([p.samples for p in collected]), collected[-1].sample_rate, True,
                next((p.timings for p in collected if p.timings is not None), None),
            )
            encoder = AudioEncoder(encoding, whole.sample_rate, streaming=False)
            yield self._response(encoder, whole, 0)
            num_samples = whole.samples.size
        duration = time.perf_counter() - started
        audio_seconds = num_samples / encoder.sample_rate if encoder else 0.0
        self.metrics.request_duration.observe(duration)
        self.metrics.audio.inc(audio_seconds)
        if audio_seconds > 0:
            self.metrics.real_time_factor.observe(duration / audio_seconds)
        logger.info(
            "request %s (%s, %d segments): %.2f s of audio in %.2f s",
            plan.request_id, plan.mode.value, len(plan.segments), audio_seconds, duration,
        )

    @staticmethod
    def _response(encoder: AudioEncoder, piece: AudioPiece, index: int) -> tts_pb2.SynthesizeResponse:
        response = tts_pb2.SynthesizeResponse(
            audio=encoder.encode(piece.samples),
            sample_rate=piece.sample_rate,
            encoding=encoder.encoding,
            chunk_index=index,
            is_final=piece.is_final,
        )
        if piece.timings is not None:
            response.first_chunk_timings.CopyFrom(
                tts_pb2.StageTimings(
                    llm_seconds=piece.timings.llm_seconds,
                    flow_seconds=piece.timings.flow_seconds,
                    vocoder_seconds=piece.timings.vocoder_seconds,
                )
            )
        return response


class _TextPieces:
    """The caller's text messages as LLM text pieces. A bad message stops the text (the LLM is
    left waiting, not told the text ended) and fails the call with the caller's error through
    `until_failed`, which tears the stage calls down at once."""

    def __init__(
        self, messages: AsyncIterator[tts_pb2.TextStreamRequest], max_total_chars: int,
        token_check: PieceCheck | None = None,
    ) -> None:
        self.messages = messages
        self.max_total_chars = max_total_chars
        self.token_check = token_check  # the LLM's position budget (gateway/token_budget.py)
        self.error: ServingError | None = None
        self.failed = asyncio.Event()
        self.total = 0

    def _check(self, message: tts_pb2.TextStreamRequest) -> str | None:
        if message.WhichOneof("payload") != "text":
            return "only the first SynthesizeTextStream message may set `config`; later ones set `text`"
        if len(message.text) > MAX_TEXT_PIECE_CHARS:
            return f"text: a piece of {len(message.text)} characters exceeds {MAX_TEXT_PIECE_CHARS}"
        if self.total + len(message.text) > self.max_total_chars:
            return f"text: more than {self.max_total_chars} characters in all"
        return None

    async def iterate(self) -> AsyncIterator[str]:
        async for message in self.messages:
            problem = self._check(message)
            if problem is None and message.text and self.token_check is not None:
                try:
                    problem = await self.token_check(message.text)
                except ServingError as exc:  # counting failed (the frontend): its status, not the caller's
                    await self._fail_with(exc)
            if problem is not None:
                await self._fail(problem)
            self.total += len(message.text)
            if message.text:
                yield message.text
        if self.total == 0:
            await self._fail("text: the stream ended without any text")

    async def _fail(self, problem: str) -> None:
        await self._fail_with(InvalidRequest(problem))

    async def _fail_with(self, error: ServingError) -> None:
        self.error = error
        self.failed.set()
        await asyncio.Future()  # never resumes: until_failed cancels the stage calls

    async def until_failed(self, audio: AsyncIterator[AudioPiece]) -> AsyncIterator[AudioPiece]:
        """`audio`, unless the caller's text turns out bad first: then its error."""
        failed = asyncio.ensure_future(self.failed.wait())
        pending: asyncio.Future | None = None
        try:
            while True:
                pending = asyncio.ensure_future(anext(audio, None))
                await asyncio.wait({pending, failed}, return_when=asyncio.FIRST_COMPLETED)
                if not pending.done():
                    assert self.error is not None
                    raise self.error
                piece = pending.result()
                pending = None
                if piece is None:
                    return
                yield piece
        finally:
            failed.cancel()
            if pending is not None and not pending.done():
                pending.cancel()
                await asyncio.gather(pending, return_exceptions=True)
            await audio.aclose()
