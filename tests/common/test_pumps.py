import asyncio

import numpy as np

from services.common.pumps import AudioPiece, run_pumps


async def test_cancelling_the_consumer_leaves_no_pending_task_behind():
    audio_out: asyncio.Queue = asyncio.Queue()
    exited = []

    async def pump():
        await audio_out.put(AudioPiece(np.zeros(4, np.float32), 24000, False))
        await asyncio.Event().wait()  # a stage that never finishes

    async def consume():
        async for _ in run_pumps([pump()], audio_out, on_exit=lambda: exited.append(True)):
            pass

    before = asyncio.all_tasks()
    consumer = asyncio.create_task(consume())
    await asyncio.sleep(0.05)  # the consumer now waits for the second piece
    consumer.cancel()
    await asyncio.gather(consumer, return_exceptions=True)
    await asyncio.sleep(0)
    assert exited == [True]
    assert {t for t in asyncio.all_tasks() if not t.done()} - before == set()
