"""Composition root of the frontend process: config → runner → servicer → server."""

from __future__ import annotations

import asyncio
from typing import Sequence

from prometheus_client import CollectorRegistry

from services.common.config import load_config
from services.common.logging_setup import configure_logging
from services.common.metrics import make_registry, register_model_info
from services.common.pb import frontend_pb2, frontend_pb2_grpc
from services.common.server import ServiceBinding, ServiceHost
from services.common.stage_app import StageApp
from services.frontend.config import FrontendServiceConfig
from services.frontend.metrics import FrontendMetrics
from services.frontend.servicer import FrontendServicer

SERVICE_NAME = frontend_pb2.DESCRIPTOR.services_by_name["Frontend"].full_name
WARMUP_SECONDS = 1.0


def load_runner(config: FrontendServiceConfig, metrics: FrontendMetrics):  # noqa: ANN201 - torch stays lazy
    from services.frontend.runner import FrontendRunner

    return FrontendRunner.from_config(config, metrics)


async def warm_up(runner) -> None:  # noqa: ANN001
    """One synthetic prompt through every model and one text through the normalisers, so the
    first user does not pay for lazy initialisation (whisper's filters, wetext's FSTs)."""
    import io

    import numpy as np
    import soundfile

    rate = 16000
    t = np.arange(int(WARMUP_SECONDS * rate)) / rate
    wave = (0.3 * np.sin(2 * np.pi * 150 * t) * (1 + 0.5 * np.sin(2 * np.pi * 3 * t))).astype(np.float32)
    buffer = io.BytesIO()
    soundfile.write(buffer, wave, rate, format="WAV", subtype="PCM_16")
    await runner.encode_prompt(buffer.getvalue(), 0, "warm_up")
    await runner.split_text("Warm up 1, 2, 3. 预热一下。", True, False)


def create_app(config: FrontendServiceConfig, registry: CollectorRegistry | None = None) -> StageApp:
    registry = registry if registry is not None else make_registry()
    metrics = FrontendMetrics(registry)
    servicer = FrontendServicer(config.max_text_chars)
    host = ServiceHost(
        config, [ServiceBinding(SERVICE_NAME, servicer, frontend_pb2_grpc.add_FrontendServicer_to_server)], registry,
        service="frontend",
    )
    # No GPU memory series here even on cuda: the speech tokenizer runs in ONNX Runtime, whose
    # memory torch's allocator does not see.
    register_model_info(registry, "frontend", config.device, config.dtype, gpu_memory=False)
    state: dict[str, object] = {}

    async def load() -> None:
        # Warm-up records into a scratch registry nobody scrapes: no prompt has been served,
        # so the served counters and histograms must still read zero.
        runner = await asyncio.to_thread(load_runner, config, FrontendMetrics(make_registry()))
        state["runner"] = runner
        await warm_up(runner)
        runner.metrics = metrics
        servicer.runner = runner

    async def close() -> None:
        runner = state.get("runner")
        if runner is not None:
            runner.close()

    return StageApp("frontend", host, load, close, servicer)


async def _serve(config: FrontendServiceConfig) -> None:
    # Built inside the running loop: grpc.aio.server() binds to the loop current at creation.
    await create_app(config).run()


def main(argv: Sequence[str] | None = None) -> None:
    config = load_config(FrontendServiceConfig, argv)
    configure_logging(config.log_level, config.log_json, process="frontend")
    asyncio.run(_serve(config))
