import asyncio
import threading

import pytest

from services.common.batching import Batcher, length_buckets
from services.common.malloc_tuning import HeapTrimmer


async def test_items_queued_during_a_batch_form_the_next_batch():
    gate = threading.Event()
    sizes = []

    def run(items):
        sizes.append(len(items))
        if len(sizes) == 1:
            gate.wait(5)  # hold the first batch until the others are queued
        return [item * 10 for item in items]

    batcher = Batcher(run, max_batch_size=8)
    batcher.start()
    first = asyncio.create_task(batcher.submit(1))
    await asyncio.sleep(0.05)
    rest = [asyncio.create_task(batcher.submit(i)) for i in range(2, 6)]
    await asyncio.sleep(0.05)
    gate.set()
    assert await first == 10
    assert [await t for t in rest] == [20, 30, 40, 50]
    assert sizes == [1, 4]
    await batcher.close()


async def test_batch_size_is_capped():
    sizes = []
    batcher = Batcher(lambda items: (sizes.append(len(items)), items)[1], max_batch_size=2, max_wait_seconds=0.2)
    batcher.start()
    assert await asyncio.gather(*(batcher.submit(i) for i in range(5))) == [0, 1, 2, 3, 4]
    assert max(sizes) == 2 and sum(sizes) == 5
    await batcher.close()


async def test_a_failing_batch_fails_each_item_and_the_batcher_goes_on():
    def run(items):
        if "bad" in items:
            raise RuntimeError("boom")
        return items

    batcher = Batcher(run, max_batch_size=4, max_wait_seconds=0.05)
    batcher.start()
    results = await asyncio.gather(batcher.submit("bad"), batcher.submit("ok"), return_exceptions=True)
    assert all(isinstance(r, RuntimeError) for r in results)
    assert await batcher.submit("fine") == "fine"
    await batcher.close()


def test_rejects_bad_size():
    with pytest.raises(ValueError):
        Batcher(lambda x: x, max_batch_size=0)


def test_length_buckets_keep_padding_bounded():
    lengths = [28, 478, 30, 78, 480, 29, 178]
    groups = length_buckets(lengths, max_padding_ratio=1.2)
    assert sorted(i for g in groups for i in g) == list(range(len(lengths)))
    for group in groups:
        real = sum(lengths[i] for i in group)
        assert max(lengths[i] for i in group) * len(group) <= 1.2 * real
    assert [sorted(lengths[i] for i in g) for g in groups] == [[28, 29, 30], [78], [178], [478, 480]]
    assert length_buckets([5, 5, 5], 1.0) == [[0, 1, 2]]


async def test_close_fails_what_is_still_queued_instead_of_hanging():
    gate = threading.Event()
    batcher = Batcher(lambda items: (gate.wait(5), items)[1], max_batch_size=1)
    batcher.start()
    running = asyncio.create_task(batcher.submit("running"))
    await asyncio.sleep(0.05)
    queued = asyncio.create_task(batcher.submit("queued"))
    await asyncio.sleep(0.05)
    closing = asyncio.create_task(batcher.close())
    gate.set()
    await closing
    for call in (running, queued):
        with pytest.raises(RuntimeError, match="closed"):
            await call


async def test_an_idle_moment_trims_the_heap_once_on_the_batch_thread():
    loop = asyncio.get_running_loop()
    trimmed = asyncio.Event()
    threads = []

    def malloc_trim(pad: int) -> int:
        threads.append(threading.current_thread().name)
        loop.call_soon_threadsafe(trimmed.set)
        return 1

    batch_threads = []
    trimmer = HeapTrimmer(interval=3600, idle_after=0.05, malloc_trim=malloc_trim)
    batcher = Batcher(lambda items: (batch_threads.append(threading.current_thread().name), items)[1],
                      max_batch_size=4, trimmer=trimmer)
    batcher.start()
    assert await batcher.submit(7) == 7
    await asyncio.wait_for(trimmed.wait(), 10)
    assert threads == batch_threads  # the batch thread, after the queue ran dry
    trimmed.clear()
    await asyncio.sleep(0.3)  # idle with nothing new run: nothing more to give back
    assert len(threads) == 1 and not trimmed.is_set()
    await batcher.close()


async def test_steady_load_trims_after_a_batch_once_the_interval_has_passed():
    calls = []
    trimmer = HeapTrimmer(interval=0, idle_after=3600, malloc_trim=lambda pad: calls.append(pad) or 1)
    batcher = Batcher(lambda items: items, max_batch_size=1, trimmer=trimmer)
    batcher.start()
    for item in range(3):
        assert await batcher.submit(item) == item
    # The worker trims before it takes the next batch, so the first two batches' trims are done;
    # the third's may still be running when this resumes.
    assert calls[:2] == [0, 0] and trimmer.trims >= 2
    await batcher.close()
