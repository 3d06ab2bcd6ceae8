"""The one map from exceptions to gRPC status codes, used by every servicer.

Servicers raise typed errors; `map_errors` turns them into `context.abort(code, message)`.
An upstream stage failing surfaces as UNAVAILABLE naming the stage, except for codes that
describe the request itself (a bad argument stays INVALID_ARGUMENT end to end).
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
from typing import Any, AsyncIterator, Awaitable, Callable, TypeVar

import grpc

logger = logging.getLogger(__name__)


class ServingError(Exception):
    """Base of the errors a client may see; the message is sent as the status details."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL


class InvalidRequest(ServingError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(ServingError):
    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(ServingError):
    code = grpc.StatusCode.ALREADY_EXISTS


class FailedPrecondition(ServingError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class Overloaded(ServingError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unavailable(ServingError):
    code = grpc.StatusCode.UNAVAILABLE


class UpstreamError(ServingError):
    """A call to another stage failed; `code` is what our caller sees."""

    def __init__(self, stage: str, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{stage} stage: {details}")
        self.code = code


# Codes that describe the request, not the stage that rejected it: passed through unchanged.
_REQUEST_CODES = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.ALREADY_EXISTS,
    }
)


# Codes that say the stage itself is unhealthy; anything else unexpected is our own bug.
_STAGE_DOWN_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNKNOWN, grpc.StatusCode.ABORTED})


_LOCAL_SEND_FAILURE = "Internal error from Core"


def upstream_error(
    stage: str, error: grpc.aio.AioRpcError, request_codes: frozenset[grpc.StatusCode] = _REQUEST_CODES
) -> UpstreamError:
    """How a failed stage call looks to our caller. `request_codes` pass through unchanged:
    for a stage that sees the caller's own input (the LLM) that includes INVALID_ARGUMENT; for
    one that only sees messages we built (flow, vocoder), a rejection is our bug: INTERNAL."""
    code = error.code()
    if code == grpc.StatusCode.INTERNAL and error.details() == _LOCAL_SEND_FAILURE:
        # Not the stage's answer: grpc.aio's own status for a message it could not send because
        # the call had already broken (the stage died, or retries on its replicas ran out).
        return UpstreamError(stage, grpc.StatusCode.UNAVAILABLE, "UNAVAILABLE: the call broke while sending to it")
    if code in request_codes:
        mapped = code
    elif code in _STAGE_DOWN_CODES:
        mapped = grpc.StatusCode.UNAVAILABLE
    else:
        mapped = grpc.StatusCode.INTERNAL
    return UpstreamError(stage, mapped, f"{code.name}: {error.details() or 'no details'}")


# For stages fed only by the gateway: a voice the model lacks is the caller's, the rest is ours.
INTERNAL_STAGE_REQUEST_CODES = _REQUEST_CODES - {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION}


def status_of(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    if isinstance(exc, ServingError):
        return exc.code, str(exc)
    return grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}"


F = TypeVar("F", bound=Callable[..., Any])


async def _abort(context: grpc.aio.ServicerContext, exc: BaseException, method: str) -> None:
    code, message = status_of(exc)
    if code == grpc.StatusCode.INTERNAL:
        logger.exception("%s failed", method, exc_info=exc)
    else:
        logger.info("%s: %s %s", method, code.name, message)
    await context.abort(code, message)


def map_errors(method: F) -> F:
    """Decorate an async servicer method (unary or streaming) with the error map."""
    if inspect.isasyncgenfunction(method):

        @functools.wraps(method)
        async def stream_wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            try:
                async for item in method(self, request, context):
                    yield item
            except (asyncio.CancelledError, grpc.aio.AbortError):
                raise
            except Exception as exc:  # noqa: BLE001 - this *is* the error boundary
                await _abort(context, exc, method.__qualname__)

        return stream_wrapper  # type: ignore[return-value]

    @functools.wraps(method)
    async def unary_wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Awaitable[Any]:
        try:
            return await method(self, request, context)
        except (asyncio.CancelledError, grpc.aio.AbortError):
            raise
        except Exception as exc:  # noqa: BLE001
            await _abort(context, exc, method.__qualname__)
            raise  # unreachable: abort raises

    return unary_wrapper  # type: ignore[return-value]
