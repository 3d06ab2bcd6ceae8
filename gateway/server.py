"""Composition root of the gateway process: config → clients, store → pipeline, voices →
servicers (TextToSpeech, Speakers, the official CosyVoice) → server."""

from __future__ import annotations

import asyncio
import functools
import logging
from dataclasses import dataclass
from typing import Sequence

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gateway.auth import ApiKeyInterceptor
from gateway.clients import StageClients, balanced_channel
from gateway.config import GatewayConfig
from gateway.frontend_calls import FrontendClient
from gateway.metrics import GatewayMetrics
from gateway.official import OfficialCosyVoiceServicer
from gateway.pipeline import StagePipeline
from gateway.registry.servicer import SpeakersServicer
from gateway.registry.store import SpeakerStoreError, open_speaker_store
from gateway.servicer import TextToSpeechServicer
from gateway.stage_health import StageHealthMonitor
from gateway.synthesis import Synthesizer
from gateway.voices import VoiceBook
from services.common.config import ConfigError, load_config
from services.common.logging_setup import configure_logging
from services.common.metrics import make_registry
from services.common.pb import cosyvoice_pb2, cosyvoice_pb2_grpc, speakers_pb2, speakers_pb2_grpc, tts_pb2, tts_pb2_grpc
from services.common.server import ServiceBinding, ServiceHost, run_until_signal
from services.common.tls import ClientTls

logger = logging.getLogger(__name__)
SERVICE_NAME = tts_pb2.DESCRIPTOR.services_by_name["TextToSpeech"].full_name
SPEAKERS_SERVICE_NAME = speakers_pb2.DESCRIPTOR.services_by_name["Speakers"].full_name
OFFICIAL_SERVICE_NAME = cosyvoice_pb2.DESCRIPTOR.services_by_name["CosyVoice"].full_name
STAGES = ("llm", "flow", "vocoder", "frontend")


@dataclass
class Gateway:
    host: ServiceHost
    clients: StageClients
    voices: VoiceBook
    monitor: StageHealthMonitor | None = None

    async def load(self, config: GatewayConfig) -> None:
        """Ready once every stage is SERVING and the model's preset speakers are known; from
        then on the gateway's health follows its stages (gateway/stage_health.py)."""
        await wait_for_stages(config, tls=self.clients.tls)
        # The stub channels themselves: READY means a replica is connected and SERVING.
        await asyncio.gather(*(channel.channel_ready() for channel in self.clients.channels))
        await self.voices.load_presets()
        logger.info("%d preset speakers; registered speakers in %s", len(self.voices.presets), config.speaker_db)
        self.monitor = StageHealthMonitor(self.clients.by_stage, self.host.set_dependencies_ok)
        self.monitor.start()

    async def close(self) -> None:
        if self.monitor is not None:
            await self.monitor.stop()
        await self.clients.close()
        self.voices.close()
        self.voices.store.close()


def build_gateway(config: GatewayConfig, registry=None) -> Gateway:  # noqa: ANN001
    registry = registry if registry is not None else make_registry()
    api_keys, stage_tls = config.api_keys(), config.stage_tls()  # files read once; ConfigError if bad
    try:
        store = open_speaker_store(config.speaker_db)
    except SpeakerStoreError as exc:
        raise ConfigError(f"--speaker-db / COSYVOICE_GATEWAY_SPEAKER_DB: {exc}") from None
    clients = StageClients.connect(
        config.llm_addr, config.flow_addr, config.vocoder_addr, config.frontend_addr, tls=stage_tls
    )
    metrics = GatewayMetrics(registry)
    frontend = FrontendClient(clients.frontend, config.upstream_timeout_seconds, metrics)
    voices = VoiceBook(store, frontend)
    pipeline = StagePipeline(
        clients, config.chunk_policy, config.stage_queue_chunks, config.upstream_timeout_seconds, metrics
    )
    synthesizer = Synthesizer(pipeline, voices, frontend, config.max_text_chars, metrics)
    tts = TextToSpeechServicer(synthesizer, metrics, config.max_concurrent_requests)
    bindings = [
        ServiceBinding(SERVICE_NAME, tts, tts_pb2_grpc.add_TextToSpeechServicer_to_server),
        ServiceBinding(
            SPEAKERS_SERVICE_NAME, SpeakersServicer(voices, frontend), speakers_pb2_grpc.add_SpeakersServicer_to_server
        ),
        ServiceBinding(
            OFFICIAL_SERVICE_NAME, OfficialCosyVoiceServicer(tts), cosyvoice_pb2_grpc.add_CosyVoiceServicer_to_server
        ),
    ]
    interceptors = [ApiKeyInterceptor(api_keys)] if api_keys else []
    return Gateway(ServiceHost(config, bindings, registry, service="gateway", interceptors=interceptors), clients, voices)


async def wait_for_stages(config: GatewayConfig, poll_seconds: float = 0.5, tls: ClientTls | None = None) -> None:
    """Every stage reports SERVING (Health.Watch, no polling loop); `tls`: as the stage channels."""

    async def watch(name: str, address: str) -> None:
        announced = False
        while True:
            try:
                async with balanced_channel(address, tls) as channel:
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

    await asyncio.gather(*(watch(name, getattr(config, f"{name}_addr")) for name in STAGES))


def main(argv: Sequence[str] | None = None) -> None:
    config = load_config(GatewayConfig, argv)
    configure_logging(config.log_level, config.log_json, process="gateway")

    async def run() -> None:
        gateway = build_gateway(config)
        await run_until_signal(
            gateway.host, load=functools.partial(gateway.load, config), on_stop=gateway.close, name="gateway"
        )

    asyncio.run(run())
