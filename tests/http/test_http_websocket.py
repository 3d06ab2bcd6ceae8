"""WebSocket /v1/audio/speech/stream with the `websockets` client: audio comes back before the
last text piece is sent, and every failure is an error message and a 4xxx close code."""

from __future__ import annotations

import asyncio
import json

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from services.tinymodel.writer import DEFAULT_SPEAKER
from tests.http.conftest import FULL_KEY

# The gateway's bistream takes 5 text tokens, then speaks 15 speech tokens, then waits for more
# text; the first audio needs 28 tokens. The pieces before the last hold far more text than
# that, so the first audio must come while the last piece is still unsent.
PIECES = ["Hello there, this is", " the first piece of", " a text that an upstream", " language model streams",
          " to us a few", " words at a time,", " and we speak it", " while it is still", " being written."]
TIMEOUT = 240


async def _next(websocket):
    return await asyncio.wait_for(websocket.recv(), timeout=TIMEOUT)


@pytest.mark.parametrize("auth", ["header", "start_message"])
async def test_first_audio_arrives_before_the_last_text_piece_is_sent(http_stack, auth):
    headers = {"Authorization": f"Bearer {FULL_KEY}"} if auth == "header" else None
    start = {"type": "start", "voice": DEFAULT_SPEAKER, "seed": 3}
    if auth == "start_message":
        start["api_key"] = FULL_KEY
    async with connect(http_stack.ws_url, additional_headers=headers) as websocket:
        await websocket.send(json.dumps(start))
        for piece in PIECES[:-1]:
            await websocket.send(json.dumps({"type": "text", "text": piece}))
        started = json.loads(await _next(websocket))
        assert started == {"type": "start", "sample_rate": 24000, "encoding": "pcm_s16le", "channels": 1}
        first = await _next(websocket)
        assert isinstance(first, bytes) and len(first) > 0  # audio, and the last piece is not sent yet
        await websocket.send(json.dumps({"type": "text", "text": PIECES[-1]}))
        await websocket.send(json.dumps({"type": "end"}))
        audio = [first]
        while isinstance(message := await _next(websocket), bytes):
            audio.append(message)
        done = json.loads(message)
        with pytest.raises(ConnectionClosed):
            await _next(websocket)
        assert websocket.close_code == 1000
    assert done["type"] == "done" and done["text_pieces"] == len(PIECES)
    assert done["chunks"] == len(audio) and done["samples"] == sum(len(a) for a in audio) // 2
    assert done["first_audio_seconds"] > 0


async def _failure(http_stack, messages: list, headers: dict | None = None) -> tuple[dict, int]:
    async with connect(http_stack.ws_url, additional_headers=headers) as websocket:
        for message in messages:
            await websocket.send(message)
        while isinstance(reply := await _next(websocket), bytes):
            pass
        error = json.loads(reply)
        with pytest.raises(ConnectionClosed):
            await _next(websocket)
        return error, websocket.close_code


@pytest.mark.parametrize(("messages", "headers", "code", "close", "words"), [
    (["not json"], None, "invalid_argument", 4400, "not JSON"),
    ([json.dumps({"type": "text", "text": "hi"})], None, "invalid_argument", 4400, "first message must be"),
    ([json.dumps({"type": "start", "colour": "blue"})], None, "invalid_argument", 4400, "unknown fields colour"),
    ([json.dumps({"type": "start", "mode": "karaoke"})], None, "invalid_argument", 4400, "start.mode"),
    ([json.dumps({"type": "start"}), json.dumps({"type": "end"})], None, "unauthenticated", 4401, "missing API key"),
    ([json.dumps({"type": "start", "api_key": "wrong"}), json.dumps({"type": "end"})], None, "unauthenticated",
     4401, "unknown API key"),
    ([json.dumps({"type": "start", "voice": "nobody"}), json.dumps({"type": "end"})],
     {"Authorization": f"Bearer {FULL_KEY}"}, "not_found", 4404, "'nobody' is not a registered or preset speaker"),
    ([json.dumps({"type": "start", "voice": DEFAULT_SPEAKER}), json.dumps({"type": "text"})],
     {"Authorization": f"Bearer {FULL_KEY}"}, "invalid_argument", 4400, "pieces, then"),
    ([json.dumps({"type": "start", "voice": DEFAULT_SPEAKER}), json.dumps({"type": "text", "text": "x" * 70_000})],
     {"Authorization": f"Bearer {FULL_KEY}"}, None, 1009, ""),
])
async def test_bad_sessions_get_an_error_message_and_a_close_code(http_stack, messages, headers, code, close, words):
    if code is None:  # over the server's frame limit: the WebSocket layer closes with 1009
        async with connect(http_stack.ws_url, additional_headers=headers) as websocket:
            for message in messages:
                await websocket.send(message)
            with pytest.raises(ConnectionClosed):
                while True:
                    await _next(websocket)
            assert websocket.close_code == close
        return
    error, close_code = await _failure(http_stack, messages, headers)
    assert error["type"] == "error" and error["code"] == code and words in error["message"], error
    assert close_code == close


async def test_gateway_down_is_an_unavailable_close(http_stack):
    url = http_stack.down_url.replace("http://", "ws://") + "/v1/audio/speech/stream"
    async with connect(url) as websocket:
        await websocket.send(json.dumps({"type": "start"}))
        await websocket.send(json.dumps({"type": "text", "text": "Hello."}))
        await websocket.send(json.dumps({"type": "end"}))
        error = json.loads(await _next(websocket))
        with pytest.raises(ConnectionClosed):
            await _next(websocket)
    assert error["code"] == "unavailable" and websocket.close_code == 4503
