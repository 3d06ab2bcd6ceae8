"""What the live stack will not do on demand, from a scripted gateway (a real gRPC server on a
free port): each gRPC code's HTTP status; a gateway that holds its second chunk until the test
has the first bytes (streaming is real, not buffered); and a gateway that fails after the
first audio, which can no longer change the status: chunked audio is cut (no final chunk),
SSE ends with an error event, a WebSocket gets an error message and a 4xxx close."""

from __future__ import annotations

import asyncio
import base64
import json

import grpc
import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from services.common.pb import tts_pb2_grpc
from services.http.config import HttpConfig
from tests.http.conftest import serve_front
from tests.http.scripted_gateway import CHUNK, ScriptedGateway


@pytest.fixture
async def front():
    server = grpc.aio.server()
    gateway = ScriptedGateway()
    tts_pb2_grpc.add_TextToSpeechServicer_to_server(gateway, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with serve_front(HttpConfig(port=0, metrics_port=-1, gateway_addr=f"127.0.0.1:{port}")) as served:
            yield (*served, gateway)
    finally:
        await server.stop(0)


@pytest.mark.parametrize(("code", "status"), [
    ("INVALID_ARGUMENT", 400), ("UNAUTHENTICATED", 401), ("PERMISSION_DENIED", 403), ("NOT_FOUND", 404),
    ("RESOURCE_EXHAUSTED", 429), ("UNAVAILABLE", 503), ("DEADLINE_EXCEEDED", 504), ("INTERNAL", 500),
])
async def test_each_grpc_code_has_its_http_status(front, code, status):
    url, _, _ = front
    async with httpx.AsyncClient(base_url=url) as client:
        reply = await client.post("/v1/audio/speech", json={"input": code, "response_format": "pcm"})
    assert reply.status_code == status
    body = reply.json()["error"]
    assert body["code"] == code.lower()
    assert body["message"] == ("the gateway failed (INTERNAL)" if status == 500 else f"scripted {code}")


@pytest.mark.parametrize(("response_format", "stream_format"), [("pcm", "audio"), ("wav", "audio"),
                                                                ("opus", "audio"), ("pcm", "sse")])
async def test_the_first_bytes_leave_before_the_gateway_has_finished(front, response_format, stream_format):
    url, _, gateway = front
    body = {"input": "HOLD", "response_format": response_format, "stream_format": stream_format}
    async with httpx.AsyncClient(base_url=url) as client:
        async with client.stream("POST", "/v1/audio/speech", json=body) as reply:
            pieces = reply.aiter_raw()
            first = await asyncio.wait_for(pieces.__anext__(), timeout=30)  # the gateway is still holding
            assert first
            gateway.release.set()
            rest = b"".join([piece async for piece in pieces])
    assert len(first + rest) > len(first)


async def test_chunked_audio_is_cut_when_the_gateway_fails_after_first_audio(front):
    url, metrics, _ = front
    received = b""
    async with httpx.AsyncClient(base_url=url) as client:
        async with client.stream("POST", "/v1/audio/speech", json={"input": "UNAVAILABLE after 2",
                                                                   "response_format": "pcm"}) as reply:
            assert reply.status_code == 200  # sent with the first audio, before the failure
            with pytest.raises(httpx.RemoteProtocolError):
                async for piece in reply.aiter_raw():
                    received += piece
    assert received == CHUNK * 2  # what was made, then no final chunk: the client knows it is cut
    assert metrics.stream_failures.labels("/v1/audio/speech", "unavailable")._value.get() == 1
    assert metrics.requests.labels("/v1/audio/speech", "200")._value.get() == 1


async def test_sse_ends_with_an_error_event(front):
    url, metrics, _ = front
    async with httpx.AsyncClient(base_url=url) as client:
        reply = await client.post("/v1/audio/speech", json={"input": "RESOURCE_EXHAUSTED after 1",
                                                            "response_format": "pcm", "stream_format": "sse"})
    assert reply.status_code == 200
    events = [json.loads(line[6:]) for line in reply.text.splitlines() if line.startswith("data: ")]
    assert [event["type"] for event in events] == ["speech.audio.delta", "error"]
    assert base64.b64decode(events[0]["audio"]) == CHUNK
    assert events[1]["error"] == {"code": "resource_exhausted", "message": "scripted RESOURCE_EXHAUSTED"}
    assert metrics.stream_failures.labels("/v1/audio/speech", "resource_exhausted")._value.get() == 1


async def test_websocket_gets_an_error_message_and_close_code_after_audio(front):
    url, metrics, _ = front
    ws_url = url.replace("http://", "ws://") + "/v1/audio/speech/stream"
    async with connect(ws_url) as websocket:
        await websocket.send(json.dumps({"type": "start"}))
        await websocket.send(json.dumps({"type": "text", "text": "DEADLINE_EXCEEDED after 2."}))
        messages = []
        with pytest.raises(ConnectionClosed):
            while True:
                messages.append(await websocket.recv())
    assert json.loads(messages[0])["type"] == "start"
    assert messages[1:3] == [CHUNK, CHUNK]
    assert json.loads(messages[3]) == {"type": "error", "code": "deadline_exceeded",
                                       "message": "scripted DEADLINE_EXCEEDED"}
    assert websocket.close_code == 4504
    assert metrics.stream_failures.labels("/v1/audio/speech/stream", "deadline_exceeded")._value.get() == 1
    assert metrics.requests.labels("/v1/audio/speech/stream", "4504")._value.get() == 1
