"""Composition root of the vocoder process: config → model → runner → servicer → server."""

from __future__ import annotations

import asyncio
import logging
from typing import Sequence

import numpy as np
from prometheus_client import CollectorRegistry

from services.common.config import load_config
from services.common.logging_setup import configure_logging
from services.common.metrics import make_registry, register_model_info
from services.common.pb import vocoder_pb2, vocoder_pb2_grpc
from services.common.server import ServiceBinding, ServiceHost
from services.common.stage_app import StageApp
from services.vocoder.config import VocoderServiceConfig
from services.vocoder.metrics import VocoderMetrics
from services.vocoder.servicer import VocoderServicer

logger = logging.getLogger(__name__)
SERVICE_NAME = vocoder_pb2.DESCRIPTOR.services_by_name["Vocoder"].full_name
WARMUP_FRAMES = 50


def load_runner(config: VocoderServiceConfig, metrics: VocoderMetrics):  # noqa: ANN202 - torch stays lazy
    from services.common.modeldir.layout import ModelDir
    from services.vocoder.backends import install_network_backend
    from services.vocoder.model.loader import load_hift
    from services.vocoder.runner import VocoderRunner

    config.apply_threads()
    model_dir = ModelDir.open(config.model_dir)
    hift = load_hift(model_dir, config.device, config.torch_dtype())
    logger.info("vocoder network backend: %s", install_network_backend(hift, config, model_dir))
    return VocoderRunner(
        hift, metrics, config.max_batch_size, config.max_batch_wait_ms / 1000, nice_increment=config.compute_nice,
        max_chunk_frames=config.max_chunk_frames, max_sessions=config.max_sessions,
    )


async def warm_up(runner) -> None:  # noqa: ANN001
    stream = runner.open_stream(seed=0)
    mel = np.zeros((runner.mel_bins, WARMUP_FRAMES), np.float32)
    await runner.vocode(stream, mel, finalize=False)
    await runner.vocode(stream, mel, finalize=True)
    runner.close_stream(stream)


def create_app(config: VocoderServiceConfig, registry: CollectorRegistry | None = None) -> StageApp:
    registry = registry if registry is not None else make_registry()
    metrics = VocoderMetrics(registry)
    servicer = VocoderServicer()
    host = ServiceHost(
        config, [ServiceBinding(SERVICE_NAME, servicer, vocoder_pb2_grpc.add_VocoderServicer_to_server)], registry,
        service="vocoder",
    )
    register_model_info(registry, "vocoder", config.device, config.dtype)
    metrics.max_sessions.set(config.max_sessions)

    async def load() -> None:
        # Warm-up records into a scratch registry nobody scrapes: no request has been served,
        # so the served counters and histograms must still read zero.
        runner = await asyncio.to_thread(load_runner, config, VocoderMetrics(make_registry()))
        runner.start()
        await warm_up(runner)
        runner.metrics = metrics
        servicer.runner = runner

    async def close() -> None:
        if servicer.runner is not None:
            await servicer.runner.close()

    return StageApp("vocoder", host, load, close, servicer)


async def _serve(config: VocoderServiceConfig) -> None:
    # Built inside the running loop: grpc.aio.server() binds to the loop current at creation.
    await create_app(config).run()


def main(argv: Sequence[str] | None = None) -> None:
    config = load_config(VocoderServiceConfig, argv)
    configure_logging(config.log_level, config.log_json, process="vocoder")
    asyncio.run(_serve(config))
