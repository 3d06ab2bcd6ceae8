"""The security settings themselves: the reflection switch, and every bad TLS or keys setting
stopping a service with one line that names the setting both ways."""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
from pathlib import Path

import grpc
import pytest
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from services.common.config import ConfigError, ServerConfig, load_config
from services.common.server import ServiceHost
from tests.cli.cli_runner import assert_error, cosyvoice
from tests.hardening.certificates import Pki, make_pki

GRPCURL = shutil.which("grpcurl", path=os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")]))
CERT = "--tls-cert / COSYVOICE_TLS_CERT"
KEY = "--tls-key / COSYVOICE_TLS_KEY"
CLIENT_CA = "--tls-client-ca / COSYVOICE_TLS_CLIENT_CA"


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


async def grpcurl(*args: str) -> tuple[int, str, str]:
    assert GRPCURL, "grpcurl is not installed (the test extra installs it into the virtualenv)"
    process = await asyncio.create_subprocess_exec(
        GRPCURL, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    return process.returncode, out.decode(), err.decode()


@pytest.mark.parametrize("reflection", [True, False])
async def test_reflection_can_be_switched_off(reflection):
    host = ServiceHost(ServerConfig(reflection=reflection), [])
    await host.start()
    await host.warm_up(None)
    try:
        code, out, err = await grpcurl("-plaintext", host.address, "list")
        if reflection:
            assert code == 0 and "grpc.health.v1.Health" in out.split(), err
        else:
            assert code == 1 and err.strip() == "Failed to list services: server does not support the reflection API"
            async with grpc.aio.insecure_channel(host.address) as channel:
                stream = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
                    iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10
                )
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    async for _ in stream:
                        pass
            assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED
    finally:
        await host.stop(0)


def test_reflection_is_a_flag_and_an_environment_variable():
    assert load_config(ServerConfig, ["--reflection", "false"]).reflection is False
    assert load_config(ServerConfig, [], {"COSYVOICE_REFLECTION": "off"}).reflection is False
    assert load_config(ServerConfig, []).reflection is True


async def test_grpcurl_lists_a_tls_port_with_the_ca(pki):
    host = ServiceHost(ServerConfig(tls_cert=str(pki.server_cert), tls_key=str(pki.server_key)), [])
    await host.start()
    await host.warm_up(None)
    try:
        code, out, err = await grpcurl("-cacert", str(pki.ca), host.address, "list")
        assert code == 0 and "grpc.health.v1.Health" in out.split(), err
    finally:
        await host.stop(0)


def _bad_tls_cases(pki: Pki, tmp: Path) -> list[tuple[dict[str, str], str]]:
    garbage = tmp / "garbage.pem"
    garbage.write_text("-----BEGIN CERTIFICATE-----\n!!not base64!!\n-----END CERTIFICATE-----\n")
    missing = tmp / "missing.pem"
    server_cert, server_key = str(pki.server_cert), str(pki.server_key)
    return [
        ({"tls_cert": server_cert}, f"{CERT} is set but {KEY} is not: TLS needs both"),
        ({"tls_key": server_key}, f"{KEY} is set but {CERT} is not: TLS needs both"),
        ({"tls_client_ca": str(pki.ca)}, f"{CLIENT_CA} needs {CERT} and {KEY} (mutual TLS is TLS)"),
        ({"tls_cert": str(missing), "tls_key": server_key},
         f"{CERT}: cannot read {str(missing)!r} (No such file or directory)"),
        ({"tls_cert": server_key, "tls_key": server_key},
         f"{CERT}: {server_key!r} is not a PEM file with a certificate (no -----BEGIN ...CERTIFICATE----- block)"),
        ({"tls_cert": server_cert, "tls_key": server_cert},
         f"{KEY}: {server_cert!r} is not a PEM file with a private key (no -----BEGIN ...PRIVATE KEY----- block)"),
        ({"tls_cert": str(garbage), "tls_key": server_key},
         f"{CERT}: {str(garbage)!r} has a damaged PEM block (its body is not base64)"),
        ({"tls_cert": server_cert, "tls_key": server_key, "tls_client_ca": str(tmp)},
         f"{CLIENT_CA}: cannot read {str(tmp)!r} (Is a directory)"),
        ({"tls_cert": server_cert, "tls_key": str(pki.client_key)},
         f"{KEY}: gRPC refused this key with {CERT} ({str(pki.client_key)!r}, {server_cert!r}): "
         "is it the certificate's key?"),
    ]


async def test_bad_tls_settings_stop_the_server_with_one_line_naming_the_setting(pki, tmp_path):
    for settings, message in _bad_tls_cases(pki, tmp_path):
        host = ServiceHost(ServerConfig(**settings), [])
        with pytest.raises(ConfigError) as caught:
            await host.start()
        assert str(caught.value) == message, settings
        assert "\n" not in str(caught.value)
        await host.stop(0)


async def test_a_gateway_process_names_its_bad_security_settings(pki, tmp_path):
    stages = ["--llm-addr", "127.0.0.1:1", "--flow-addr", "127.0.0.1:1", "--vocoder-addr", "127.0.0.1:1",
              "--frontend-addr", "127.0.0.1:1", "--speaker-db", ":memory:", "--metrics-port", "-1"]
    prog = "cosyvoice serve gateway"
    assert_error(await cosyvoice("serve", "gateway", *stages, "--tls-cert", str(pki.server_cert)),
                 f"{prog}: --tls-cert / COSYVOICE_GATEWAY_TLS_CERT is set but --tls-key / COSYVOICE_GATEWAY_TLS_KEY "
                 "is not: TLS needs both")
    missing = str(tmp_path / "keys.txt")
    assert_error(await cosyvoice("serve", "gateway", *stages, "--api-keys-file", missing),
                 f"{prog}: --api-keys-file / COSYVOICE_GATEWAY_API_KEYS_FILE: cannot read {missing!r} "
                 "(No such file or directory)")
    assert_error(await cosyvoice("serve", "gateway", *stages, "--stage-tls-cert", str(pki.client_cert)),
                 f"{prog}: --stage-tls-cert / COSYVOICE_GATEWAY_STAGE_TLS_CERT is set but --stage-tls-key / "
                 "COSYVOICE_GATEWAY_STAGE_TLS_KEY is not: a client certificate needs both")
    assert_error(await cosyvoice("serve", "gateway", *stages, "--stage-tls-server-name", "llm.internal"),
                 f"{prog}: --stage-tls-server-name / COSYVOICE_GATEWAY_STAGE_TLS_SERVER_NAME needs TLS: "
                 "set --stage-tls-ca / COSYVOICE_GATEWAY_STAGE_TLS_CA")
    assert_error(await cosyvoice("serve", "gateway", *stages, "--stage-tls-ca", str(pki.client_key)),
                 f"{prog}: --stage-tls-ca / COSYVOICE_GATEWAY_STAGE_TLS_CA: {str(pki.client_key)!r} is not a PEM "
                 "file with a certificate (no -----BEGIN ...CERTIFICATE----- block)")
