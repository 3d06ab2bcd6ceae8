"""The public TextToSpeech servicer: validates, admits, runs the stage pipeline, encodes."""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
import uuid
from typing import AsyncIterator

import grpc
import numpy as np

from gateway.audio import ENCODINGS, AudioEncoder, normalize_encoding
from gateway.metrics import GatewayMetrics
from gateway.pipeline import AudioPiece, StagePipeline, SynthesisJob
from services.common.errors import InvalidRequest, Overloaded, map_errors, status_of
from services.common.pb import tts_pb2, tts_pb2_grpc

logger = logging.getLogger(__name__)
MAX_SPEAKER_ID_CHARS = 256


def validate(request: tts_pb2.SynthesizeRequest, max_text_chars: int) -> None:
    if not request.text.strip():
        raise InvalidRequest("text: must not be empty")
    if len(request.text) > max_text_chars:
        raise InvalidRequest(f"text: {len(request.text)} characters exceed the limit of {max_text_chars}")
    if normalize_encoding(request.encoding) not in ENCODINGS:
        raise InvalidRequest(f"encoding: unknown value {request.encoding}")
    if len(request.speaker_id) > MAX_SPEAKER_ID_CHARS:
        raise InvalidRequest(f"speaker_id: longer than {MAX_SPEAKER_ID_CHARS} characters")


class TextToSpeechServicer(tts_pb2_grpc.TextToSpeechServicer):
    def __init__(
        self, pipeline: StagePipeline, metrics: GatewayMetrics, max_text_chars: int, max_concurrent_requests: int
    ) -> None:
        self.pipeline = pipeline
        self.metrics = metrics
        self.max_text_chars = max_text_chars
        self.max_concurrent_requests = max_concurrent_requests
        self.num_in_flight = 0

    @map_errors
    async def Synthesize(
        self, request: tts_pb2.SynthesizeRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[tts_pb2.SynthesizeResponse]:
        code = grpc.StatusCode.OK
        validate(request, self.max_text_chars)
        if self.num_in_flight >= self.max_concurrent_requests:
            self.metrics.requests.labels(grpc.StatusCode.RESOURCE_EXHAUSTED.name).inc()
            raise Overloaded(f"{self.num_in_flight} requests in flight (max_concurrent_requests)")
        self.num_in_flight += 1
        self.metrics.in_flight.inc()
        job = SynthesisJob(
            request_id=uuid.uuid4().hex[:16],
            text=request.text,
            speaker_id=request.speaker_id,
            seed=request.seed if request.HasField("seed") else secrets.randbits(63),
            stream=request.stream,
        )
        try:
            async for response in self._synthesize(job, request, context):
                yield response
        except asyncio.CancelledError:
            code = grpc.StatusCode.CANCELLED
            raise
        except Exception as exc:
            code = status_of(exc)[0]
            raise
        finally:
            self.num_in_flight -= 1
            self.metrics.in_flight.dec()
            self.metrics.requests.labels(code.name).inc()

    async def _synthesize(
        self, job: SynthesisJob, request: tts_pb2.SynthesizeRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[tts_pb2.SynthesizeResponse]:
        started = time.perf_counter()
        encoder: AudioEncoder | None = None
        pieces = self.pipeline.run(job, context.time_remaining())
        num_samples, index = 0, 0
        if request.stream:
            timings = None
            async for piece in pieces:
                timings = timings or piece.timings
                if piece.samples.size == 0 and not piece.is_final:
                    continue  # nothing to play yet; its timings ride on the first real chunk
                if index == 0:
                    piece.timings = timings
                encoder = encoder or AudioEncoder(request.encoding, piece.sample_rate, streaming=True)
                if index == 0:
                    self.metrics.time_to_first_audio.observe(time.perf_counter() - started)
                yield self._response(encoder, piece, index)
                num_samples += piece.samples.size
                index += 1
        else:
            collected: list[AudioPiece] = [piece async for piece in pieces]
            whole = AudioPiece(
                np.concatenate([p.samples for p in collected]), collected[-1].sample_rate, True,
                next((p.timings for p in collected if p.timings is not None), None),
            )
            encoder = AudioEncoder(request.encoding, whole.sample_rate, streaming=False)
            yield self._response(encoder, whole, 0)
            num_samples = whole.samples.size
        duration = time.perf_counter() - started
        audio_seconds = num_samples / encoder.sample_rate if encoder else 0.0
        self.metrics.request_duration.observe(duration)
        self.metrics.audio.inc(audio_seconds)
        if audio_seconds > 0:
            self.metrics.real_time_factor.observe(duration / audio_seconds)
        logger.info("request %s: %.2f s of audio in %.2f s", job.request_id, audio_seconds, duration)

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
