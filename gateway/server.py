"""Composition root of the gateway process: config → clients → pipeline → servicer → server."""

from __future__ import annotations

import asyncio
import functools
import logging
from typing import Sequence

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gateway.clients import StageClients
from gateway.config import GatewayConfig
from gateway.metrics import GatewayMetrics
from gateway.pipeline import StagePipeline
from gateway.servicer import TextToSpeechServicer
from services.common.config import load_config
from services.common.logging_setup import configure_logging
from services.common.metrics import make_registry
from services.common.pb import tts_pb2, tts_pb2_grpc
from services.common.server import ServiceBinding, ServiceHost, run_until_signal

logger = logging.getLogger(__name__)
SERVICE_NAME = tts_pb2.DESCRIPTOR.services_by_name["TextToSpeech"].full_name


def build_host(config: GatewayConfig, registry=None) -> tuple[ServiceHost, StageClients]:
    registry = registry if registry is not None else make_registry()
    clients = StageClients.connect(config.llm_addr, config.flow_addr, config.vocoder_addr)
    pipeline = StagePipeline(clients, config.chunk_policy, config.stage_queue_chunks, config.upstream_timeout_seconds)
    servicer = TextToSpeechServicer(
        pipeline, GatewayMetrics(registry), config.max_text_chars, config.max_concurrent_requests
    )
    binding = ServiceBinding(SERVICE_NAME, servicer, tts_pb2_grpc.add_TextToSpeechServicer_to_server)
    return ServiceHost(config, [binding], registry), clients


async def wait_for_stages(config: GatewayConfig, poll_seconds: float = 0.5) -> None:
    """The gateway is ready when every stage reports SERVING (Health.Watch, no polling loop)."""

    async def watch(name: str, address: str) -> None:
        announced = False
        while True:
            try:
                async with grpc.aio.insecure_channel(address) as channel:
                    stream = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=""))
                    async for reply in stream:
                        if reply.status == health_pb2.HealthCheckResponse.SERVING:
                            logger.info("%s stage at %s is SERVING", name, address)
                            return
            except grpc.aio.AioRpcError as error:
                if not announced:
                    logger.info("waiting for the %s stage at %s (%s)", name, address, error.code().name)
                    announced = True
            await asyncio.sleep(poll_seconds)  # reconnect back-off after the stage refused us

    await asyncio.gather(
        watch("llm", config.llm_addr), watch("flow", config.flow_addr), watch("vocoder", config.vocoder_addr)
    )


def main(argv: Sequence[str] | None = None) -> None:
    config = load_config(GatewayConfig, argv)
    configure_logging(config.log_level, config.log_json, process="gateway")

    async def run() -> None:
        host, clients = build_host(config)
        await run_until_signal(
            host,
            load=functools.partial(wait_for_stages, config),
            on_stop=clients.close,
            name="gateway",
        )

    asyncio.run(run())
