"""Cross-request micro-batching for the flow and vocoder stages.

Concurrent streams submit work items; one worker task gathers whatever is queued (up to
`max_batch_size`, waiting at most `max_wait_seconds` for more) and runs the batch function
on a single dedicated thread. Under load, items that arrive while a batch computes form the
next batch, so batching costs no added latency at low load. A failing batch fails every
item in it; a cancelled submitter just drops its result.

With a HeapTrimmer, the same thread gives freed heap pages back to the OS between batches: after
a batch when the last trim is old enough, and when the queue has stayed empty for a moment, so
no caller waits on it (services/common/malloc_tuning.py says why).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Callable, Generic, TypeVar

from services.common.compute_thread import compute_executor
from services.common.malloc_tuning import HeapTrimmer

I = TypeVar("I")
O = TypeVar("O")


@dataclass
class _Pending(Generic[I]):
    item: I
    future: asyncio.Future
    queued_at: float


class Batcher(Generic[I, O]):
    def __init__(
        self,
        run_batch: Callable[[list[I]], list[O]],
        max_batch_size: int,
        max_wait_seconds: float = 0.0,
        name: str = "batcher",
        on_batch: Callable[[int, float], None] | None = None,
        nice_increment: int = 0,
        trimmer: HeapTrimmer | None = None,
    ) -> None:
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        self.run_batch = run_batch
        self.max_batch_size = max_batch_size
        self.max_wait_seconds = max_wait_seconds
        self.on_batch = on_batch  # (batch size, compute seconds), for metrics
        self._queue: asyncio.Queue[_Pending[I]] = asyncio.Queue()
        self._name = name
        self._executor = compute_executor(name, nice_increment)
        self._worker: asyncio.Task | None = None
        self._trimmer = trimmer

    def start(self) -> None:
        self._worker = asyncio.create_task(self._work())

    async def close(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)
        queued = []
        while not self._queue.empty():  # nobody will run these any more
            queued.append(self._queue.get_nowait())
        self._fail(queued, RuntimeError(f"{self._name} batcher closed"))
        self._executor.shutdown(wait=True)

    @staticmethod
    def _fail(batch: list[_Pending[I]], error: BaseException) -> None:
        for pending in batch:
            if not pending.future.done():
                pending.future.set_exception(error)

    async def submit(self, item: I) -> O:
        future = asyncio.get_running_loop().create_future()
        await self._queue.put(_Pending(item, future, time.perf_counter()))
        return await future

    async def _next(self) -> _Pending[I]:
        """The next item; after work, an idle moment first trims the heap on the batch thread."""
        trimmer = self._trimmer
        if trimmer is not None and trimmer.enabled and trimmer.dirty and self._queue.empty():
            try:
                return await asyncio.wait_for(self._queue.get(), trimmer.idle_after)
            except asyncio.TimeoutError:
                await asyncio.get_running_loop().run_in_executor(self._executor, trimmer.trim)
        return await self._queue.get()

    async def _gather(self) -> list[_Pending[I]]:
        batch = [await self._next()]
        deadline = time.perf_counter() + self.max_wait_seconds
        while len(batch) < self.max_batch_size:
            if not self._queue.empty():
                batch.append(self._queue.get_nowait())
                continue
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self._queue.get(), remaining))
            except asyncio.TimeoutError:
                break
        return [p for p in batch if not p.future.cancelled()]

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._gather()
            if not batch:
                continue
            started = time.perf_counter()
            try:
                results = await loop.run_in_executor(self._executor, self.run_batch, [p.item for p in batch])
                if len(results) != len(batch):
                    raise RuntimeError(f"{self._name}: {len(results)} results for a batch of {len(batch)}")
                if self.on_batch is not None:
                    self.on_batch(len(batch), time.perf_counter() - started)
            except asyncio.CancelledError:  # closing: this batch's callers must not wait forever
                self._fail(batch, RuntimeError(f"{self._name} batcher closed"))
                raise
            except Exception as exc:  # noqa: BLE001 - delivered to every submitter; the worker lives on
                self._fail(batch, exc)
                continue
            for pending, result in zip(batch, results):
                if not pending.future.done():
                    pending.future.set_result(result)
            if self._trimmer is not None:
                self._trimmer.worked()
                if self._trimmer.due():  # steady load: the results are out, the next batch waits briefly
                    await loop.run_in_executor(self._executor, self._trimmer.trim)


def length_buckets(lengths: list[int], max_padding_ratio: float) -> list[list[int]]:
    """Group item indices so that padding each group to its longest item costs at most
    `max_padding_ratio` × the group's real total: batching a 28-token first chunk with a
    478-token re-decode would cost more than running them one after the other."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    groups: list[list[int]] = []
    total = 0
    for index in order:
        group = groups[-1] if groups else None
        if group is not None:
            padded = lengths[index] * (len(group) + 1)
            if padded <= max_padding_ratio * (total + lengths[index]):
                group.append(index)
                total += lengths[index]
                continue
        groups.append([index])
        total = lengths[index]
    return groups
