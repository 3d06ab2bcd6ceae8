"""The one server bootstrap of all four processes (llm, flow, vocoder, gateway).

Order of events: bind and start serving the health service as NOT_SERVING, load weights and
warm up (in a worker thread, so health checks keep being answered), flip to SERVING, and on
SIGTERM/SIGINT flip back to NOT_SERVING and stop with a grace period that lets in-flight
streams drain.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import signal
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import CollectorRegistry, start_http_server

from services.common.config import ServerConfig

logger = logging.getLogger(__name__)

# Audio and mel chunks are a few hundred kB; prompts can carry a few MB of mel.
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
]
SERVER_OPTIONS = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
    # Clients keep idle channels alive with pings (CHANNEL_OPTIONS); without this the server
    # counts each ping on a connection with no call as a strike and, after two, closes it
    # with GOAWAY too_many_pings, so the next call pays a reconnect.
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.so_reuseport", 0),
]


@dataclass
class ServiceBinding:
    """A servicer and the generated function that registers it."""

    full_name: str  # e.g. "cosyvoice.v1.FlowDecoder", from the pb2 DESCRIPTOR
    servicer: Any
    add_to_server: Callable[[Any, grpc.aio.Server], None]


class ServiceHost:
    """A running grpc.aio server with health, reflection and optional Prometheus metrics."""

    def __init__(
        self,
        config: ServerConfig,
        bindings: list[ServiceBinding],
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.config = config
        self.bindings = bindings
        self.registry = registry
        self.health = health.aio.HealthServicer()
        self.server = grpc.aio.server(options=SERVER_OPTIONS)
        self.port = 0
        self.metrics_port: int | None = None
        self._metrics_server: Any = None
        self.is_serving = False

    @property
    def address(self) -> str:
        return f"{self.config.host}:{self.port}"

    def ready_line(self, name: str) -> str:
        """What a process prints on stdout once bound; `cosyvoice up` parses it."""
        metrics = f" metrics {self.config.host}:{self.metrics_port}" if self.metrics_port else ""
        return f"{name} listening on {self.address}{metrics}"

    async def start(self) -> None:
        for binding in self.bindings:
            binding.add_to_server(binding.servicer, self.server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        names = [b.full_name for b in self.bindings]
        reflection.enable_server_reflection(
            names + [health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME],
            self.server,
        )
        for name in ["", *names]:
            await self.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        self.port = self.server.add_insecure_port(f"{self.config.host}:{self.config.port}")
        if self.port == 0:
            raise OSError(f"cannot bind {self.config.host}:{self.config.port}")
        await self.server.start()
        if self.config.metrics_port >= 0 and self.registry is not None:
            self._metrics_server, _ = start_http_server(
                self.config.metrics_port, addr=self.config.host, registry=self.registry
            )
            self.metrics_port = self._metrics_server.server_port
        logger.info("listening on %s (metrics port %s)", self.address, self.metrics_port)

    async def warm_up(self, load: Callable[[], Any] | None) -> None:
        """Run `load`, then serve. A blocking `load` (model loading) runs in a worker thread so
        health checks keep being answered; an async one runs on the loop."""
        started = time.perf_counter()
        if inspect.iscoroutinefunction(load):
            await load()
        elif load is not None:
            await asyncio.to_thread(load)
        for name in ["", *(b.full_name for b in self.bindings)]:
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        self.is_serving = True
        logger.info("SERVING after %.1f s of loading and warm-up", time.perf_counter() - started)

    async def stop(self, grace: float | None = None) -> None:
        """Stop accepting calls, let in-flight streams finish for `grace` seconds, then close."""
        self.is_serving = False
        await self.health.enter_graceful_shutdown()
        await self.server.stop(self.config.grace_seconds if grace is None else grace)
        if self._metrics_server is not None:
            self._metrics_server.shutdown()
            self._metrics_server = None


async def run_until_signal(
    host: ServiceHost,
    load: Callable[[], Any] | None,
    on_stop: Callable[[], Awaitable[None]] | None = None,
    name: str = "",
) -> None:
    """Start, warm up, serve until SIGTERM/SIGINT, then drain and stop."""
    stop_requested = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop_requested.set)
    await host.start()
    if name:
        print(host.ready_line(name), flush=True)
    warm = asyncio.create_task(host.warm_up(load))
    stop_wait = asyncio.create_task(stop_requested.wait())
    done, _ = await asyncio.wait({warm, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
    failure: BaseException | None = None
    if warm in done:
        failure = warm.exception()
        if failure is None:
            await stop_wait
        else:
            logger.error("loading failed: %s", failure)
    else:
        warm.cancel()
    logger.info("shutting down: draining in-flight streams for up to %.1f s", host.config.grace_seconds)
    stop_wait.cancel()
    await host.stop()
    if on_stop is not None:
        await on_stop()
    logger.info("stopped")
    if failure is not None:
        raise SystemExit(f"{name or 'server'}: {failure}")  # a failed load ends the process, code 1
