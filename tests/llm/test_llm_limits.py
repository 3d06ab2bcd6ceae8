"""Every field of a direct LLM call is checked at the stage's door, on a real LLM server on
port 0: INVALID_ARGUMENT naming the field and the allowed range. The gateway never sends these
values; a caller of the stage's own port can. GetLimits answers the stage's settings."""

from __future__ import annotations

import math

import grpc
import pytest

from services.common.metrics import make_registry
from services.common.pb import llm_pb2, llm_pb2_grpc
from services.llm.config import LLMServiceConfig
from services.llm.server import create_app
from tests.stack import stage_app


@pytest.fixture
async def llm(tiny_model_dir):
    config = LLMServiceConfig(model_dir=tiny_model_dir, metrics_port=-1, max_model_len=256)
    async with stage_app(create_app(config, make_registry())) as app:
        yield app


SAMPLING_CASES = [
    ("top_p", 0.0, "sampling.top_p: 0 is outside (0, 1]"),
    ("top_p", 1.5, "sampling.top_p: 1.5 is outside (0, 1]"),
    ("top_p", math.nan, "sampling.top_p: nan is outside (0, 1]"),
    ("top_k", 0, "sampling.top_k: 0 is outside [1, 1000]"),
    ("top_k", 1001, "sampling.top_k: 1001 is outside [1, 1000]"),
    ("win_size", 0, "sampling.win_size: 0 is outside [1, 1000]"),
    ("win_size", 100000, "sampling.win_size: 100000 is outside [1, 1000]"),
    ("tau_r", 0.0, "sampling.tau_r: 0 is outside (0, 1]"),
    ("tau_r", 2.0, "sampling.tau_r: 2 is outside (0, 1]"),
    ("min_token_text_ratio", -1.0, "sampling.min_token_text_ratio: -1 is outside [0, 100]"),
    ("min_token_text_ratio", 101.0, "sampling.min_token_text_ratio: 101 is outside [0, 100]"),
    ("max_token_text_ratio", 0.0, "sampling.max_token_text_ratio: 0 is outside (0, 100]"),
    ("max_token_text_ratio", 1e30, "sampling.max_token_text_ratio: 1e+30 is outside (0, 100]"),
    ("max_token_text_ratio", math.inf, "sampling.max_token_text_ratio: inf is outside (0, 100]"),
]


async def _generate_error(address: str, request: llm_pb2.GenerateRequest) -> grpc.aio.AioRpcError:
    async with grpc.aio.insecure_channel(address) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            async for _ in llm_pb2_grpc.SpeechTokenGeneratorStub(channel).Generate(request):
                pass
    return info.value


@pytest.mark.parametrize(("name", "value", "details"), SAMPLING_CASES)
async def test_each_sampling_override_out_of_range_is_refused_naming_it(llm, name, value, details):
    request = llm_pb2.GenerateRequest(text="hello", sampling=llm_pb2.SamplingParams(**{name: value}))
    error = await _generate_error(llm.host.address, request)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == details


@pytest.mark.parametrize(
    ("request_fields", "details"),
    [
        ({"request_id": "r" * 129}, "request_id: 129 characters exceed the limit of 128"),
        ({"text": "x" * 4001}, "text: longer than 4000 characters"),
        ({"prompt_text": "x" * 4001}, "prompt_text: longer than 4000 characters"),
        ({"prompt_text": "hi", "prompt_speech_tokens": [1] * 1501},
         "prompt_speech_tokens: 1501 tokens exceed the limit of 1500"),
        ({"prompt_text": "hi", "prompt_speech_tokens": [7000]}, "prompt_speech_tokens [7000] are outside"),
        ({"prompt_text": "hi", "prompt_speech_tokens": [-1]}, "prompt_speech_tokens [-1] are outside"),
    ],
)
async def test_each_other_field_out_of_range_is_refused_naming_it(llm, request_fields, details):
    request = llm_pb2.GenerateRequest(**{"text": "hello", **request_fields})
    error = await _generate_error(llm.host.address, request)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details().startswith(details)


async def test_a_text_over_the_position_budget_names_text(llm):
    # 100 emoji are 400 tokens with the tiny tokenizer: over max_model_len 256 with SOS and TASK_ID.
    error = await _generate_error(llm.host.address, llm_pb2.GenerateRequest(text="\N{GRINNING FACE}" * 100))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == (
        "text: the prompt needs 402 positions (text, prompt text and prompt speech tokens), more than max_model_len 256"
    )


async def test_a_bistream_start_is_checked_the_same_way(llm):
    start = llm_pb2.BistreamStart(request_id="r" * 129)
    bad_sampling = llm_pb2.BistreamStart(sampling=llm_pb2.SamplingParams(max_token_text_ratio=1e30))
    async with grpc.aio.insecure_channel(llm.host.address) as channel:
        stub = llm_pb2_grpc.SpeechTokenGeneratorStub(channel)
        for message, details in ((start, "start.request_id: 129 characters exceed the limit of 128"),
                                 (bad_sampling, "start.sampling.max_token_text_ratio: 1e+30 is outside (0, 100]")):
            call = stub.GenerateBistream()
            await call.write(llm_pb2.GenerateBistreamRequest(start=message))
            assert await call.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert await call.details() == details


async def test_values_at_the_edges_of_every_range_are_served(llm):
    sampling = llm_pb2.SamplingParams(seed=2**64 - 1, top_p=1.0, top_k=1000, win_size=1000, tau_r=1.0,
                                      min_token_text_ratio=0.0, max_token_text_ratio=1.0)
    request = llm_pb2.GenerateRequest(request_id="r" * 128, text="hello", sampling=sampling)
    async with grpc.aio.insecure_channel(llm.host.address) as channel:
        responses = [r async for r in llm_pb2_grpc.SpeechTokenGeneratorStub(channel).Generate(request)]
    assert responses[-1].finish_reason


async def test_get_limits_answers_the_stage_settings(llm):
    async with grpc.aio.insecure_channel(llm.host.address) as channel:
        limits = await llm_pb2_grpc.SpeechTokenGeneratorStub(channel).GetLimits(llm_pb2.GetLimitsRequest())
    assert (limits.max_model_len, limits.max_text_chars, limits.max_prompt_speech_tokens,
            limits.max_bistream_text_chars) == (256, 4000, 1500, 16000)
