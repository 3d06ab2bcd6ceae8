"""Start the stages and the gateway in-process on port 0 (real gRPC over loopback).

Metrics are served on free ports too (metrics_port=0), never the services' fixed defaults:
tests run side by side and must not collide on 9400-9404."""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass
from pathlib import Path
from typing import AsyncIterator

from gateway.config import GatewayConfig
from gateway.server import build_gateway
from services.common.metrics import make_registry
from services.common.server import ServiceHost
from services.common.stage_app import StageApp
from services.flow.config import FlowServiceConfig
from services.flow.server import create_app as create_flow
from services.frontend.config import FrontendServiceConfig
from services.frontend.server import create_app as create_frontend
from services.llm.config import LLMServiceConfig
from services.llm.server import create_app as create_llm
from services.vocoder.config import VocoderServiceConfig
from services.vocoder.server import create_app as create_vocoder


@dataclass
class Stack:
    llm: StageApp
    flow: StageApp
    vocoder: StageApp
    frontend: StageApp
    gateway: ServiceHost | None

    @property
    def address(self) -> str:
        assert self.gateway is not None
        return self.gateway.address


@contextlib.asynccontextmanager
async def stage_app(app: StageApp) -> AsyncIterator[StageApp]:
    await app.start()
    try:
        yield app
    finally:
        await app.stop()


@contextlib.asynccontextmanager
async def running_stack(
    model_dir: Path, with_gateway: bool = True, stage_settings: dict[str, object] | None = None,
    per_stage: dict[str, dict[str, object]] | None = None, **gateway_settings: object,
) -> AsyncIterator[Stack]:
    """`stage_settings` go to all four stages' configs (e.g. TLS), `per_stage` to one stage's
    (e.g. {"llm": {"max_model_len": 128}}), `gateway_settings` to the gateway's."""
    common = {"model_dir": model_dir, "metrics_port": 0, **(stage_settings or {})}
    per_stage = per_stage or {}
    async with contextlib.AsyncExitStack() as stack:
        llm = await stack.enter_async_context(
            stage_app(create_llm(LLMServiceConfig(**common, **per_stage.get("llm", {})), make_registry()))
        )
        flow = await stack.enter_async_context(
            stage_app(create_flow(FlowServiceConfig(**common, **per_stage.get("flow", {})), make_registry()))
        )
        vocoder = await stack.enter_async_context(
            stage_app(create_vocoder(VocoderServiceConfig(**common, **per_stage.get("vocoder", {})), make_registry()))
        )
        frontend = await stack.enter_async_context(
            stage_app(create_frontend(FrontendServiceConfig(**common, **per_stage.get("frontend", {})), make_registry()))
        )
        gateway = None
        if with_gateway:
            settings = {"speaker_db": ":memory:", "metrics_port": 0, **gateway_settings}
            config = GatewayConfig(
                llm_addr=llm.host.address, flow_addr=flow.host.address, vocoder_addr=vocoder.host.address,
                frontend_addr=frontend.host.address, **settings,
            )
            built = build_gateway(config, make_registry())
            gateway = built.host
            await gateway.start()
            await gateway.warm_up(functools.partial(built.load, config))
            stack.push_async_callback(built.close)
            stack.push_async_callback(gateway.stop, 0)
        yield Stack(llm, flow, vocoder, frontend, gateway)
