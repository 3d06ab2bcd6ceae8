"""TLS on a service's port and mutual TLS between the gateway and the stages: real servers on
port 0 with certificates made for the test (tests/hardening/certificates.py)."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gateway.clients import balanced_channel
from services.common.config import ServerConfig
from services.common.pb import tts_pb2, tts_pb2_grpc
from services.common.server import ServiceHost
from services.common.tls import ClientTls
from tests.gateway.voice_helpers import shorten_speech
from tests.hardening.certificates import Pki, make_pki
from tests.stack import running_stack

SERVING = health_pb2.HealthCheckResponse.SERVING


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def client_credentials(pki: Pki, cert: Path | None = None, key: Path | None = None) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(
        pki.ca.read_bytes(), key.read_bytes() if key else None, cert.read_bytes() if cert else None
    )


async def health_over(channel: grpc.aio.Channel) -> int:
    reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
    return reply.status


async def refused(channel: grpc.aio.Channel) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await health_over(channel)
    return caught.value


@pytest.fixture
async def tls_host(pki):
    host = ServiceHost(ServerConfig(tls_cert=str(pki.server_cert), tls_key=str(pki.server_key)), [])
    await host.start()
    await host.warm_up(None)
    yield host
    await host.stop(0)


@pytest.fixture
async def mtls_host(pki):
    config = ServerConfig(tls_cert=str(pki.server_cert), tls_key=str(pki.server_key), tls_client_ca=str(pki.ca))
    host = ServiceHost(config, [])
    await host.start()
    await host.warm_up(None)
    yield host
    await host.stop(0)


async def test_a_tls_port_refuses_plaintext_and_serves_tls(pki, tls_host):
    async with grpc.aio.insecure_channel(tls_host.address) as channel:
        error = await refused(channel)
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    async with grpc.aio.secure_channel(tls_host.address, client_credentials(pki)) as channel:
        assert await health_over(channel) == SERVING
    # The name in the certificate is checked: localhost is in it too.
    async with grpc.aio.secure_channel(f"localhost:{tls_host.port}", client_credentials(pki)) as channel:
        assert await health_over(channel) == SERVING


async def test_a_tls_port_is_refused_by_a_client_that_does_not_trust_its_ca(pki, tls_host):
    credentials = grpc.ssl_channel_credentials(pki.rogue_ca.read_bytes())
    async with grpc.aio.secure_channel(tls_host.address, credentials) as channel:
        assert (await refused(channel)).code() == grpc.StatusCode.UNAVAILABLE


async def test_mutual_tls_refuses_clients_without_a_trusted_certificate(pki, mtls_host):
    async with grpc.aio.secure_channel(mtls_host.address, client_credentials(pki)) as channel:
        assert (await refused(channel)).code() == grpc.StatusCode.UNAVAILABLE  # no certificate
    stranger = client_credentials(pki, pki.rogue_client_cert, pki.rogue_client_key)
    async with grpc.aio.secure_channel(mtls_host.address, stranger) as channel:
        assert (await refused(channel)).code() == grpc.StatusCode.UNAVAILABLE  # signed by another CA
    async with grpc.aio.insecure_channel(mtls_host.address) as channel:
        assert (await refused(channel)).code() == grpc.StatusCode.UNAVAILABLE
    trusted = client_credentials(pki, pki.client_cert, pki.client_key)
    async with grpc.aio.secure_channel(mtls_host.address, trusted) as channel:
        assert await health_over(channel) == SERVING


async def test_the_gateways_balanced_channel_speaks_mutual_tls(pki, mtls_host):
    tls = ClientTls(pki.ca.read_bytes(), pki.client_cert.read_bytes(), pki.client_key.read_bytes())
    async with balanced_channel(mtls_host.address, tls) as channel:
        assert await health_over(channel) == SERVING
    async with balanced_channel(mtls_host.address) as channel:  # plaintext: refused
        assert (await refused(channel)).code() == grpc.StatusCode.UNAVAILABLE


async def test_a_certificate_for_another_name_needs_the_server_name_setting(pki):
    config = ServerConfig(tls_cert=str(pki.other_name_cert), tls_key=str(pki.other_name_key))
    host = ServiceHost(config, [])
    await host.start()
    await host.warm_up(None)
    try:
        tls = ClientTls(pki.ca.read_bytes())
        async with balanced_channel(host.address, tls) as channel:  # 127.0.0.1 is not in the certificate
            assert (await refused(channel)).code() == grpc.StatusCode.UNAVAILABLE
        named = ClientTls(pki.ca.read_bytes(), server_name="stage.internal")
        async with balanced_channel(host.address, named) as channel:
            assert await health_over(channel) == SERVING
    finally:
        await host.stop(0)


@pytest.mark.slow
async def test_synthesis_through_a_tls_gateway_and_mutual_tls_stages(pki, tiny_model_dir):
    stage_tls = {"tls_cert": str(pki.server_cert), "tls_key": str(pki.server_key), "tls_client_ca": str(pki.ca)}
    async with running_stack(
        tiny_model_dir, stage_settings=stage_tls,
        tls_cert=str(pki.server_cert), tls_key=str(pki.server_key),
        stage_tls_ca=str(pki.ca), stage_tls_cert=str(pki.client_cert), stage_tls_key=str(pki.client_key),
    ) as stack:
        shorten_speech(stack, 2)
        # A stage refuses a caller without the gateway's kind of certificate.
        async with grpc.aio.secure_channel(stack.llm.host.address, client_credentials(pki)) as channel:
            assert (await refused(channel)).code() == grpc.StatusCode.UNAVAILABLE
        async with grpc.aio.insecure_channel(stack.address) as channel:
            assert (await refused(channel)).code() == grpc.StatusCode.UNAVAILABLE
        async with grpc.aio.secure_channel(stack.address, client_credentials(pki)) as channel:
            stub = tts_pb2_grpc.TextToSpeechStub(channel)
            responses = [r async for r in stub.Synthesize(tts_pb2.SynthesizeRequest(text="Hello.", seed=1), timeout=120)]
        assert responses[-1].is_final and sum(len(r.audio) for r in responses) > 0
