"""The SpeechTokenGenerator service over real gRPC, in-process on port 0."""

import asyncio

import grpc
import pytest

from services.common.pb import common_pb2, llm_pb2, llm_pb2_grpc
from services.pipeline.library import CosyVoicePipeline
from tests.stack import running_stack
from tests.waiting import eventually

TEXT = "Hello world, this is a test."


@pytest.fixture
async def llm(tiny_model_dir):
    async with running_stack(tiny_model_dir, with_gateway=False) as stack:
        yield stack.llm


async def _collect(address, request):
    async with grpc.aio.insecure_channel(address) as channel:
        return [r async for r in llm_pb2_grpc.SpeechTokenGeneratorStub(channel).Generate(request)]


def _request(text=TEXT, seed=7, **sampling):
    return llm_pb2.GenerateRequest(text=text, sampling=llm_pb2.SamplingParams(seed=seed, **sampling))


async def test_tokens_stream_per_step_and_equal_the_library(llm, tiny_model_dir):
    responses = await _collect(llm.host.address, _request())
    tokens = [t for r in responses for t in r.tokens]
    # Incremental: each message carries what was sampled since the last one (one token per
    # step while the reader keeps up, a few when it lags), never the whole utterance at once.
    assert len(responses) > 1 and len(tokens) > 1
    assert all(r.tokens for r in responses[:-1])
    assert responses[0].num_text_tokens > 0
    assert all(r.finish_reason == common_pb2.FINISH_REASON_UNSPECIFIED for r in responses[:-1])
    assert responses[-1].finish_reason in (common_pb2.FINISH_REASON_STOP, common_pb2.FINISH_REASON_LENGTH)
    assert all(later.elapsed_seconds >= earlier.elapsed_seconds for earlier, later in zip(responses, responses[1:]))
    library = CosyVoicePipeline.from_model_dir(tiny_model_dir)
    assert tokens == list(library.speech_tokens(TEXT, seed=7))


async def test_concurrent_requests_share_decode_steps_and_keep_their_tokens(llm):
    texts = [TEXT, "A second, longer sentence to speak.", "Three.", "Number four is here."]
    alone = [await _collect(llm.host.address, _request(t, seed=i)) for i, t in enumerate(texts)]
    together = await asyncio.gather(*(_collect(llm.host.address, _request(t, seed=i)) for i, t in enumerate(texts)))
    for a, b in zip(alone, together):
        assert [t for r in a for t in r.tokens] == [t for r in b for t in r.tokens]
    registry = llm.host.registry
    steps = registry.get_sample_value("cosyvoice_llm_step_batch_size_count")
    tokens = registry.get_sample_value("cosyvoice_llm_step_batch_size_sum")
    assert tokens > steps  # some decode steps advanced several sequences at once


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (llm_pb2.GenerateRequest(text="   "), "text"),
        (_request(top_p=2.0), "top_p"),
        (_request(top_k=0), "top_k"),
        (llm_pb2.GenerateRequest(text=TEXT, prompt_text="hi", prompt_speech_tokens=[7000]), "prompt_speech_tokens"),
        (llm_pb2.GenerateRequest(text=TEXT, prompt_speech_tokens=[1, 2]), "zero_shot"),
        (_request(max_token_text_ratio=float("inf")), "max_token_text_ratio"),
        (llm_pb2.GenerateRequest(text=TEXT, prompt_text="hi", prompt_speech_tokens=[1] * 1501), "exceed the limit"),
    ],
)
async def test_bad_requests_get_invalid_argument_naming_the_field(llm, request_, field):
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await _collect(llm.host.address, request_)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in info.value.details()


async def test_cancel_mid_stream_frees_the_sequence(llm):
    engine = llm.servicer.engine
    async with grpc.aio.insecure_channel(llm.host.address) as channel:
        call = llm_pb2_grpc.SpeechTokenGeneratorStub(channel).Generate(_request(max_token_text_ratio=20))
        await call.read()
        await call.read()
        assert engine.num_active_requests == 1
        call.cancel()
    await eventually(lambda: engine.num_active_requests == 0, what="the LLM dropping the request")
    await eventually(lambda: not engine.engine.has_unfinished(), what="the KV slot being freed")
    assert engine.engine.runner.num_free_slots == engine.engine.config.max_num_seqs


async def test_a_failing_engine_step_ends_streams_with_internal_and_the_engine_recovers(llm):
    engine = llm.servicer.engine.engine
    real_step, failures = engine.step, []

    def broken_step():
        if not failures:
            failures.append(True)
            raise RuntimeError("simulated device error")
        return real_step()

    engine.step = broken_step
    try:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await _collect(llm.host.address, _request())
        assert info.value.code() == grpc.StatusCode.INTERNAL
        assert "LLM engine failed" in info.value.details()
        assert not engine.scheduler.has_unfinished()
        assert engine.runner.num_free_slots == engine.config.max_num_seqs
        responses = await _collect(llm.host.address, _request())  # the next request is served
        assert responses[-1].finish_reason in (common_pb2.FINISH_REASON_STOP, common_pb2.FINISH_REASON_LENGTH)
    finally:
        engine.step = real_step
