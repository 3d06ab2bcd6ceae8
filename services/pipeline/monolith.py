"""The in-process monolith: the split stack's runners and chunk schedule in one process, no gRPC.

    AsyncLLMEngine ──tokens──▶ chunk schedule ──▶ FlowRunner ──mel──▶ VocoderRunner ──▶ audio

It is what `cosyvoice bench` compares the split services against, so it runs exactly what the
stage processes run: each stage's own loader and warm-up (`services.<stage>.server`), the
same cross-request batching runners, the same `TokenChunker` per request, and the same three
pump tasks over bounded queues as `gateway.pipeline.StagePipeline` (`services.common.pumps`).
The only thing missing is the network, so the difference between the two is the cost of the
split. The first piece reports the same first-chunk stage timings as the gateway's.

torch's CPU thread count is per process: the stage configs' `num_threads` should agree
(the last stage loaded wins).
"""

from __future__ import annotations

import asyncio
import time
from typing import AsyncIterator

from services.common.chunking import ChunkPolicy, TokenFeed
from services.common.metrics import make_registry
from services.common.pumps import AudioPiece, FirstChunkTimings, SynthesisJob, run_pumps
from services.flow.config import FlowServiceConfig
from services.flow.metrics import FlowMetrics
from services.flow.runner import FlowRunner
from services.llm.api import GenerationRequest
from services.llm.async_engine import AsyncLLMEngine
from services.llm.config import LLMServiceConfig
from services.llm.metrics import LLMMetrics
from services.vocoder.config import VocoderServiceConfig
from services.vocoder.metrics import VocoderMetrics
from services.vocoder.runner import VocoderRunner

__all__ = ["AudioPiece", "FirstChunkTimings", "MonolithPipeline", "SynthesisJob"]


class MonolithPipeline:
    def __init__(
        self,
        llm: AsyncLLMEngine,
        flow: FlowRunner,
        vocoder: VocoderRunner,
        policy: ChunkPolicy | None = None,
        queue_chunks: int = 4,
    ) -> None:
        self.llm = llm
        self.flow = flow
        self.vocoder = vocoder
        self.policy = policy or ChunkPolicy(lookahead=flow.lookahead)
        self.queue_chunks = queue_chunks

    @classmethod
    async def start(
        cls,
        llm_config: LLMServiceConfig,
        flow_config: FlowServiceConfig,
        vocoder_config: VocoderServiceConfig,
        policy: ChunkPolicy | None = None,
        queue_chunks: int = 4,
    ) -> "MonolithPipeline":
        """Load and warm up the three stages as their processes do, and start their loops.
        `queue_chunks` is the gateway's `stage_queue_chunks`."""
        # The stage processes' own loaders and warm-ups, so both sides run the same code.
        from services.flow.server import load_runner as load_flow_runner
        from services.flow.server import warm_up as warm_up_flow
        from services.llm.server import load_engine as load_llm_engine
        from services.vocoder.server import load_runner as load_vocoder_runner
        from services.vocoder.server import warm_up as warm_up_vocoder

        registry = make_registry()
        engine, tokenizer = await asyncio.to_thread(load_llm_engine, llm_config)
        flow = await asyncio.to_thread(load_flow_runner, flow_config, FlowMetrics(registry))
        vocoder = await asyncio.to_thread(load_vocoder_runner, vocoder_config, VocoderMetrics(registry))
        llm = AsyncLLMEngine(
            engine, tokenizer, LLMMetrics(registry), llm_config.max_waiting_requests,
            nice_increment=llm_config.compute_nice,
        )
        llm.start()
        flow.start()
        vocoder.start()
        monolith = cls(llm, flow, vocoder, policy, queue_chunks)
        try:
            await warm_up_flow(flow)
            await warm_up_vocoder(vocoder)
        except BaseException:
            await monolith.close()
            raise
        return monolith

    async def close(self) -> None:
        await self.llm.close()
        await self.flow.close()
        await self.vocoder.close()

    async def run(self, job: SynthesisJob) -> AsyncIterator[AudioPiece]:
        """Audio pieces in order, the last with is_final; the first carries the stage timings."""
        received = time.perf_counter()
        flow_in: asyncio.Queue = asyncio.Queue(self.queue_chunks)
        vocoder_in: asyncio.Queue = asyncio.Queue(self.queue_chunks)
        audio_out: asyncio.Queue = asyncio.Queue(self.queue_chunks)
        timings = FirstChunkTimings()
        pumps = [
            self._pump_tokens(job, received, flow_in, timings),
            self._pump_mel(job, flow_in, vocoder_in, timings),
            self._pump_audio(job, vocoder_in, audio_out, timings),
        ]
        async for piece in run_pumps(pumps, audio_out):
            yield piece

    async def _pump_tokens(
        self, job: SynthesisJob, received: float, out: asyncio.Queue, timings: FirstChunkTimings
    ) -> None:
        feed = TokenFeed(self.policy, num_prompt_tokens=0, stream=job.stream)
        async for event in self.llm.generate(GenerationRequest(job.text, sampling={"seed": job.seed})):
            for tokens, chunk in feed.push(event.tokens, event.finished):
                if chunk.index == 0:  # what the LLM servicer reports as elapsed_seconds
                    timings.llm_seconds = time.perf_counter() - received
                await out.put((tokens, chunk.is_final))
            if event.finished:
                return
        raise RuntimeError("the LLM's token stream ended before its final event")

    async def _pump_mel(
        self, job: SynthesisJob, source: asyncio.Queue, out: asyncio.Queue, timings: FirstChunkTimings
    ) -> None:
        session = self.flow.open_session(job.speaker_id or None, None)
        try:
            first = True
            while True:
                tokens, finalize = await source.get()
                result = await self.flow.decode(session, tokens, finalize)
                if first:
                    timings.flow_seconds = result.compute_seconds
                    first = False
                await out.put((result.mel, finalize))
                if finalize:
                    return
        finally:
            self.flow.close_session(session)

    async def _pump_audio(
        self, job: SynthesisJob, source: asyncio.Queue, out: asyncio.Queue, timings: FirstChunkTimings
    ) -> None:
        stream = self.vocoder.open_stream(job.seed, job.speed)
        try:
            first = True
            while True:
                mel, finalize = await source.get()
                result = await self.vocoder.vocode(stream, mel, finalize)
                piece_timings = None
                if first:
                    timings.vocoder_seconds = result.compute_seconds
                    piece_timings = timings
                    first = False
                await out.put(AudioPiece(result.samples, self.vocoder.sample_rate, finalize, piece_timings))
                if finalize:
                    return
        finally:
            self.vocoder.close_stream(stream)
