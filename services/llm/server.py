"""Composition root of the LLM process: config → engine → async engine → servicer → server."""

from __future__ import annotations

import asyncio
import logging
from typing import Sequence

from prometheus_client import CollectorRegistry

from services.common.config import load_config
from services.common.logging_setup import configure_logging
from services.common.metrics import make_registry, register_model_info
from services.common.modeldir.layout import ModelDir
from services.common.modeldir.tokenizer import CosyVoiceTokenizer
from services.common.pb import llm_pb2, llm_pb2_grpc
from services.common.server import ServiceBinding, ServiceHost
from services.common.stage_app import StageApp
from services.llm.async_engine import AsyncLLMEngine
from services.llm.config import LLMServiceConfig
from services.llm.metrics import LLMMetrics
from services.llm.servicer import SpeechTokenGeneratorServicer

SERVICE_NAME = llm_pb2.DESCRIPTOR.services_by_name["SpeechTokenGenerator"].full_name
WARMUP_TEXT = "warm up"
log = logging.getLogger(__name__)


def load_engine(config: LLMServiceConfig):  # noqa: ANN202 - torch types stay out of this module's API
    from services.llm.engine.config import EngineConfig
    from services.llm.engine.llm_engine import LLMEngine
    from services.llm.model.sampling import SamplingParams

    config.apply_threads()
    model_dir = ModelDir.open(config.model_dir)
    tokenizer = CosyVoiceTokenizer.from_dir(model_dir.tokenizer_dir)
    engine_config = EngineConfig(
        config.max_num_seqs, config.max_num_batched_tokens, config.max_model_len,
        decode_graphs=config.decode_graphs, graph_max_batch=config.cuda_graph_max_batch,
    )
    if config.cuda_graphs and config.decode_graphs == "off":
        log.info("cuda_graphs is on but the device is %s: decoding without CUDA graphs", config.device)
    engine = LLMEngine.from_model_dir(model_dir, config.device, config.torch_dtype(), engine_config)
    # Warm-up: one short request through prefill, decode and sampling. It drives the engine
    # directly, before the async engine (the only writer of the LLM metrics) exists, so no
    # warm-up token is counted.
    from services.llm.model.prompt import build_prompt

    prompt = build_prompt("sft", tokenizer.encode(WARMUP_TEXT))
    for _ in engine.generate(prompt, SamplingParams(seed=0, min_token_text_ratio=0, max_token_text_ratio=2)):
        pass
    return engine, tokenizer


def create_app(config: LLMServiceConfig, registry: CollectorRegistry | None = None) -> StageApp:
    registry = registry if registry is not None else make_registry()
    metrics = LLMMetrics(registry)
    servicer = SpeechTokenGeneratorServicer(
        config.max_text_chars, config.max_prompt_speech_tokens, config.max_bistream_text_chars, config.max_model_len
    )
    host = ServiceHost(
        config, [ServiceBinding(SERVICE_NAME, servicer, llm_pb2_grpc.add_SpeechTokenGeneratorServicer_to_server)],
        registry, service="llm",
    )
    register_model_info(registry, "llm", config.device, config.dtype)

    async def load() -> None:
        engine, tokenizer = await asyncio.to_thread(load_engine, config)
        async_engine = AsyncLLMEngine(
            engine, tokenizer, metrics, config.max_waiting_requests, nice_increment=config.compute_nice
        )
        async_engine.start()
        servicer.engine = async_engine

    async def close() -> None:
        if servicer.engine is not None:
            await servicer.engine.close()

    return StageApp("llm", host, load, close, servicer)


async def _serve(config: LLMServiceConfig) -> None:
    # Built inside the running loop: grpc.aio.server() binds to the loop current at creation.
    await create_app(config).run()


def main(argv: Sequence[str] | None = None) -> None:
    config = load_config(LLMServiceConfig, argv)
    configure_logging(config.log_level, config.log_json, process="llm")
    asyncio.run(_serve(config))
