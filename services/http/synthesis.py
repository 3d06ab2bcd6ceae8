"""One synthesis through the gateway, as an HTTP response: the request is sent, the first
audio awaited (so a refusal still gets its own HTTP status), then the audio leaves as it
arrives, encoded chunk by chunk (chunked transfer or Server-Sent Events).

Route modules build a tts_pb2.SynthesizeRequest and call `respond`; nothing else here knows
about routes."""

from __future__ import annotations

import base64
import json
import logging
import time
from dataclasses import dataclass
from typing import AsyncIterator, Callable, Literal

import grpc
from fastapi import Request
from fastapi.responses import Response, StreamingResponse

from services.common.pb import tts_pb2
from services.http.audio_format import MEDIA_TYPES, StreamEncoder, encode_whole
from services.http.errors import ApiError, from_grpc
from services.http.gateway_client import GatewayClient, forwarded_metadata
from services.http.metrics import HttpMetrics
from services.http.middleware import endpoint_of

logger = logging.getLogger(__name__)
StreamFormat = Literal["audio", "sse"]
SYNTHESIS_MODES = {
    "sft": tts_pb2.SYNTHESIS_MODE_SFT,
    "zero_shot": tts_pb2.SYNTHESIS_MODE_ZERO_SHOT,
    "cross_lingual": tts_pb2.SYNTHESIS_MODE_CROSS_LINGUAL,
    "instruct2": tts_pb2.SYNTHESIS_MODE_INSTRUCT2,
}


class StreamBroken(Exception):
    """The gateway failed after the response's status was sent."""

    def __init__(self, error: ApiError) -> None:
        super().__init__(f"{error.code}: {error.message}")
        self.code = error.code


def started_at(request: Request) -> float:
    return request.scope.get("cosyvoice.start", time.monotonic())


@dataclass
class Opened:
    """A gateway call whose first message has arrived."""

    call: grpc.aio.UnaryStreamCall
    first: tts_pb2.SynthesizeResponse | None  # None: the gateway ended without a message


async def open_synthesis(gateway: GatewayClient, request: Request, message: tts_pb2.SynthesizeRequest,
                         metrics: HttpMetrics) -> Opened:
    """Send `message` and wait for the first audio; a refusal raises ApiError (its status)."""
    call = gateway.synthesize(message, forwarded_metadata(request.headers))
    try:
        first = await call.read()
    except grpc.aio.AioRpcError as error:
        raise from_grpc(error) from None
    metrics.first_audio.labels(endpoint_of(request.scope)).observe(time.monotonic() - started_at(request))
    return Opened(call, None if first is grpc.aio.EOF else first)


async def _messages(opened: Opened) -> AsyncIterator[tts_pb2.SynthesizeResponse]:
    if opened.first is None:
        return
    yield opened.first
    while True:
        message = await opened.call.read()
        if message is grpc.aio.EOF:
            return
        yield message


async def _audio_chunks(opened: Opened, encoder: StreamEncoder) -> AsyncIterator[bytes]:
    try:
        async for message in _messages(opened):
            piece = encoder.feed(message.audio)
            if piece:
                yield piece
        tail = encoder.finish()
        if tail:
            yield tail
    except grpc.aio.AioRpcError as error:
        raise StreamBroken(from_grpc(error)) from None
    finally:
        encoder.close()
        opened.call.cancel()  # a no-op once finished; stops the synthesis when the client left


def _event(payload: dict) -> bytes:
    return f"data: {json.dumps(payload)}\n\n".encode()


async def _sse_events(opened: Opened, encoder: StreamEncoder, on_failure: Callable[[str], None]) -> AsyncIterator[bytes]:
    """OpenAI's speech events: `speech.audio.delta` with base64 audio of the response_format
    (concatenated, one file), then `speech.audio.done`; a failure is an `error` event."""
    chunks = 0
    try:
        async for piece in _audio_chunks(opened, encoder):
            chunks += 1
            yield _event({"type": "speech.audio.delta", "audio": base64.b64encode(piece).decode("ascii")})
    except StreamBroken as broken:
        on_failure(broken.code)
        logger.warning("SSE stream failed after its status was sent: %s", broken)
        code, _, message = str(broken).partition(": ")
        yield _event({"type": "error", "error": {"code": code, "message": message}})
        return
    yield _event({"type": "speech.audio.done", "audio_seconds": round(encoder.samples / encoder.sample_rate, 3),
                  "chunks": chunks})


async def respond(gateway: GatewayClient, request: Request, message: tts_pb2.SynthesizeRequest,
                  response_format: str, stream_format: StreamFormat = "audio") -> Response:
    """The HTTP response for `message`: whole (stream=false: one gateway message, one file with
    Content-Length), chunked audio, or SSE. `message.encoding` is set to PCM s16le here."""
    metrics: HttpMetrics = request.app.state.metrics
    message.encoding = tts_pb2.AUDIO_ENCODING_PCM_S16LE
    opened = await open_synthesis(gateway, request, message, metrics)
    sample_rate = opened.first.sample_rate if opened.first is not None and opened.first.sample_rate else 24000
    encoder = StreamEncoder(response_format, sample_rate)
    if stream_format == "sse":
        endpoint = endpoint_of(request.scope)
        return StreamingResponse(
            _sse_events(opened, encoder, lambda code: metrics.stream_failures.labels(endpoint, code).inc()),
            media_type="text/event-stream", headers={"Cache-Control": "no-cache"},
        )
    if not message.stream:
        pcm = b"".join([piece.audio async for piece in _messages(opened)])
        encoder.close()
        return Response(encode_whole(response_format, pcm, sample_rate), media_type=MEDIA_TYPES[response_format])
    return StreamingResponse(_audio_chunks(opened, encoder), media_type=MEDIA_TYPES[response_format])
