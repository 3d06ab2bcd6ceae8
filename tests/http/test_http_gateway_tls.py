"""The front dials a TLS gateway with --gateway-tls-ca (and mutual TLS with a client
certificate): a scripted gRPC gateway on a TLS port, a real uvicorn front."""

from __future__ import annotations

import grpc
import httpx
import pytest

from services.common.pb import tts_pb2_grpc
from services.http.config import HttpConfig
from tests.hardening.certificates import make_pki
from tests.http.conftest import serve_front
from tests.http.scripted_gateway import CHUNK, ScriptedGateway


@pytest.fixture
async def tls_gateway(tmp_path):
    pki = make_pki(tmp_path / "pki")
    server = grpc.aio.server()
    tts_pb2_grpc.add_TextToSpeechServicer_to_server(ScriptedGateway(), server)
    credentials = grpc.ssl_server_credentials([(pki.server_key.read_bytes(), pki.server_cert.read_bytes())],
                                              root_certificates=pki.ca.read_bytes(), require_client_auth=True)
    port = server.add_secure_port("127.0.0.1:0", credentials)
    await server.start()
    yield pki, f"127.0.0.1:{port}"
    await server.stop(0)


async def _speech(config: HttpConfig) -> httpx.Response:
    async with serve_front(config) as (url, _):
        async with httpx.AsyncClient(base_url=url) as client:
            return await client.post("/v1/audio/speech", json={"input": "Hello.", "response_format": "pcm"})


async def test_mutual_tls_to_the_gateway(tls_gateway):
    pki, address = tls_gateway
    reply = await _speech(HttpConfig(port=0, metrics_port=-1, gateway_addr=address, gateway_tls_ca=str(pki.ca),
                                     gateway_tls_cert=str(pki.client_cert), gateway_tls_key=str(pki.client_key)))
    assert reply.status_code == 200 and reply.content == CHUNK * 3


async def test_without_a_client_certificate_the_gateway_is_unavailable(tls_gateway):
    pki, address = tls_gateway
    reply = await _speech(HttpConfig(port=0, metrics_port=-1, gateway_addr=address, gateway_tls_ca=str(pki.ca),
                                     request_timeout_seconds=5))
    assert reply.status_code == 503 and reply.json()["error"]["code"] == "unavailable"
