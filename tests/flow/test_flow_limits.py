"""The flow stage's limits over real gRPC (a flow server alone, on port 0): open sessions are
capped (RESOURCE_EXHAUSTED naming max_sessions) and every request field is checked at the
door (INVALID_ARGUMENT naming the field)."""

from __future__ import annotations

import asyncio

import grpc
import numpy as np
import pytest

from services.common.metrics import make_registry
from services.common.pb import flow_pb2, flow_pb2_grpc
from services.common.tensors import to_proto
from services.flow.config import FlowServiceConfig
from services.flow.server import create_app
from tests.stack import stage_app
from tests.waiting import eventually


@pytest.fixture
async def flow_one_session(tiny_model_dir):
    config = FlowServiceConfig(model_dir=tiny_model_dir, metrics_port=-1, max_sessions=1)
    async with stage_app(create_app(config, make_registry())) as app:
        yield app


def _chunk(tokens, finalize=False):
    return flow_pb2.DecodeRequest(chunk=flow_pb2.TokenChunk(tokens=tokens, finalize=finalize))


async def test_a_session_beyond_max_sessions_is_refused_and_the_next_one_after_a_close_is_served(flow_one_session):
    app = flow_one_session
    assert app.host.registry.get_sample_value("cosyvoice_flow_max_sessions") == 1
    held: asyncio.Queue = asyncio.Queue()

    async def holding():
        yield flow_pb2.DecodeRequest(start=flow_pb2.DecodeStart())
        while (item := await held.get()) is not None:
            yield item

    async def one_stream():
        yield flow_pb2.DecodeRequest(start=flow_pb2.DecodeStart())
        yield _chunk(list(range(10)), finalize=True)

    async def start_only():
        # Nothing written after the start: the aio client would report a failed later write
        # as INTERNAL instead of the server's status.
        yield flow_pb2.DecodeRequest(start=flow_pb2.DecodeStart())
        await asyncio.Event().wait()

    async with grpc.aio.insecure_channel(app.host.address) as channel:
        stub = flow_pb2_grpc.FlowDecoderStub(channel)
        first = stub.Decode(holding())
        await held.put(_chunk(list(range(28))))
        await first.read()  # the first session is open now
        with pytest.raises(grpc.aio.AioRpcError) as info:
            async for _ in stub.Decode(start_only()):
                pass
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert info.value.details() == "flow: 1 sessions are open (max_sessions); retry later"
        await held.put(_chunk([], finalize=True))
        await held.put(None)
        assert (await first.read()).is_final
        await eventually(lambda: app.servicer.runner.num_sessions == 0, what="the first session closing")
        responses = [r async for r in stub.Decode(one_stream())]
        assert responses[-1].is_final


def test_max_sessions_must_be_positive(tiny_model_dir):
    from services.common.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="--max-sessions / COSYVOICE_FLOW_MAX_SESSIONS must be >= 1"):
        load_config(FlowServiceConfig, ["--model-dir", str(tiny_model_dir), "--max-sessions", "0"])


@pytest.fixture
async def flow(tiny_model_dir):
    config = FlowServiceConfig(model_dir=tiny_model_dir, metrics_port=-1)
    async with stage_app(create_app(config, make_registry())) as app:
        yield app


def _prompt(tokens, mel_frames=None, embedding=None, mel_value=0.0):
    tokens = np.asarray(tokens, np.int32)
    frames = 2 * tokens.size if mel_frames is None else mel_frames
    return flow_pb2.DecodeStart(prompt={
        "prompt_tokens": to_proto(tokens),
        "prompt_mel": to_proto(np.full((frames, 80), mel_value, np.float32)),
        "speaker_embedding": to_proto(np.ones(192, np.float32) if embedding is None else embedding),
    })


MAX_FRAMES = 15000  # the tiny flow's fixed noise: 300 s at 50 frames per second
FIELD_CASES = [
    (flow_pb2.DecodeStart(request_id="r" * 129), [], "start.request_id: 129 characters exceed the limit of 128"),
    (flow_pb2.DecodeStart(speaker_id="s" * 129), [], "start.speaker_id: 129 characters exceed the limit of 128"),
    (_prompt([6561]), [], "prompt.prompt_tokens: must be a vector of ids in [0, 6561)"),
    (_prompt([-1]), [], "prompt.prompt_tokens: must be a vector of ids in [0, 6561)"),
    (_prompt(np.zeros(7501), mel_frames=2), [],
     f"prompt.prompt_tokens: 7501 tokens make 15002 mel frames, over the flow's limit of {MAX_FRAMES}"),
    (_prompt([1, 2], mel_frames=3), [], "prompt.prompt_mel: shape [3, 80], expected [4, 80]"),
    (_prompt([1, 2], embedding=np.ones(191, np.float32)), [], "prompt: speaker_embedding must be [192]"),
    (_prompt([1, 2], mel_value=np.inf), [], "prompt: speaker_embedding must be [192] and all values finite"),
    (flow_pb2.DecodeStart(), [_chunk([6561])], "chunk.tokens: ids must be in [0, 6561)"),
    (flow_pb2.DecodeStart(), [_chunk([-1])], "chunk.tokens: ids must be in [0, 6561)"),
    (flow_pb2.DecodeStart(), [_chunk([1] * 7501)],
     f"chunk.tokens: prompt + 7501 tokens make 15002 mel frames, over the flow's limit of {MAX_FRAMES}"),
]


@pytest.mark.parametrize(("start", "chunks", "details"), FIELD_CASES)
async def test_each_field_out_of_range_is_refused_naming_it(flow, start, chunks, details):
    async def requests():
        yield flow_pb2.DecodeRequest(start=start)
        for chunk in chunks:
            yield chunk
        await asyncio.Event().wait()  # no write after the refusal (see start_only above)

    async with grpc.aio.insecure_channel(flow.host.address) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            async for _ in flow_pb2_grpc.FlowDecoderStub(channel).Decode(requests()):
                pass
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details().startswith(details)
    await eventually(lambda: flow.servicer.runner.num_sessions == 0, what="no session left open")
