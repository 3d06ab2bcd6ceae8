"""The FlowDecoder service over real gRPC, in-process on port 0."""

import asyncio

import grpc
import numpy as np
import pytest

from services.common.chunking import ChunkPolicy, TokenChunker
from services.common.pb import flow_pb2, flow_pb2_grpc
from services.common.tensors import from_proto, to_proto
from tests.stack import running_stack
from tests.waiting import eventually

TOKENS = [(i * 37 + 11) % 6561 for i in range(140)]


@pytest.fixture
async def flow(tiny_model_dir):
    async with running_stack(tiny_model_dir, with_gateway=False) as stack:
        yield stack.flow


def _schedule(tokens):
    chunker = TokenChunker(ChunkPolicy(), 0)
    chunks = chunker.ready(len(tokens)) + chunker.finish(len(tokens))
    sent, messages = 0, []
    for chunk in chunks:
        messages.append(flow_pb2.DecodeRequest(chunk=flow_pb2.TokenChunk(tokens=tokens[sent:chunk.end], finalize=chunk.is_final)))
        sent = chunk.end
    return chunks, messages


async def _decode(address, start, messages):
    async def requests():
        yield flow_pb2.DecodeRequest(start=start)
        for message in messages:
            yield message

    async with grpc.aio.insecure_channel(address) as channel:
        return [r async for r in flow_pb2_grpc.FlowDecoderStub(channel).Decode(requests())]


async def test_each_chunk_returns_two_frames_per_completed_token(flow):
    chunks, messages = _schedule(TOKENS)
    responses = await _decode(flow.host.address, flow_pb2.DecodeStart(request_id="t"), messages)
    assert [r.token_offset for r in responses] == [c.emit_end for c in chunks]
    assert [from_proto(r.mel, "mel").shape for r in responses] == [(80, 2 * c.num_new_tokens) for c in chunks]
    assert [r.is_final for r in responses] == [False] * (len(chunks) - 1) + [True]
    assert all(r.compute_seconds > 0 for r in responses)


async def test_concurrent_streams_are_batched_and_unchanged(flow):
    _, messages = _schedule(TOKENS)
    start = flow_pb2.DecodeStart(speaker_id="default")
    alone = await _decode(flow.host.address, start, messages)
    together = await asyncio.gather(*(_decode(flow.host.address, start, messages) for _ in range(3)))
    for responses in together:
        for a, b in zip(alone, responses):
            np.testing.assert_allclose(from_proto(a.mel, "a"), from_proto(b.mel, "b"), atol=1e-4)
    registry = flow.host.registry
    assert registry.get_sample_value("cosyvoice_flow_batch_size_sum") > registry.get_sample_value(
        "cosyvoice_flow_batch_size_count"
    )


async def test_a_voice_prompt_conditions_the_flow(flow):
    _, messages = _schedule(TOKENS[:40])
    prompt_tokens = np.arange(20, dtype=np.int32)
    prompt = flow_pb2.DecodeStart(
        prompt={
            "prompt_tokens": to_proto(prompt_tokens),
            "prompt_mel": to_proto(np.zeros((40, 80), np.float32)),
            "speaker_embedding": to_proto(np.ones(192, np.float32)),
        }
    )
    with_prompt = await _decode(flow.host.address, prompt, messages)
    without = await _decode(flow.host.address, flow_pb2.DecodeStart(), messages)
    total = sum(from_proto(r.mel, "m").shape[1] for r in with_prompt)
    assert total == 80
    assert not np.allclose(from_proto(with_prompt[-1].mel, "a"), from_proto(without[-1].mel, "b"))


@pytest.mark.parametrize(
    ("start", "messages", "code", "words"),
    [
        (None, [flow_pb2.DecodeRequest(chunk=flow_pb2.TokenChunk(tokens=[1]))], grpc.StatusCode.INVALID_ARGUMENT, "first"),
        (flow_pb2.DecodeStart(speaker_id="nobody"), [], grpc.StatusCode.NOT_FOUND, "nobody"),
        (flow_pb2.DecodeStart(), [flow_pb2.DecodeRequest(chunk=flow_pb2.TokenChunk(tokens=[6561], finalize=True))],
         grpc.StatusCode.INVALID_ARGUMENT, "chunk.tokens"),
        (flow_pb2.DecodeStart(prompt={"prompt_tokens": to_proto(np.arange(4, dtype=np.int32)),
                                      "prompt_mel": to_proto(np.zeros((5, 80), np.float32)),
                                      "speaker_embedding": to_proto(np.ones(192, np.float32))}),
         [], grpc.StatusCode.INVALID_ARGUMENT, "prompt_mel"),
    ],
)
async def test_bad_streams_get_a_clear_status(flow, start, messages, code, words):
    async def requests():
        if start is not None:
            yield flow_pb2.DecodeRequest(start=start)
        for message in messages:
            yield message

    async with grpc.aio.insecure_channel(flow.host.address) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            async for _ in flow_pb2_grpc.FlowDecoderStub(channel).Decode(requests()):
                pass
    assert info.value.code() == code
    assert words in info.value.details()
    await eventually(lambda: flow.servicer.runner.num_sessions == 0, what="the session being closed")


async def test_cancel_closes_the_session(flow):
    queue = asyncio.Queue()

    async def requests():
        yield flow_pb2.DecodeRequest(start=flow_pb2.DecodeStart())
        while True:
            yield await queue.get()

    async with grpc.aio.insecure_channel(flow.host.address) as channel:
        call = flow_pb2_grpc.FlowDecoderStub(channel).Decode(requests())
        await queue.put(flow_pb2.DecodeRequest(chunk=flow_pb2.TokenChunk(tokens=TOKENS[:28])))
        await call.read()
        assert flow.servicer.runner.num_sessions == 1
        call.cancel()
    await eventually(lambda: flow.servicer.runner.num_sessions == 0, what="the session being closed")
