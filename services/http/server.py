"""`cosyvoice serve http`: one uvicorn server (one process, one event loop, no thread per
request) for the app, and the Prometheus /metrics server on its own port.

The HTTP socket is bound before uvicorn starts, so the printed line carries the real port
(port 0 picks one): `http listening on HOST:PORT metrics HOST:PORT`, the line `cosyvoice up`
reads. SIGTERM stops accepting and lets requests in flight finish for grace_seconds.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Sequence

import uvicorn
from prometheus_client import start_http_server

from services.common.config import ConfigError, load_config, setting_names
from services.common.logging_setup import configure_logging
from services.common.metrics import make_registry
from services.http.app import create_app
from services.http.config import HttpConfig

logger = logging.getLogger(__name__)


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as error:
        sock.close()
        names = setting_names(HttpConfig, "port")
        raise ConfigError(f"{names}: cannot listen on {host}:{port} ({error.strerror or error})") from None
    sock.listen(2048)
    sock.setblocking(False)
    return sock


def start_metrics(config: HttpConfig, registry) -> tuple[object | None, str]:  # noqa: ANN001
    if config.metrics_port < 0:
        return None, ""
    try:
        server, _ = start_http_server(config.metrics_port, addr=config.metrics_bind_host, registry=registry)
    except OSError as error:
        names = setting_names(HttpConfig, "metrics_port")
        raise ConfigError(f"{names}: cannot listen on {config.metrics_bind_host}:{config.metrics_port} "
                          f"({error.strerror or error})") from None
    return server, f"{config.metrics_bind_host}:{server.server_port}"


class _CutStreamIsLoggedOnce(logging.Filter):
    """A stream the gateway broke after its 200 is logged once, as a WARNING by the front's
    middleware; uvicorn's own ERROR for the same cut response would say it a second time."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("ASGI callable returned without completing response")


def uvicorn_config(app: object, config: HttpConfig) -> uvicorn.Config:
    return uvicorn.Config(
        app, log_config=None, access_log=False, timeout_graceful_shutdown=config.grace_seconds,
        ws_max_size=config.max_ws_message_bytes, lifespan="on",
    )


def main(argv: Sequence[str] | None = None) -> None:
    config = load_config(HttpConfig, argv)
    configure_logging(config.log_level, config.log_json, process="http")
    logging.getLogger("uvicorn.error").addFilter(_CutStreamIsLoggedOnce())
    registry = make_registry()
    app = create_app(config, registry)
    metrics_server, metrics_address = start_metrics(config, registry)
    sock = bind(config.host, config.port)
    address = f"{config.host}:{sock.getsockname()[1]}"
    metrics = f" metrics {metrics_address}" if metrics_address else ""
    print(f"http listening on {address}{metrics}", flush=True)
    logger.info("listening on %s (metrics %s), gateway %s", address, metrics_address or "off", config.gateway_addr)
    server = uvicorn.Server(uvicorn_config(app, config))
    try:
        asyncio.run(server.serve(sockets=[sock]))
    finally:
        if metrics_server is not None:
            metrics_server.shutdown()  # type: ignore[attr-defined]
        logger.info("stopped")
