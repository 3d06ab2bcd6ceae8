"""Stage replicas behind one gateway: requests are spread round robin over every replica, each
request's stream stays on one replica, and a replica that goes away stops receiving calls.

Two flow and two vocoder replicas run in-process on their own ports; the gateway is given each
stage as a list of addresses, the same channel target a `dns:///NAME:PORT` name resolves to."""

from __future__ import annotations

import contextlib
import functools

import grpc
import pytest

from gateway.config import GatewayConfig
from gateway.server import build_gateway
from services.common.config import ConfigError
from services.common.metrics import make_registry
from services.common.pb import tts_pb2, tts_pb2_grpc
from services.flow.config import FlowServiceConfig
from services.flow.server import create_app as create_flow
from services.frontend.config import FrontendServiceConfig
from services.frontend.server import create_app as create_frontend
from services.llm.config import LLMServiceConfig
from services.llm.server import create_app as create_llm
from services.vocoder.config import VocoderServiceConfig
from services.vocoder.server import create_app as create_vocoder
from tests.stack import stage_app

pytestmark = pytest.mark.slow
NO_METRICS_PORT = {"metrics_port": -1}  # registries are read in-process; never bind the fixed ports


def _handled(app, method: str, code: str = "OK") -> float:
    """Calls of `method` this replica finished with `code`, from its own registry."""
    value = app.host.registry.get_sample_value(
        "cosyvoice_grpc_server_handled_total", {"grpc_service": app.host.bindings[0].full_name,
                                                "grpc_method": method, "grpc_code": code},
    )
    return value or 0.0


async def _synthesize(address: str) -> grpc.StatusCode:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = tts_pb2_grpc.TextToSpeechStub(channel)
        try:
            async for _ in stub.Synthesize(tts_pb2.SynthesizeRequest(text="Hello there.", stream=True)):
                pass
        except grpc.aio.AioRpcError as error:
            return error.code()
    return grpc.StatusCode.OK


@contextlib.asynccontextmanager
async def replicated_stack(model_dir):
    async with contextlib.AsyncExitStack() as stack:
        async def start(create, config_type):
            return await stack.enter_async_context(
                stage_app(create(config_type(model_dir=model_dir, **NO_METRICS_PORT), make_registry()))
            )

        llm = await start(create_llm, LLMServiceConfig)
        frontend = await start(create_frontend, FrontendServiceConfig)
        flows = [await start(create_flow, FlowServiceConfig) for _ in range(2)]
        vocoders = [await start(create_vocoder, VocoderServiceConfig) for _ in range(2)]
        config = GatewayConfig(
            llm_addr=llm.host.address, frontend_addr=frontend.host.address,
            flow_addr=",".join(app.host.address for app in flows),
            vocoder_addr=",".join(app.host.address for app in vocoders),
            speaker_db=":memory:", **NO_METRICS_PORT,
        )
        gateway = build_gateway(config, make_registry())
        await gateway.host.start()
        await gateway.host.warm_up(functools.partial(gateway.load, config))
        stack.push_async_callback(gateway.close)
        stack.push_async_callback(gateway.host.stop, 0)
        yield gateway.host.address, flows, vocoders


async def test_requests_spread_over_every_replica_and_each_stream_stays_on_one(tiny_model_dir):
    async with replicated_stack(tiny_model_dir) as (address, flows, vocoders):
        requests = 0
        # Round robin reaches a replica once its connection and health check are up; a bound,
        # not a timing: with both up, two requests already reach both.
        while requests < 12 and not all(_handled(app, m) for app, m in
                                        [(flows[0], "Decode"), (flows[1], "Decode"),
                                         (vocoders[0], "Vocode"), (vocoders[1], "Vocode")]):
            assert await _synthesize(address) == grpc.StatusCode.OK
            requests += 1
        assert all(_handled(app, "Decode") for app in flows), "a flow replica never got a request"
        assert all(_handled(app, "Vocode") for app in vocoders), "a vocoder replica never got a request"
        # One Decode and one Vocode stream per request, each on a single replica: no request was
        # split over replicas or retried on another.
        assert sum(_handled(app, "Decode") for app in flows) == requests
        assert sum(_handled(app, "Vocode") for app in vocoders) == requests


async def test_a_replica_that_goes_away_gets_no_more_calls(tiny_model_dir):
    async with replicated_stack(tiny_model_dir) as (address, flows, _):
        await flows[0].stop(grace=0)
        # Calls already routed to the stopped replica may fail until the channel has seen its
        # connection close; two successes in a row mean round robin no longer picks it.
        outcomes: list[grpc.StatusCode] = []
        while outcomes[-2:] != [grpc.StatusCode.OK] * 2:
            assert len(outcomes) < 10, outcomes
            outcomes.append(await _synthesize(address))
        assert set(outcomes) <= {grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE}, outcomes
        before = _handled(flows[1], "Decode")
        for _ in range(4):
            assert await _synthesize(address) == grpc.StatusCode.OK
        assert _handled(flows[1], "Decode") == before + 4


@pytest.mark.parametrize(
    ("address", "message"),
    [
        ("llm-a:50052,llm-b:50052",
         "lists replicas by IP:PORT only; for a name that resolves to every replica, use dns:///NAME:PORT"),
        ("llm", "is required, as host:port"),
    ],
)
def test_a_replica_list_of_names_is_refused_naming_the_setting(address, message):
    with pytest.raises(ConfigError) as caught:
        GatewayConfig(llm_addr=address, flow_addr="f:1", vocoder_addr="v:1", frontend_addr="x:1").validate()
    assert str(caught.value) == f"--llm-addr / COSYVOICE_GATEWAY_LLM_ADDR {message} (got {address!r})"
