"""One synthesis through the three stages, all running at once.

    LLM Generate ──tokens──▶ chunk schedule ──TokenChunk──▶ flow Decode ──MelChunk──▶ vocoder Vocode ──▶ audio

Three pump tasks move data between the streams through bounded queues, so a slow stage
holds back the ones before it (backpressure) instead of letting memory grow; two more (three
with streamed text) write the client-streaming calls' requests. The first failure cancels
everything; so does the caller going away: every upstream call is cancelled and every pump
cancelled and awaited in `finally`, which the stages see at once and free the request's state.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from typing import AsyncIterator

import grpc

from gateway.clients import StageClients
from gateway.metrics import GatewayMetrics
from services.common.chunking import ChunkPolicy, TokenFeed
from services.common.errors import INTERNAL_STAGE_REQUEST_CODES, InvalidRequest, UpstreamError, upstream_error
from services.common.pb import flow_pb2, llm_pb2, vocoder_pb2
from services.common.pumps import AudioPiece, FirstChunkTimings, SynthesisJob, run_pumps
from services.common.tensors import from_proto

__all__ = ["AudioPiece", "FirstChunkTimings", "StagePipeline", "SynthesisJob"]


@dataclass
class _Shared:
    timings: FirstChunkTimings = field(default_factory=FirstChunkTimings)
    flow_timed: bool = False


# The gateway's side of each client-streaming stage call is written by a pump of its own, never
# handed to gRPC as a request iterator: gRPC would consume that iterator in a task of its own,
# which `call.cancel()` leaves pending once the call has already ended (a stage error, the
# deadline). Such tasks and the generators they iterate were destroyed pending later, each
# logging an ERROR ("Task was destroyed but it is pending!", "aclose(): asynchronous generator is
# already running"). As pumps they are cancelled and awaited with the others on every exit.
_CALL_ENDED = (grpc.aio.AioRpcError, asyncio.InvalidStateError)


async def _write_text(call: grpc.aio.StreamStreamCall, start: llm_pb2.BistreamStart, pieces: AsyncIterator[str]) -> None:
    """The LLM's bistream: the start, then each text piece as the caller sends it; the caller's
    end of text half-closes it."""
    try:
        await call.write(llm_pb2.GenerateBistreamRequest(start=start))
        async for piece in pieces:
            await call.write(llm_pb2.GenerateBistreamRequest(text=piece))
        await call.done_writing()
    except _CALL_ENDED:
        return  # the call has ended: the pump reading its tokens says how
    finally:
        aclose = getattr(pieces, "aclose", None)
        if aclose is not None:  # from the task that iterates it, so never while it is running
            await aclose()


async def _write_chunks(call: grpc.aio.StreamStreamCall, first: object, queue: asyncio.Queue) -> None:
    """A bidi stage stream's requests: the start message, then queued items up to the final
    one, then half-close."""
    try:
        await call.write(first)
        while True:
            item = await queue.get()
            await call.write(item)
            if item.chunk.finalize:
                break
        await call.done_writing()
    except _CALL_ENDED:
        return  # the call has ended: the pump reading its responses says how


async def _drain(call: grpc.aio.Call) -> None:
    """Read a stage stream to its end after its final message, so the call ends with its
    status rather than by a cancel. grpc.aio keeps a call alive, with its reader and the last
    message it read, when the call is cancelled while an operation is still in flight (the
    status receive, here): about one vocoder chunk (~100 kB) per request in a soak, the
    gateway's RSS growth until this drain (docs/reliability.md)."""
    async for _ in call:
        pass  # a stage sends nothing after its final message


class StagePipeline:
    def __init__(
        self, clients: StageClients, policy: ChunkPolicy, queue_chunks: int, timeout: float,
        metrics: GatewayMetrics | None = None,
    ) -> None:
        self.clients = clients
        self.policy = policy
        self.queue_chunks = queue_chunks
        self.timeout = timeout
        self.metrics = metrics

    def _failed(
        self, stage: str, error: grpc.aio.AioRpcError, codes: frozenset[grpc.StatusCode] | None = None
    ) -> UpstreamError:
        """A stage call's failure as our caller sees it, counted under the stage's own code."""
        self._count(stage, error.code())
        return upstream_error(stage, error) if codes is None else upstream_error(stage, error, codes)

    def _count(self, stage: str, code: grpc.StatusCode) -> None:
        if self.metrics is not None:
            self.metrics.upstream_error(stage, code)

    def _ended_early(self, stage: str) -> UpstreamError:
        error = upstream_error_eos(stage)
        self._count(stage, error.code)
        return error

    async def run(
        self,
        job: SynthesisJob,
        timeout: float | None = None,
        text_pieces: AsyncIterator[str] | None = None,
        llm_done: asyncio.Event | None = None,
    ) -> AsyncIterator[AudioPiece]:
        """Audio pieces in order, the last with is_final; `timeout` caps every stage call.
        With `text_pieces` the LLM reads the text as it arrives (bistream) instead of `job.text`.
        `llm_done` is set once the LLM has sent its last token (the flow and vocoder may still
        be working): the moment a next segment can start without slowing this one."""
        timeout = self.timeout if timeout is None else min(timeout, self.timeout)
        flow_in: asyncio.Queue = asyncio.Queue(self.queue_chunks)
        vocoder_in: asyncio.Queue = asyncio.Queue(self.queue_chunks)
        audio_out: asyncio.Queue = asyncio.Queue(self.queue_chunks)
        shared = _Shared()
        sampling = llm_pb2.SamplingParams(seed=job.seed)
        if text_pieces is None:
            llm_call = self.clients.llm.Generate(
                llm_pb2.GenerateRequest(
                    request_id=job.request_id, text=job.text, prompt_text=job.prompt_text,
                    prompt_speech_tokens=job.prompt_speech_tokens, sampling=sampling,
                ),
                timeout=timeout,
            )
        else:
            start = llm_pb2.BistreamStart(
                request_id=job.request_id, prompt_text=job.prompt_text,
                prompt_speech_tokens=job.prompt_speech_tokens, sampling=sampling,
            )
            llm_call = self.clients.llm.GenerateBistream(timeout=timeout)
        if job.flow_prompt is not None:
            decode_start = flow_pb2.DecodeStart(request_id=job.request_id, prompt=job.flow_prompt)
        else:
            decode_start = flow_pb2.DecodeStart(request_id=job.request_id, speaker_id=job.speaker_id)
        flow_call = self.clients.flow.Decode(timeout=timeout)
        vocode_start = vocoder_pb2.VocodeStart(request_id=job.request_id, seed=job.seed)
        if job.speed != 1.0:
            vocode_start.speed = job.speed
        vocoder_start = vocoder_pb2.VocodeRequest(start=vocode_start)
        vocoder_call = self.clients.vocoder.Vocode(timeout=timeout)
        pumps = [
            _write_chunks(flow_call, flow_pb2.DecodeRequest(start=decode_start), flow_in),
            _write_chunks(vocoder_call, vocoder_start, vocoder_in),
            self._pump_tokens(llm_call, flow_in, shared, job, llm_done),
            self._pump_mel(flow_call, vocoder_in, shared),
            self._pump_audio(vocoder_call, audio_out, shared),
        ]
        if text_pieces is not None:
            pumps.append(_write_text(llm_call, start, text_pieces))

        def cancel_calls() -> None:
            for call in (llm_call, flow_call, vocoder_call):
                if not call.done():  # a finished call has nothing to cancel (see _drain)
                    call.cancel()

        with contextlib.ExitStack() as tracked:
            if self.metrics is not None:  # scraped as cosyvoice_gateway_queue_depth{queue}
                for kind, queue in (("llm_to_flow", flow_in), ("flow_to_vocoder", vocoder_in),
                                    ("vocoder_to_client", audio_out)):
                    tracked.enter_context(self.metrics.queues.tracking(kind, queue))
            async for piece in run_pumps(pumps, audio_out, on_exit=cancel_calls):
                yield piece

    async def _pump_tokens(
        self, call: grpc.aio.Call, out: asyncio.Queue, shared: _Shared, job: SynthesisJob,
        llm_done: asyncio.Event | None,
    ) -> None:
        feed = TokenFeed(self.policy, num_prompt_tokens=job.num_flow_prompt_tokens, stream=job.stream)
        try:
            async for response in call:
                if response.finish_reason and llm_done is not None:
                    llm_done.set()
                for tokens, chunk in feed.push(response.tokens, bool(response.finish_reason)):
                    if chunk.index == 0:
                        shared.timings.llm_seconds = response.elapsed_seconds
                    message = flow_pb2.TokenChunk(tokens=tokens, finalize=chunk.is_final)
                    await out.put(flow_pb2.DecodeRequest(chunk=message))
                if response.finish_reason:
                    return await _drain(call)
        except grpc.aio.AioRpcError as error:
            raise self._failed("llm", error) from None
        raise self._ended_early("llm")

    async def _pump_mel(self, call: grpc.aio.StreamStreamCall, out: asyncio.Queue, shared: _Shared) -> None:
        try:
            async for response in call:
                if not shared.flow_timed:
                    shared.timings.flow_seconds = response.compute_seconds
                    shared.flow_timed = True
                mel = vocoder_pb2.MelChunk(mel=response.mel, finalize=response.is_final)
                await out.put(vocoder_pb2.VocodeRequest(chunk=mel))
                if response.is_final:
                    return await _drain(call)
        except grpc.aio.AioRpcError as error:
            raise self._failed("flow", error, INTERNAL_STAGE_REQUEST_CODES) from None
        raise self._ended_early("flow")

    async def _pump_audio(self, call: grpc.aio.StreamStreamCall, out: asyncio.Queue, shared: _Shared) -> None:
        first = True
        try:
            async for response in call:
                try:
                    samples = from_proto(response.audio, "vocoder.audio")
                except InvalidRequest as exc:  # the vocoder sent something malformed: not the caller's fault
                    self._count("vocoder", grpc.StatusCode.INTERNAL)
                    raise UpstreamError("vocoder", grpc.StatusCode.INTERNAL, str(exc)) from None
                timings = None
                if first:
                    shared.timings.vocoder_seconds = response.compute_seconds
                    timings = shared.timings
                    first = False
                await out.put(AudioPiece(samples, response.sample_rate, response.is_final, timings))
                if response.is_final:
                    return await _drain(call)
        except grpc.aio.AioRpcError as error:
            raise self._failed("vocoder", error, INTERNAL_STAGE_REQUEST_CODES) from None
        raise self._ended_early("vocoder")



def upstream_error_eos(stage: str) -> UpstreamError:
    return UpstreamError(stage, grpc.StatusCode.UNAVAILABLE, "stream ended before its final message")
