"""The one server bootstrap of all five processes (llm, flow, vocoder, frontend, gateway).

Order of events: bind and start serving the health service as NOT_SERVING, load weights and
warm up (in a worker thread, so health checks keep being answered), flip to SERVING, and on
SIGTERM/SIGINT flip back to NOT_SERVING and stop with a grace period that lets in-flight
streams drain.

Metrics every process shares are set up here too: the interceptor that counts every RPC by
final status code (services/common/rpc_metrics.py), process_* and the build info, all on the
service's own registry, served on its own port and interface (metrics_port, metrics_host).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import signal
import socket
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Sequence

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import CollectorRegistry, start_http_server

from services.common.config import ConfigError, ServerConfig, setting_names
from services.common.drain import EXIT_STREAMS_CUT, CallTracker, DrainInterceptor
from services.common.malformed import MalformedRequestInterceptor
from services.common.metrics import make_registry, register_process_metrics
from services.common.rpc_metrics import RpcMetrics, RpcMetricsInterceptor
from services.common.tls import load_server_tls

logger = logging.getLogger(__name__)

# What the gateway's and the CLI's channels allow: at least every service's max_send_message_bytes
# (the largest: 64 MiB, a non-streaming vocoder chunk or gateway response), so a channel never
# refuses what a server may legitimately send. Servers refuse by their own settings
# (server_options below; sizes per service in docs/limits.md).
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
    # A client re-resolves a dns:/// name only when a connection closes. Closing each
    # connection after about 5 minutes (gRPC adds jitter) lets the gateway find replicas added
    # since (compose --scale, a Kubernetes autoscaler). The GOAWAY stops new calls only: streams
    # already running get an hour to finish, far beyond the gateway's 300 s stage deadline.
    ("grpc.max_connection_age_ms", 300_000),
    ("grpc.max_connection_age_grace_ms", 3_600_000),
]


# After a drain: how long cut calls get to send their status, and what is left (health watches)
# gets before the transport closes.
_CUT_SECONDS = 1.0

def server_options(config: ServerConfig) -> list[tuple[str, Any]]:
    """SERVER_OPTIONS with this service's own message size limits (docs/limits.md)."""
    sizes = {
        "grpc.max_send_message_length": config.max_send_message_bytes,
        "grpc.max_receive_message_length": config.max_receive_message_bytes,
    }
    return [(name, sizes.get(name, value)) for name, value in SERVER_OPTIONS]


# A health "service" that is SERVING from bind until drain: the process is alive and answering.
# Liveness probes ask for it, readiness ones for "" (which also needs the model loaded and, at
# the gateway, every stage up): a gateway whose stage is down must not be restarted for it.
LIVENESS_SERVICE = "liveness"

_HEALTH_SERVICE = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
# grpcio-reflection serves the v1alpha name; newer clients also try v1.
_REFLECTION_SERVICES = (reflection.SERVICE_NAME, "grpc.reflection.v1.ServerReflection")


@dataclass
class ServiceBinding:
    """A servicer and the generated function that registers it."""

    full_name: str  # e.g. "cosyvoice.v1.FlowDecoder", from the pb2 DESCRIPTOR
    servicer: Any
    add_to_server: Callable[[Any, grpc.aio.Server], None]


class ServiceHost:
    """A running grpc.aio server with health, reflection and Prometheus metrics.

    `service` names the process in cosyvoice_build_info; without a registry a fresh one is
    made (served only when config.metrics_port >= 0). `interceptors` run inside the metrics
    interceptor, so a call they refuse (e.g. the gateway's API keys) is counted by its code."""

    def __init__(
        self,
        config: ServerConfig,
        bindings: list[ServiceBinding],
        registry: CollectorRegistry | None = None,
        service: str = "",
        interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
    ) -> None:
        self.config = config
        self.bindings = bindings
        self.registry = registry if registry is not None else make_registry()
        register_process_metrics(self.registry, service or "unnamed")
        self.rpc_metrics = RpcMetrics(self.registry)
        served = [b.full_name for b in bindings] + [_HEALTH_SERVICE, *_REFLECTION_SERVICES]
        self.health = health.aio.HealthServicer()
        self.calls = CallTracker(service or "server")
        self.server = grpc.aio.server(
            options=server_options(config),
            interceptors=[
                RpcMetricsInterceptor(self.rpc_metrics, served),
                # Inside the metrics interceptor, so refused and cut calls are counted too.
                DrainInterceptor(self.calls, [b.full_name for b in bindings]),
                *interceptors,
                # Innermost: the handlers the others return keep its tolerant deserializer, and a
                # refusal (draining, API key) is answered before a request that does not parse.
                MalformedRequestInterceptor(),
            ],
        )
        self.port = 0
        self.metrics_port: int | None = None
        self._metrics_server: Any = None
        self.is_serving = False
        # What health reports is SERVING only while loaded, not draining, and (the gateway)
        # every stage it needs has a serving replica.
        self._dependencies_ok = True

    @property
    def address(self) -> str:
        return f"{self.config.host}:{self.port}"

    @property
    def metrics_address(self) -> str | None:
        """host:port of /metrics once served; None when disabled."""
        if self.metrics_port is None:
            return None
        return f"{self.config.metrics_bind_host}:{self.metrics_port}"

    def ready_line(self, name: str) -> str:
        """What a process prints on stdout once bound; `cosyvoice up` parses it."""
        metrics = f" metrics {self.metrics_address}" if self.metrics_address else ""
        return f"{name} listening on {self.address}{metrics}"

    async def start(self) -> None:
        for binding in self.bindings:
            binding.add_to_server(binding.servicer, self.server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        names = [b.full_name for b in self.bindings]
        if self.config.reflection:  # off: grpcurl list/describe get UNIMPLEMENTED
            reflection.enable_server_reflection(names + [_HEALTH_SERVICE, reflection.SERVICE_NAME], self.server)
        for name in ["", *names]:
            await self.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        await self.health.set(LIVENESS_SERVICE, health_pb2.HealthCheckResponse.SERVING)
        self.port = self._bind()
        if self.config.metrics_port >= 0:
            # Before the gRPC server starts: a taken metrics port stops the process before it
            # answers anything, with the setting named.
            try:
                self._metrics_server, _ = start_http_server(
                    self.config.metrics_port, addr=self.config.metrics_bind_host, registry=self.registry
                )
            except OSError as exc:
                await self.server.stop(0)
                names = setting_names(type(self.config), "metrics_port")
                raise ConfigError(
                    f"{names}: cannot listen on {self.config.metrics_bind_host}:{self.config.metrics_port} "
                    f"({exc.strerror or exc})"
                ) from None
            self.metrics_port = self._metrics_server.server_port
        await self.server.start()
        logger.info("listening on %s (metrics %s)", self.address, self.metrics_address or "off")

    def _bind(self) -> int:
        """Bind the gRPC port: TLS when tls_cert and tls_key are set (the files are read here,
        once), plaintext otherwise. A bad file is a ConfigError naming its setting."""
        config, address = self.config, f"{self.config.host}:{self.config.port}"
        names = {name: setting_names(type(config), f"tls_{name}") for name in ("cert", "key", "client_ca")}
        tls = load_server_tls(config.tls_cert, config.tls_key, config.tls_client_ca, names)
        if tls is None:
            port = self.server.add_insecure_port(address)
        else:
            try:
                port = self.server.add_secure_port(address, tls.credentials())
            except RuntimeError:
                # gRPC says "Failed to bind" both for a key that is not the certificate's and
                # for a taken port; a free port means the key.
                if config.port and not _port_is_free(config.host, config.port):
                    raise
                raise ConfigError(f"{names['key']}: gRPC refused this key with {names['cert']} "
                                  f"({config.tls_key!r}, {config.tls_cert!r}): is it the certificate's key?") from None
        if port == 0:
            raise OSError(f"cannot bind {address}")
        return port

    async def warm_up(self, load: Callable[[], Any] | None) -> None:
        """Run `load`, then serve. A blocking `load` (model loading) runs in a worker thread so
        health checks keep being answered; an async one runs on the loop."""
        started = time.perf_counter()
        if inspect.iscoroutinefunction(load):
            await load()
        elif load is not None:
            await asyncio.to_thread(load)
        self.is_serving = True
        await self._publish_health()
        logger.info("SERVING after %.1f s of loading and warm-up", time.perf_counter() - started)

    async def set_dependencies_ok(self, ok: bool) -> None:
        """The gateway's verdict on its stages: NOT_SERVING while one has no serving replica."""
        self._dependencies_ok = ok
        await self._publish_health()

    async def _publish_health(self) -> None:
        serving = self.is_serving and self._dependencies_ok and not self.calls.draining
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ["", *(b.full_name for b in self.bindings)]:
            await self.health.set(name, status)  # a no-op once draining: enter_graceful_shutdown froze it

    async def drain(self, timeout: float) -> int:
        """NOT_SERVING, refuse new calls, let those in flight finish for up to `timeout` seconds,
        then cut the rest with UNAVAILABLE (services/common/drain.py). Returns how many were cut."""
        self.is_serving = False
        self.calls.start_draining()
        await self.health.enter_graceful_shutdown()
        if self.calls.in_flight:
            logger.info("draining %d calls in flight for up to %g s", self.calls.in_flight, timeout)
        if await self.calls.wait_idle(timeout):
            return 0
        cut = self.calls.cut_all(timeout)
        logger.warning("drain timeout (%g s): cut %d calls still in flight", timeout, cut)
        await self.calls.wait_idle(_CUT_SECONDS)  # each cut call sends its status
        return cut

    async def stop(self, grace: float | None = None) -> int:
        """Drain for `grace` seconds (default: the grace_seconds setting), then close the port
        and the metrics server. Returns how many calls the drain had to cut."""
        cut = await self.drain(self.config.grace_seconds if grace is None else grace)
        await self.server.stop(_CUT_SECONDS)
        if self._metrics_server is not None:
            self._metrics_server.shutdown()
            self._metrics_server = None
        return cut


def _port_is_free(host: str, port: int) -> bool:
    try:
        with socket.create_server((host, port)):
            return True
    except OSError:
        return False


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
    logger.info("shutting down: NOT_SERVING, draining in-flight streams for up to %g s (grace_seconds)",
                host.config.grace_seconds)
    stop_wait.cancel()
    cut = await host.stop()
    if on_stop is not None:
        await on_stop()
    logger.info("stopped")
    if failure is not None:
        raise SystemExit(f"{name or 'server'}: {failure}")  # a failed load ends the process, code 1
    if cut:
        raise SystemExit(EXIT_STREAMS_CUT)
