"""Graceful drain: every process's answer to SIGTERM, one grpc.aio interceptor and a tracker.

`grpc.aio.Server.stop(grace)` alone refuses new calls only at the transport, lets streams run
for `grace` seconds and then cuts them all with the transport's "Cancelling all calls", which
tells a client nothing. Instead, on SIGTERM a process:

1. reports NOT_SERVING (load balancers and the gateway's client-side health checks stop
   sending new work here);
2. answers calls that still arrive UNAVAILABLE, saying it is shutting down, so a client
   retries elsewhere;
3. waits, without polling, for the calls in flight to finish, up to the drain timeout;
4. cuts whatever is left with UNAVAILABLE and a message naming the drain timeout setting.

Health and reflection calls are neither refused nor waited for: a Health.Watch stream (the
gateway keeps one open to every stage replica) lasts as long as its connection.
"""

from __future__ import annotations

import asyncio
import inspect
from typing import Any, AsyncIterator, Awaitable, Callable, Iterable

import grpc

_BEHAVIOURS = ("unary_unary", "unary_stream", "stream_unary", "stream_stream")
# A process whose drain had to cut streams exits with this code, so `up`, systemd or a
# Kubernetes pod's last state shows that shutting down lost work.
EXIT_STREAMS_CUT = 3


class CallTracker:
    """The calls in flight of one server, the drain state, and how to cut the rest."""

    def __init__(self, name: str, setting: str = "grace_seconds") -> None:
        self.name = name  # the process, named in every message ("gateway", "flow", ...)
        self.setting = setting  # the drain timeout's setting, named when streams are cut
        self.draining = False
        self._active: set[asyncio.Task[Any]] = set()
        self._cut: set[asyncio.Task[Any]] = set()
        self._cut_after = 0.0
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def in_flight(self) -> int:
        return len(self._active)

    @property
    def refused_message(self) -> str:
        return f"{self.name}: shutting down (draining); retry on another replica"

    @property
    def cut_message(self) -> str:
        return (f"{self.name}: shutting down; the stream was cut at the {self._cut_after:g} s drain timeout "
                f"({self.setting})")

    def start_draining(self) -> None:
        self.draining = True

    def enter(self, task: asyncio.Task[Any]) -> None:
        self._active.add(task)
        self._idle.clear()

    def leave(self, task: asyncio.Task[Any]) -> None:
        self._active.discard(task)
        self._cut.discard(task)
        if not self._active:
            self._idle.set()

    def was_cut(self, task: asyncio.Task[Any] | None) -> bool:
        return task is not None and task in self._cut

    async def wait_idle(self, timeout: float) -> bool:
        """True once no call is in flight; False if `timeout` seconds passed first."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout=max(timeout, 0.0))
        except asyncio.TimeoutError:
            return self._idle.is_set()
        return True

    def cut_all(self, after_seconds: float) -> int:
        """Cancel every call in flight; each one ends UNAVAILABLE with `cut_message`."""
        self._cut_after = after_seconds
        tasks = list(self._active)
        for task in tasks:
            self._cut.add(task)
            task.cancel()
        return len(tasks)


class DrainInterceptor(grpc.aio.ServerInterceptor):
    """Tracks the calls of `services` (the process's own) and refuses them while draining."""

    def __init__(self, tracker: CallTracker, services: Iterable[str]) -> None:
        self.tracker = tracker
        self.services = set(services)  # filled in before the server starts

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(handler_call_details)
        service = handler_call_details.method.lstrip("/").rpartition("/")[0]
        if handler is None or service not in self.services:
            return handler
        for kind in _BEHAVIOURS:
            behaviour = getattr(handler, kind)
            if behaviour is not None:
                return handler._replace(**{kind: self._wrap(behaviour)})
        return handler

    def _wrap(self, behaviour: Callable[..., Any]) -> Callable[..., Any]:
        tracker = self.tracker
        if inspect.isasyncgenfunction(behaviour):

            async def stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                if tracker.draining:
                    await context.abort(grpc.StatusCode.UNAVAILABLE, tracker.refused_message)
                task = asyncio.current_task()
                assert task is not None
                tracker.enter(task)
                try:
                    async for response in behaviour(request, context):
                        yield response
                except asyncio.CancelledError:
                    if not tracker.was_cut(task):
                        raise  # the client went away: gRPC ends the call itself
                    task.uncancel()
                    await context.abort(grpc.StatusCode.UNAVAILABLE, tracker.cut_message)
                finally:
                    tracker.leave(task)

            return stream

        if not inspect.iscoroutinefunction(behaviour):
            return behaviour  # a synchronous handler (none here: every servicer is asyncio)

        async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
            if tracker.draining:
                await context.abort(grpc.StatusCode.UNAVAILABLE, tracker.refused_message)
            task = asyncio.current_task()
            assert task is not None
            tracker.enter(task)
            try:
                return await behaviour(request, context)
            except asyncio.CancelledError:
                if not tracker.was_cut(task):
                    raise
                task.uncancel()
                await context.abort(grpc.StatusCode.UNAVAILABLE, tracker.cut_message)
            finally:
                tracker.leave(task)

        return call
