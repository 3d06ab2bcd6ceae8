"""WebSocket /v1/audio/speech/stream: text pieces in, audio out, over the gateway's
SynthesizeTextStream (docs/bistream.md). The protocol (docs/http.md):

client → `{"type": "start", "voice"?, "mode"?, "instructions"?, "seed"?, "api_key"?}`, then
`{"type": "text", "text": "..."}` pieces, then `{"type": "end"}`.
server → `{"type": "start", "sample_rate": 24000, "encoding": "pcm_s16le", "channels": 1}`
before the first audio, binary frames of PCM s16le as audio is made, then
`{"type": "done", ...stats}` and close 1000; or `{"type": "error", "code", "message"}` and close
4000 + the HTTP status of the same error.

Text is read and audio written at once (two tasks of this session), so audio arrives while the
client is still sending text.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any, AsyncIterator

import grpc
from fastapi import APIRouter, WebSocket, WebSocketDisconnect

from services.common.pb import tts_pb2
from services.http.errors import ApiError, from_grpc
from services.http.gateway_client import Metadata, forwarded_metadata
from services.http.metrics import HttpMetrics
from services.http.synthesis import SYNTHESIS_MODES

logger = logging.getLogger(__name__)
router = APIRouter()
PATH = "/v1/audio/speech/stream"
QUEUED_PIECES = 64  # text pieces read ahead of the gateway: the client's sends back up beyond it
_START_FIELDS = {"type", "voice", "mode", "instructions", "seed", "api_key"}


def _invalid(message: str) -> ApiError:
    return ApiError(400, "invalid_argument", message)


def _parse(raw: str | bytes | None, limit: int) -> dict[str, Any]:
    if raw is None or isinstance(raw, bytes):
        raise _invalid("messages must be JSON text frames")
    if len(raw) > limit:
        raise ApiError(413, "payload_too_large", f"a message exceeds {limit} bytes (COSYVOICE_HTTP_MAX_WS_MESSAGE_BYTES)")
    try:
        message = json.loads(raw)
    except json.JSONDecodeError as error:
        raise _invalid(f"a message is not JSON ({error.msg})") from None
    if not isinstance(message, dict) or not isinstance(message.get("type"), str):
        raise _invalid("a message must be a JSON object with a string `type`")
    return message


def _config(start: dict[str, Any]) -> tts_pb2.TextStreamConfig:
    if start["type"] != "start":
        raise _invalid("the first message must be {\"type\": \"start\", ...}")
    unknown = sorted(set(start) - _START_FIELDS)
    if unknown:
        raise _invalid(f"start: unknown fields {', '.join(unknown)}")
    config = tts_pb2.TextStreamConfig(encoding=tts_pb2.AUDIO_ENCODING_PCM_S16LE)
    for name in ("voice", "mode", "instructions", "api_key"):
        if start.get(name) is not None and not isinstance(start[name], str):
            raise _invalid(f"start.{name}: must be a string")
    if start.get("voice"):
        config.speaker_id = start["voice"]
    if start.get("mode"):
        if start["mode"] not in SYNTHESIS_MODES:
            raise _invalid(f"start.mode: one of {', '.join(SYNTHESIS_MODES)}")
        config.mode = SYNTHESIS_MODES[start["mode"]]
    config.instruct_text = start.get("instructions") or ""
    seed = start.get("seed")
    if seed is not None:
        if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**64:
            raise _invalid("start.seed: an integer in 0..2^64-1")
        config.seed = seed
    return config


def _metadata(websocket: WebSocket, start: dict[str, Any]) -> Metadata:
    metadata = forwarded_metadata(websocket.headers)
    if start.get("api_key") and not metadata:  # browsers cannot set headers on a WebSocket
        metadata = forwarded_metadata({"authorization": f"Bearer {start['api_key']}"})
    return metadata


class _Session:
    def __init__(self, websocket: WebSocket, limit: int) -> None:
        self.websocket = websocket
        self.limit = limit
        self.pieces: asyncio.Queue[str | None] = asyncio.Queue(QUEUED_PIECES)
        self.text_pieces = 0

    async def read_text(self) -> None:
        """Client messages into the queue until `end` (None). Raises ApiError on a bad one."""
        while True:
            message = _parse(await self._receive(), self.limit)
            if message["type"] == "end":
                await self.pieces.put(None)
                return
            if message["type"] != "text" or not isinstance(message.get("text"), str):
                raise _invalid("after start, send {\"type\": \"text\", \"text\": \"...\"} pieces, then {\"type\": \"end\"}")
            self.text_pieces += 1
            await self.pieces.put(message["text"])

    async def _receive(self) -> str | bytes | None:
        message = await self.websocket.receive()
        if message["type"] == "websocket.disconnect":
            raise WebSocketDisconnect(message.get("code", 1000))
        return message.get("text") if message.get("text") is not None else message.get("bytes")

    async def requests(self, config: tts_pb2.TextStreamConfig) -> AsyncIterator[tts_pb2.TextStreamRequest]:
        yield tts_pb2.TextStreamRequest(config=config)
        while (piece := await self.pieces.get()) is not None:
            yield tts_pb2.TextStreamRequest(text=piece)


@router.websocket(PATH)
async def speech_stream(websocket: WebSocket) -> None:
    app = websocket.app
    metrics: HttpMetrics = app.state.metrics
    limit = app.state.config.max_ws_message_bytes
    began = time.monotonic()
    await websocket.accept()
    session = _Session(websocket, limit)
    reader: asyncio.Task | None = None
    call = None
    streaming = False
    try:
        start = _parse(await session._receive(), limit)
        config = _config(start)
        call = app.state.gateway.synthesize_text_stream(session.requests(config), _metadata(websocket, start))
        reader = asyncio.create_task(session.read_text())
        chunks = samples = 0
        first_audio = None
        sample_rate = 24000
        async for reply in _replies(call, reader):
            if first_audio is None:
                first_audio = time.monotonic() - began
                metrics.first_audio.labels(PATH).observe(first_audio)
                sample_rate = reply.sample_rate or sample_rate
                await websocket.send_json({"type": "start", "sample_rate": sample_rate, "encoding": "pcm_s16le",
                                           "channels": 1})
                streaming = True
            if reply.audio:
                chunks += 1
                samples += len(reply.audio) // 2
                await websocket.send_bytes(reply.audio)
        await websocket.send_json({
            "type": "done", "chunks": chunks, "samples": samples, "audio_seconds": round(samples / sample_rate, 3),
            "first_audio_seconds": None if first_audio is None else round(first_audio, 3),
            "text_pieces": session.text_pieces,
        })
        await websocket.close(1000)
    except WebSocketDisconnect:
        logger.info("WebSocket client left before the end of its stream")
    except ApiError as error:
        await _fail(websocket, error, metrics, streaming)
    except grpc.aio.AioRpcError as error:
        await _fail(websocket, from_grpc(error), metrics, streaming)
    finally:
        if reader is not None:
            reader.cancel()
        if call is not None:
            call.cancel()


async def _replies(call: grpc.aio.StreamStreamCall, reader: asyncio.Task) -> AsyncIterator[tts_pb2.SynthesizeResponse]:
    """The gateway's replies; a bad client message (the reader failing) ends it with its error."""
    while True:
        read = asyncio.ensure_future(call.read())
        done, _ = await asyncio.wait({read, reader}, return_when=asyncio.FIRST_COMPLETED)
        if reader in done and reader.exception() is not None and read not in done:
            read.cancel()
            raise reader.exception()  # type: ignore[misc]
        reply = await read
        if reply is grpc.aio.EOF:
            return
        yield reply


async def _fail(websocket: WebSocket, error: ApiError, metrics: HttpMetrics, streaming: bool) -> None:
    if streaming:
        metrics.stream_failures.labels(PATH, error.code).inc()
        logger.warning("WebSocket stream failed after audio began: %s: %s", error.code, error.message)
    try:
        await websocket.send_json({"type": "error", "code": error.code, "message": error.message})
        await websocket.close(error.ws_close_code, reason=error.code[:120])
    except (WebSocketDisconnect, RuntimeError):
        pass  # the client is gone already
