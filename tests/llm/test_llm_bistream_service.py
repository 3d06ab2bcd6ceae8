"""GenerateBistream over real gRPC, in-process on port 0: tokens before the text is complete,
batching with Generate, cancel while waiting for text, INVALID_ARGUMENT cases."""

from __future__ import annotations

import asyncio
import dataclasses

import grpc
import pytest

from services.common.modeldir.layout import ModelDir
from services.common.modeldir.tokenizer import CosyVoiceTokenizer
from services.common.pb import common_pb2, llm_pb2, llm_pb2_grpc
from services.llm.engine.bistream import FeedState
from services.llm.engine.config import EngineConfig
from services.llm.engine.llm_engine import LLMEngine
from tests.stack import running_stack
from tests.waiting import eventually

PIECES = ["Hello world, this is the first piece of text", " and here", " comes the rest of it."]
DONE = (common_pb2.FINISH_REASON_STOP, common_pb2.FINISH_REASON_LENGTH)


@pytest.fixture
async def llm(tiny_model_dir):
    async with running_stack(tiny_model_dir, with_gateway=False) as stack:
        yield stack.llm


def _start(seed: int = 3, **fields) -> llm_pb2.GenerateBistreamRequest:
    sampling = llm_pb2.SamplingParams(seed=seed)
    return llm_pb2.GenerateBistreamRequest(start=llm_pb2.BistreamStart(sampling=sampling, **fields))


def _text(piece: str) -> llm_pb2.GenerateBistreamRequest:
    return llm_pb2.GenerateBistreamRequest(text=piece)


async def _read_all(call) -> list[llm_pb2.GenerateResponse]:
    responses = []
    while (response := await call.read()) != grpc.aio.EOF:
        responses.append(response)
    return responses


async def _bistream(address: str, pieces=PIECES, seed: int = 3) -> list[int]:
    async with grpc.aio.insecure_channel(address) as channel:
        call = llm_pb2_grpc.SpeechTokenGeneratorStub(channel).GenerateBistream()
        for message in [_start(seed)] + [_text(p) for p in pieces]:
            await call.write(message)
        await call.done_writing()
        responses = await _read_all(call)
    assert responses[-1].finish_reason in DONE
    return [t for r in responses for t in r.tokens]


async def _generate(address: str, text: str, seed: int) -> list[int]:
    request = llm_pb2.GenerateRequest(text=text, sampling=llm_pb2.SamplingParams(seed=seed, max_token_text_ratio=5))
    async with grpc.aio.insecure_channel(address) as channel:
        return [t async for r in llm_pb2_grpc.SpeechTokenGeneratorStub(channel).Generate(request) for t in r.tokens]


@pytest.mark.slow
async def test_tokens_arrive_before_the_last_piece_and_equal_the_in_process_engine(llm, tiny_model_dir):
    async with grpc.aio.insecure_channel(llm.host.address) as channel:
        call = llm_pb2_grpc.SpeechTokenGeneratorStub(channel).GenerateBistream()
        await call.write(_start())
        await call.write(_text(PIECES[0]))
        first = await call.read()  # answered before any further text was sent
        assert first.tokens and first.finish_reason == common_pb2.FINISH_REASON_UNSPECIFIED
        assert first.num_text_tokens == 0 and first.elapsed_seconds > 0
        for piece in PIECES[1:]:
            await call.write(_text(piece))
        await call.done_writing()
        rest = await _read_all(call)
    assert rest[-1].finish_reason in DONE
    tokens = list(first.tokens) + [t for r in rest for t in r.tokens]
    model_dir = ModelDir.open(tiny_model_dir)
    tokenizer = CosyVoiceTokenizer.from_dir(model_dir.tokenizer_dir)
    engine = LLMEngine.from_model_dir(model_dir, config=EngineConfig(max_num_seqs=1, max_model_len=4096))
    params = dataclasses.replace(engine.default_params, seed=3)
    expected = list(engine.generate_bistream([tokenizer.encode(p) for p in PIECES], params=params))
    assert tokens == expected


@pytest.mark.slow
async def test_bistream_and_generate_batched_together_keep_their_tokens(llm):
    address = llm.host.address
    alone = [await _bistream(address, seed=3), await _generate(address, "A normal request.", 5)]
    together = await asyncio.gather(_bistream(address, seed=3), _generate(address, "A normal request.", 5),
                                    _bistream(address, PIECES[::-1], seed=4))
    assert list(together[:2]) == alone
    assert together[2] == await _bistream(address, PIECES[::-1], seed=4)


async def test_cancel_while_waiting_for_text_frees_the_slot(llm):
    engine = llm.servicer.engine

    def waiting_for_text() -> bool:
        running = list(engine.engine.scheduler.running)
        return any(s.bistream is not None and s.bistream.state is FeedState.WAITING_TEXT for s in running)

    async with grpc.aio.insecure_channel(llm.host.address) as channel:
        call = llm_pb2_grpc.SpeechTokenGeneratorStub(channel).GenerateBistream()
        await call.write(_start())
        await call.write(_text(PIECES[0]))
        assert (await call.read()).tokens
        await eventually(waiting_for_text, what="the LLM pausing for more text")
        assert engine.num_active_requests == 1
        call.cancel()
    await eventually(lambda: engine.num_active_requests == 0, what="the LLM dropping the request")
    await eventually(lambda: not engine.engine.has_unfinished(), what="the KV slot being freed")
    assert engine.engine.runner.num_free_slots == engine.engine.config.max_num_seqs


# The last message is the offending one: writing after the server rejected a stream races
# with its status on the client side (grpc then reports INTERNAL). HALF_CLOSE is the end.
HALF_CLOSE = None


@pytest.mark.parametrize(
    ("messages", "limits", "field"),
    [
        ([HALF_CLOSE], {}, "start"),
        ([_text("hello")], {}, "start"),
        ([_start(), _text("hello there"), _start()], {}, "start"),
        ([_start(), _text("x" * 11)], {"max_text_chars": 10}, "text: a piece of 11 characters"),
        ([_start(), _text("hello"), _text("world, this"), _text("is long")], {"max_bistream_text_chars": 20},
         "max_bistream_text_chars"),
        ([_start(), _text(""), _text(""), HALF_CLOSE], {}, "text: the stream ended without any text"),
        ([_start(prompt_text="p" * 11)], {"max_text_chars": 10}, "prompt_text"),
        ([_start(prompt_text="hi", prompt_speech_tokens=[1] * 1501)], {}, "prompt_speech_tokens"),
        ([_start(prompt_text="hi", prompt_speech_tokens=[7000])], {}, "prompt_speech_tokens"),
        ([llm_pb2.GenerateBistreamRequest(start=llm_pb2.BistreamStart(sampling=llm_pb2.SamplingParams(top_k=0)))],
         {}, "top_k"),
    ],
)
async def test_bad_streams_get_invalid_argument_naming_the_field(llm, messages, limits, field):
    for name, value in limits.items():
        setattr(llm.servicer, name, value)
    async with grpc.aio.insecure_channel(llm.host.address) as channel:
        call = llm_pb2_grpc.SpeechTokenGeneratorStub(channel).GenerateBistream()
        for message in messages:
            await (call.done_writing() if message is HALF_CLOSE else call.write(message))
        code, details = await call.code(), await call.details()
    assert code == grpc.StatusCode.INVALID_ARGUMENT, details
    assert field in details
    await eventually(lambda: llm.servicer.engine.num_active_requests == 0, what="the request being dropped")
