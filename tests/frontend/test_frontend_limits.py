"""The frontend stage's fields checked at its door, on a real frontend server on port 0:
INVALID_ARGUMENT naming the field and the limit. CountTokens counts as the LLM does."""

from __future__ import annotations

import grpc
import pytest

from services.common.metrics import make_registry
from services.common.modeldir.layout import ModelDir
from services.common.modeldir.tokenizer import CosyVoiceTokenizer
from services.common.pb import frontend_pb2, frontend_pb2_grpc
from services.frontend.config import FrontendServiceConfig
from services.frontend.server import create_app
from tests.stack import stage_app


@pytest.fixture
async def frontend(tiny_model_dir):
    config = FrontendServiceConfig(model_dir=tiny_model_dir, metrics_port=-1)
    async with stage_app(create_app(config, make_registry())) as app:
        yield app


CASES = [
    ("EncodePrompt", frontend_pb2.EncodePromptRequest(request_id="r" * 129, audio=b"x"),
     "request_id: 129 characters exceed the limit of 128"),
    ("EncodePrompt", frontend_pb2.EncodePromptRequest(field="f" * 129, audio=b"x"),
     "field: 129 characters exceed the limit of 128"),
    ("EncodePrompt", frontend_pb2.EncodePromptRequest(audio=b"x", pcm16_sample_rate=384_001),
     "pcm16_sample_rate: 384001 is not a sample rate"),
    ("EncodePrompt", frontend_pb2.EncodePromptRequest(audio=b"x", pcm16_sample_rate=-1),
     "pcm16_sample_rate: -1 is not a sample rate"),
    ("EncodePrompt", frontend_pb2.EncodePromptRequest(audio=b"x" * (32 * 1024 * 1024 + 1), field="prompt.audio"),
     "prompt.audio: 33554433 bytes exceed the limit of 33554432"),
    ("SplitText", frontend_pb2.SplitTextRequest(text="x" * 20001),
     "text: 20001 characters exceed the limit of 20000"),
    ("CountTokens", frontend_pb2.CountTokensRequest(texts=["x" * 10000, "y" * 10001]),
     "texts: 20001 characters in all exceed the limit of 20000"),
    ("WriteSpeakerTable", frontend_pb2.WriteSpeakerTableRequest(schema=7), "schema: unknown value 7"),
    ("ReadSpeakerTable", frontend_pb2.ReadSpeakerTableRequest(), "spk2info: the file is empty"),
]


@pytest.mark.parametrize(("method", "request_message", "details"), CASES)
async def test_each_field_out_of_range_is_refused_naming_it(frontend, method, request_message, details):
    async with grpc.aio.insecure_channel(frontend.host.address) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await getattr(frontend_pb2_grpc.FrontendStub(channel), method)(request_message)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details() == details


async def test_count_tokens_counts_each_text_as_the_llm_tokenizes_it(frontend, tiny_model_dir):
    tokenizer = CosyVoiceTokenizer.from_dir(ModelDir.open(tiny_model_dir).tokenizer_dir)
    texts = ["", "Hello there.", "\N{GRINNING FACE}" * 3, "你好，世界"]
    async with grpc.aio.insecure_channel(frontend.host.address) as channel:
        request = frontend_pb2.CountTokensRequest(texts=texts)
        response = await frontend_pb2_grpc.FrontendStub(channel).CountTokens(request)
    assert list(response.counts) == [len(tokenizer.encode(t)) for t in texts]
    assert response.counts[2] == 12
