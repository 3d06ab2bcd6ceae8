"""Requests whose bytes do not parse: INVALID_ARGUMENT naming the message type, one interceptor.

gRPC parses a request with the handler's `request_deserializer` inside the framework, before
any of our code runs. Left alone, a protobuf DecodeError there ends the call with UNKNOWN and
logs an ERROR with a traceback per request (a fuzzer or a client built from a stale proto can
write thousands), and no interceptor behaviour runs, so the call is not even counted.

`MalformedRequestInterceptor` wraps every handler's deserializer: bytes that do not parse
become an `Undecodable` marker instead of an exception, and the wrapped behaviour answers it:

- a unary request: INVALID_ARGUMENT before the servicer runs;
- a request stream: the servicer's iterator raises `MalformedRequest` (an InvalidRequest, so
  the servicers' error map answers INVALID_ARGUMENT with its message) when it reaches the bad
  message; a servicer without that map gets the same status from the wrapper.

Each process logs one WARNING line, no traceback, per method at most every `interval` seconds,
with the number of malformed requests not logged since. It sits inside the RPC metrics
interceptor (services/common/server.py), so these calls are counted as INVALID_ARGUMENT.
"""

from __future__ import annotations

import inspect
import logging
import time
from dataclasses import dataclass
from typing import Any, AsyncIterator, Awaitable, Callable

import grpc
from google.protobuf.message import DecodeError

from services.common.errors import InvalidRequest

logger = logging.getLogger(__name__)
_BEHAVIOURS = ("unary_unary", "unary_stream", "stream_unary", "stream_stream")
_REQUEST_STREAMS = ("stream_unary", "stream_stream")


class MalformedRequest(InvalidRequest):
    """A request message whose bytes are not a valid message of the method's request type."""


@dataclass(frozen=True)
class Undecodable:
    """What the wrapped deserializer returns for bytes that do not parse."""

    type_name: str  # e.g. "cosyvoice.v1.SynthesizeRequest"
    reason: str  # the parser's own words, for the log
    size: int  # bytes received


def message_type_name(deserializer: Callable[[bytes], Any]) -> str:
    """The protobuf type a generated stub's deserializer (`Message.FromString`) parses."""
    descriptor = getattr(getattr(deserializer, "__self__", None), "DESCRIPTOR", None)
    return getattr(descriptor, "full_name", "") or "request message"


class RateLimitedLog:
    """At most one line per key every `interval` seconds; the next line says how many were not logged."""

    def __init__(self, interval: float = 10.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval
        self.clock = clock
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def allow(self, key: str) -> int | None:
        """None: do not log now (counted). Otherwise: log now; how many were not logged since the last line."""
        now = self.clock()
        last = self._last.get(key)
        if last is not None and now - last < self.interval:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return None
        self._last[key] = now
        return self._suppressed.pop(key, 0)


class MalformedRequestInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, log: RateLimitedLog | None = None) -> None:
        self.log = log if log is not None else RateLimitedLog()

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(handler_call_details)
        if handler is None or handler.request_deserializer is None:
            return handler  # unknown method, or a raw-bytes handler: nothing is parsed
        for kind in _BEHAVIOURS:
            behaviour = getattr(handler, kind)
            if behaviour is None:
                continue
            wrapped = self._wrap(behaviour, kind in _REQUEST_STREAMS, handler_call_details.method)
            if wrapped is None:
                return handler  # a synchronous handler (none here): left as gRPC runs it
            return handler._replace(
                request_deserializer=_tolerant(handler.request_deserializer), **{kind: wrapped}
            )
        return handler

    def rejected(self, method: str, bad: Undecodable, index: int | None = None) -> MalformedRequest:
        """The caller's error for `bad`, logged without a traceback and rate-limited."""
        where = "the bytes" if index is None else f"the bytes of message {index} of the stream"
        error = MalformedRequest(f"request: {where} are not a valid {bad.type_name}")
        suppressed = self.log.allow(method)
        if suppressed is not None:
            more = f" ({suppressed} more since the last such line were not logged)" if suppressed else ""
            logger.warning(
                "%s: answered INVALID_ARGUMENT to %d bytes that do not parse: %s%s",
                method, bad.size, bad.reason, more,
            )
        return error

    def _wrap(self, behaviour: Callable[..., Any], streamed: bool, method: str) -> Callable[..., Any] | None:
        checked = self._checked

        if inspect.isasyncgenfunction(behaviour):

            async def stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                try:
                    if streamed:
                        request = checked(request, method)
                    elif isinstance(request, Undecodable):
                        raise self.rejected(method, request)
                    async for response in behaviour(request, context):
                        yield response
                except MalformedRequest as exc:  # a servicer without the error map let it through
                    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))

            return stream

        if not inspect.iscoroutinefunction(behaviour):
            return None

        async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
            try:
                if streamed:
                    request = checked(request, method)
                elif isinstance(request, Undecodable):
                    raise self.rejected(method, request)
                return await behaviour(request, context)
            except MalformedRequest as exc:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))

        return call

    async def _checked(self, requests: AsyncIterator[Any], method: str) -> AsyncIterator[Any]:
        """The request stream, raising MalformedRequest at the first message that did not parse."""
        index = 0
        async for request in requests:
            index += 1
            if isinstance(request, Undecodable):
                raise self.rejected(method, request, index)
            yield request


def _tolerant(deserializer: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    type_name = message_type_name(deserializer)

    def deserialize(raw: bytes) -> Any:
        try:
            return deserializer(raw)
        except DecodeError as exc:
            return Undecodable(type_name, str(exc), len(raw))

    return deserialize
