"""`cosyvoice health` (the images' healthcheck) and `cosyvoice --version`, as real processes."""

from __future__ import annotations

import socket

from services.common.config import ServerConfig
from services.common.server import ServiceHost
from tests.cli.cli_runner import assert_error, assert_ok, cosyvoice


async def test_health_follows_the_servers_status():
    host = ServiceHost(ServerConfig(), bindings=[])
    await host.start()
    try:
        assert_error(await cosyvoice("health", host.address), f"cosyvoice health: {host.address} is NOT_SERVING")
        await host.warm_up(None)
        assert assert_ok(await cosyvoice("health", host.address)).strip() == f"{host.address} SERVING"
        assert_error(
            await cosyvoice("health", host.address, "--service", "no.such.Service"),
            f"cosyvoice health: {host.address} serves no 'no.such.Service'",
        )
    finally:
        await host.stop(0)


async def test_health_of_nothing_listening_is_one_line():
    with socket.create_server(("127.0.0.1", 0)) as probe:
        port = probe.getsockname()[1]  # free once closed: nothing listens there
    address = f"127.0.0.1:{port}"
    assert_error(await cosyvoice("health", address, "--timeout", "2"),
                 f"cosyvoice health: {address} is not reachable (UNAVAILABLE)")
    assert_error(await cosyvoice("health", address, "--timeout", "0"),
                 "cosyvoice health: --timeout must be > 0 (got 0.0)")


async def test_version():
    out = assert_ok(await cosyvoice("--version"))
    assert out.startswith("cosyvoice ") and out.split()[1][0].isdigit(), out


async def test_health_address_defaults_to_the_environment(monkeypatch):
    host = ServiceHost(ServerConfig(), bindings=[])
    await host.start()
    try:
        await host.warm_up(None)
        monkeypatch.setenv("COSYVOICE_HEALTH_ADDRESS", host.address)  # inherited by the process
        assert assert_ok(await cosyvoice("health")).strip() == f"{host.address} SERVING"
    finally:
        await host.stop(0)
