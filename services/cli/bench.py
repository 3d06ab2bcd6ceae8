"""`cosyvoice bench`: load the split stack over loopback gRPC and the in-process monolith with the
same requests, and compare.

By default it starts the split stack itself, as five processes (four stages and the gateway,
as `cosyvoice up` does), and loads the monolith (`services.pipeline.monolith`: the same runners
and chunk schedule in one process, no gRPC) into this process; `--address` benchmarks a
gateway that is already running instead. Each concurrency level sends a fixed number of
requests with at most C in flight, to each system in turn, and reports:

- time to first audio (TTFA), client side: request sent → first chunk with audio received;
  p50 and p99 (linear interpolation between ranks; with few requests p99 is about the max);
- aggregate throughput: audio seconds of all the level's requests / the level's wall time
  (= 1 / aggregate RTF);
- underruns: chunks that arrive after the audio received before them would have finished
  playing, playback starting when the first chunk arrives. After an underrun playback
  resumes when the late chunk arrives (a player stalls, it does not skip), so one stall
  counts once;
- first-audio overhead: client TTFA − the sum of the first chunk's own stage timings
  (`first_chunk_timings`: the LLM's time to the token completing the first chunk, then the
  flow's and the vocoder's compute for it). For the split this is what the network hops,
  the gateway and the queues between stages add; for the monolith, the queues alone.
- split / monolith ratios of throughput and TTFA.

Settings: the stage processes and the monolith read the same COSYVOICE_<SERVICE>_* environment
variables (batch sizes, queue depth, chunk schedule), e.g. COSYVOICE_FLOW_MAX_BATCH_SIZE=1.

Threads: on a small CPU box each stage must run its compute on one thread. Every stage
already computes on one dedicated worker thread (the LLM engine thread, the flow and vocoder
batchers); `--num-threads` (default 1) is torch's intra-op thread count inside it, passed to
each stage process as `--num-threads` and set once for the monolith's process (torch's
setting is per process). Both layouts then run the same three single-threaded stage workers,
and neither oversubscribes: with torch's default (one thread per core in every process) the
split would run 3 × cores spinning OpenMP threads on the same cores.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AsyncIterator, Protocol, Sequence

from services.cli.bench_report import RequestRecord, compare, summarize

DEFAULT_CONCURRENCIES = (1, 4, 8, 16)
MIN_REQUESTS = 8
# Sentences of different lengths. With the random-weight tiny model the LLM runs to its
# length limit (20 speech tokens per text token), which makes 6 to 13 s of audio each.
DEFAULT_TEXTS = (
    "Hello world.",
    "The quick brown fox jumps over the lazy dog.",
    "The meeting starts at noon.",
    "Thanks for calling.",
)
THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


# ---------------------------------------------------------------------------------------------
# Requests.


@dataclass(frozen=True)
class BenchRequest:
    index: int
    text: str
    seed: int
    speaker_id: str = ""


# ---------------------------------------------------------------------------------------------
# Load generation.


@dataclass(frozen=True)
class Received:
    num_samples: int
    sample_rate: int
    stages: tuple[float, float, float] | None  # the first chunk's llm, flow, vocoder seconds, once


class Target(Protocol):
    def stream(self, request: BenchRequest) -> AsyncIterator[Received]: ...


class GatewayTarget:
    """The split stack: streaming Synthesize calls over one loopback channel (HTTP/2 multiplexed)."""

    def __init__(self, address: str) -> None:
        import grpc

        from services.common.pb import tts_pb2, tts_pb2_grpc
        from services.common.server import CHANNEL_OPTIONS

        self._pb = tts_pb2
        self.channel = grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS)
        self.stub = tts_pb2_grpc.TextToSpeechStub(self.channel)

    async def stream(self, request: BenchRequest) -> AsyncIterator[Received]:
        message = self._pb.SynthesizeRequest(
            text=request.text, speaker_id=request.speaker_id, seed=request.seed, stream=True,
            encoding=self._pb.AUDIO_ENCODING_PCM_F32LE,
        )
        async for response in self.stub.Synthesize(message):
            stages = None
            if response.HasField("first_chunk_timings"):
                t = response.first_chunk_timings
                stages = (t.llm_seconds, t.flow_seconds, t.vocoder_seconds)
            yield Received(len(response.audio) // 4, response.sample_rate, stages)

    async def close(self) -> None:
        await self.channel.close()


class MonolithTarget:
    """The in-process monolith, called directly (no gRPC, no encoding)."""

    def __init__(self, monolith: Any) -> None:  # services.pipeline.monolith.MonolithPipeline
        self.monolith = monolith

    async def stream(self, request: BenchRequest) -> AsyncIterator[Received]:
        from services.common.pumps import SynthesisJob

        job = SynthesisJob(f"bench-{request.index}", request.text, request.speaker_id, request.seed)
        async for piece in self.monolith.run(job):
            t = piece.timings
            stages = (t.llm_seconds, t.flow_seconds, t.vocoder_seconds) if t is not None else None
            yield Received(int(piece.samples.size), piece.sample_rate, stages)

    async def close(self) -> None:
        await self.monolith.close()


def _describe(error: BaseException) -> str:
    code = getattr(error, "code", None)
    if callable(code):  # grpc.aio.AioRpcError
        return f"{code().name}: {error.details()}"  # type: ignore[attr-defined]
    return f"{type(error).__name__}: {error}"


async def measure(target: Target, request: BenchRequest, timeout: float | None = None) -> RequestRecord:
    """One request's chunk arrivals on the client clock; an error is recorded, not raised."""
    record = RequestRecord(submitted=time.perf_counter())
    try:
        async with asyncio.timeout(timeout), contextlib.aclosing(target.stream(request)) as stream:
            async for received in stream:
                now = time.perf_counter()
                if received.stages is not None and record.stages is None:
                    record.stages = received.stages
                if received.num_samples > 0:
                    record.arrivals.append(now)
                    record.seconds.append(received.num_samples / received.sample_rate)
    except Exception as error:  # noqa: BLE001 - the bench reports failures per request
        record.error = _describe(error) if not isinstance(error, TimeoutError) else f"timed out after {timeout} s"
    record.finished = time.perf_counter()
    return record


async def run_level(
    target: Target, requests: Sequence[BenchRequest], concurrency: int, timeout: float | None = None
) -> tuple[list[RequestRecord], float]:
    """Every request, at most `concurrency` in flight; returns the records and the wall time."""
    slots = asyncio.Semaphore(concurrency)

    async def one(request: BenchRequest) -> RequestRecord:
        async with slots:
            return await measure(target, request, timeout)

    started = time.perf_counter()
    records = await asyncio.gather(*(one(r) for r in requests))
    return list(records), time.perf_counter() - started


def make_requests(count: int, texts: Sequence[str], seed: int, speaker_id: str = "") -> list[BenchRequest]:
    return [BenchRequest(i, texts[i % len(texts)], seed + i, speaker_id) for i in range(count)]


def requests_for(concurrency: int, requested: int | None) -> int:
    return requested if requested else max(MIN_REQUESTS, 2 * concurrency)


async def run_bench(
    targets: dict[str, Target],
    concurrencies: Sequence[int],
    texts: Sequence[str],
    seed: int = 0,
    requests: int | None = None,
    warmup: int = 2,
    timeout: float | None = None,
    speaker_id: str = "",
    log=None,  # noqa: ANN001 - print-like progress callback
) -> list[dict[str, Any]]:
    """Each level on each target in turn (split, then monolith, per level, so slow drift in the
    machine's load hits both alike); returns one dict per level."""
    for name, target in targets.items():
        if warmup:
            warm = make_requests(warmup, texts, seed + 1_000_000, speaker_id)  # not the measured requests
            records, _ = await run_level(target, warm, warmup, timeout)
            failed = [r.error for r in records if not r.ok]
            if failed and log:
                log(f"warm-up on {name}: {len(failed)} of {warmup} requests failed ({failed[0]})")
    levels = []
    for concurrency in concurrencies:
        batch = make_requests(requests_for(concurrency, requests), texts, seed, speaker_id)
        level: dict[str, Any] = {"concurrency": concurrency, "requests": len(batch)}
        for name, target in targets.items():
            records, wall = await run_level(target, batch, concurrency, timeout)
            stats = summarize(name, concurrency, records, wall)
            level[name] = stats
            level[f"{name}_requests"] = [_request_row(r) for r in records]
            if log:
                log(f"  C={concurrency:<3} {name:<9} {len(batch)} requests in {wall:.1f} s")
        if "split" in level and "monolith" in level:
            level["split_over_monolith"] = compare(level["split"], level["monolith"])
        levels.append(level)
    return levels


def _request_row(record: RequestRecord) -> dict[str, Any]:
    return {
        "ttfa_seconds": record.ttfa,
        "stage_first_chunk_seconds": record.stage_seconds,
        "first_chunk_llm_flow_vocoder_seconds": record.stages,
        "audio_seconds": record.audio_seconds,
        "duration_seconds": record.finished - record.submitted,
        "chunks": len(record.arrivals),
        "underruns": record.underruns,
        "error": record.error,
    }


# ---------------------------------------------------------------------------------------------
# The monolith and the command line (services/cli/bench_cli.py).


def _parse_concurrencies(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError("concurrencies must be integers >= 1")
    return values


def gateway_config() -> Any:
    """The COSYVOICE_GATEWAY_* settings (chunk schedule, queue depth) without a gateway."""
    from gateway.config import GatewayConfig
    from services.common.config import load_config

    unused = "unused:0"  # the gateway's stage addresses mean nothing here
    return load_config(GatewayConfig, ["--llm-addr", unused, "--flow-addr", unused, "--vocoder-addr", unused,
                                       "--frontend-addr", unused])


async def load_monolith(model_dir: Path, device: str, num_threads: int) -> Any:
    """The monolith with the settings the stage processes get: the same flags, and the same
    COSYVOICE_<STAGE>_* environment variables (so e.g. COSYVOICE_FLOW_MAX_BATCH_SIZE=1 applies
    to both systems); the chunk schedule and queue depth from the COSYVOICE_GATEWAY_* ones."""
    from services.common.config import load_config
    from services.flow.config import FlowServiceConfig
    from services.llm.config import LLMServiceConfig
    from services.pipeline.monolith import MonolithPipeline
    from services.vocoder.config import VocoderServiceConfig

    flags = ["--model-dir", str(model_dir), "--device", device, "--num-threads", str(num_threads)]
    gateway = gateway_config()
    return await MonolithPipeline.start(
        load_config(LLMServiceConfig, flags), load_config(FlowServiceConfig, flags),
        load_config(VocoderServiceConfig, flags), gateway.chunk_policy, gateway.stage_queue_chunks,
    )


def main(argv: Sequence[str] | None = None) -> None:
    from services.cli.bench_cli import main as cli_main

    cli_main(argv)
