"""Composition root of the flow process: config → model → runner → servicer → server."""

from __future__ import annotations

import asyncio
import logging
from typing import Sequence

from prometheus_client import CollectorRegistry

from services.common.config import load_config
from services.common.logging_setup import configure_logging
from services.common.metrics import make_registry, register_model_info
from services.common.pb import flow_pb2, flow_pb2_grpc
from services.common.server import ServiceBinding, ServiceHost
from services.common.stage_app import StageApp
from services.flow.config import FlowServiceConfig
from services.flow.metrics import FlowMetrics
from services.flow.servicer import FlowDecoderServicer

logger = logging.getLogger(__name__)
SERVICE_NAME = flow_pb2.DESCRIPTOR.services_by_name["FlowDecoder"].full_name
WARMUP_TOKENS = 60


def load_runner(config: FlowServiceConfig, metrics: FlowMetrics):  # noqa: ANN202 - torch stays lazy
    from services.common.modeldir.layout import ModelDir
    from services.flow.backends import install_estimator_backend
    from services.flow.model.loader import load_flow
    from services.flow.runner import FlowRunner
    from services.flow.speakers import SpeakerTable

    config.apply_threads()
    model_dir = ModelDir.open(config.model_dir)
    flow = load_flow(model_dir, config.device, config.torch_dtype())
    logger.info("flow estimator backend: %s", install_estimator_backend(flow, config, model_dir))
    speakers = SpeakerTable.load(model_dir.spk2info_path)
    return FlowRunner(
        flow, speakers, metrics, config.max_batch_size, config.max_batch_wait_ms / 1000, config.max_batch_padding,
        nice_increment=config.compute_nice, max_sessions=config.max_sessions,
        incremental=config.incremental, incremental_cache_bytes=config.incremental_cache_mib * 2**20,
        chunked_final=config.incremental_chunked_final,
    )


async def warm_up(runner) -> None:  # noqa: ANN001
    import torch

    from services.flow.chunk_decoder import FlowSession

    session = FlowSession(torch.zeros(0, dtype=torch.long), torch.zeros(0, 80), torch.ones(192))
    await runner.decode(session, list(range(WARMUP_TOKENS)), finalize=False)
    await runner.decode(session, [], finalize=True)


def create_app(config: FlowServiceConfig, registry: CollectorRegistry | None = None) -> StageApp:
    registry = registry if registry is not None else make_registry()
    metrics = FlowMetrics(registry)
    servicer = FlowDecoderServicer()
    host = ServiceHost(
        config, [ServiceBinding(SERVICE_NAME, servicer, flow_pb2_grpc.add_FlowDecoderServicer_to_server)], registry,
        service="flow",
    )
    register_model_info(registry, "flow", config.device, config.dtype)
    metrics.max_sessions.set(config.max_sessions)

    async def load() -> None:
        # Warm-up records into a scratch registry nobody scrapes: no request has been served,
        # so the served counters and histograms must still read zero.
        runner = await asyncio.to_thread(load_runner, config, FlowMetrics(make_registry()))
        runner.start()
        await warm_up(runner)  # chunked and full attention, through the batcher
        runner.metrics = metrics
        servicer.runner = runner

    async def close() -> None:
        if servicer.runner is not None:
            await servicer.runner.close()

    return StageApp("flow", host, load, close, servicer)


async def _serve(config: FlowServiceConfig) -> None:
    # Built inside the running loop: grpc.aio.server() binds to the loop current at creation.
    await create_app(config).run()


def main(argv: Sequence[str] | None = None) -> None:
    config = load_config(FlowServiceConfig, argv)
    configure_logging(config.log_level, config.log_json, process="flow")
    asyncio.run(_serve(config))
