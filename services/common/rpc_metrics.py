"""Every RPC a server answers, counted by its final status code: one grpc.aio interceptor.

Servicers only see the calls that reach them, so counting there misses calls to methods the
server does not have (UNIMPLEMENTED), and it is easy to miss an abort or a cancellation.
The interceptor sits in front of every handler (ours, health, reflection) and records:

- a known method: its final code, from how the handler ended (returned → OK or the code it
  set, `context.abort` → that code, cancelled by the client → CANCELLED, or
  DEADLINE_EXCEEDED once the deadline has passed, any other exception → UNKNOWN, as gRPC
  itself reports it);
- an unknown method: UNIMPLEMENTED at once. Its path comes from the caller, so it is not used
  as a label as is (a scanner could create unbounded series): the service keeps its name only
  when this server has it, and the method is always "unknown".
"""

from __future__ import annotations

import asyncio
import inspect
import time
from typing import Any, AsyncIterator, Awaitable, Callable, Iterable

import grpc
from prometheus_client import CollectorRegistry, Counter, Histogram

from services.common.metrics import RPC_BUCKETS_SECONDS

UNKNOWN = "unknown"
_BEHAVIOURS = ("unary_unary", "unary_stream", "stream_unary", "stream_stream")
_CODES_BY_VALUE = {code.value[0]: code for code in grpc.StatusCode}


class RpcMetrics:
    """The two series every service exports about its RPCs."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.handled = Counter(
            "cosyvoice_grpc_server_handled",
            "RPCs completed by this server, by method and final status code (UNIMPLEMENTED and CANCELLED included).",
            ["grpc_service", "grpc_method", "grpc_code"],
            registry=registry,
        )
        self.handling_seconds = Histogram(
            "cosyvoice_grpc_server_handling_seconds",
            "From an RPC's start to its final status (a whole stream for streaming RPCs).",
            ["grpc_service", "grpc_method"],
            buckets=RPC_BUCKETS_SECONDS,
            registry=registry,
        )

    def record(self, service: str, method: str, code: grpc.StatusCode, seconds: float) -> None:
        self.handled.labels(service, method, code.name).inc()
        self.handling_seconds.labels(service, method).observe(seconds)


def split_method(full_method: str) -> tuple[str, str]:
    """'/pkg.Service/Method' → ('pkg.Service', 'Method')."""
    service, _, method = full_method.lstrip("/").rpartition("/")
    return (service or UNKNOWN), (method or UNKNOWN)


def _status(value: Any) -> grpc.StatusCode | None:
    """context.code() gives a StatusCode, a raw integer, or None when nothing was set."""
    if value is None or isinstance(value, grpc.StatusCode):
        return value
    return _CODES_BY_VALUE.get(int(value), grpc.StatusCode.UNKNOWN)


def _final_code(context: grpc.aio.ServicerContext, failure: BaseException | None) -> grpc.StatusCode:
    if failure is None:
        return _status(context.code()) or grpc.StatusCode.OK
    if isinstance(failure, grpc.aio.AbortError):
        return _status(context.code()) or grpc.StatusCode.UNKNOWN
    if isinstance(failure, (asyncio.CancelledError, GeneratorExit)):
        remaining = context.time_remaining()
        if remaining is not None and remaining <= 0:
            return grpc.StatusCode.DEADLINE_EXCEEDED
        return grpc.StatusCode.CANCELLED
    return grpc.StatusCode.UNKNOWN  # what gRPC sends for an exception a handler let escape


class RpcMetricsInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, metrics: RpcMetrics, services: Iterable[str] = ()) -> None:
        self.metrics = metrics
        self.services = set(services)  # the services this server has (filled in before start)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(handler_call_details)
        service, method = split_method(handler_call_details.method)
        if handler is None:  # gRPC answers UNIMPLEMENTED itself; no handler will run
            known = service if service in self.services else UNKNOWN
            self.metrics.record(known, UNKNOWN, grpc.StatusCode.UNIMPLEMENTED, 0.0)
            return None
        for kind in _BEHAVIOURS:
            behaviour = getattr(handler, kind)
            if behaviour is not None:
                return handler._replace(**{kind: self._wrap(behaviour, service, method)})
        return handler

    def _wrap(self, behaviour: Callable[..., Any], service: str, method: str) -> Callable[..., Any]:
        record = self.metrics.record
        if inspect.isasyncgenfunction(behaviour):

            async def stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                started, failure = time.perf_counter(), None
                try:
                    async for response in behaviour(request, context):
                        yield response
                except BaseException as exc:  # recorded, then re-raised unchanged
                    failure = exc
                    raise
                finally:
                    record(service, method, _final_code(context, failure), time.perf_counter() - started)

            return stream

        if not inspect.iscoroutinefunction(behaviour):
            return behaviour  # a synchronous handler (none here: every servicer is asyncio)

        async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
            # A coroutine handler: unary responses, or a stream written with context.write().
            started, failure = time.perf_counter(), None
            try:
                return await behaviour(request, context)
            except BaseException as exc:
                failure = exc
                raise
            finally:
                record(service, method, _final_code(context, failure), time.perf_counter() - started)

        return call
