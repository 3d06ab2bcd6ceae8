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
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AsyncIterator, Protocol, Sequence

from services.cli.bench_report import (
    SYSTEMS,
    RequestRecord,
    jsonable,
    check_targets,
    compare,
    format_table,
    format_targets,
    summarize,
)

DEFAULT_CONCURRENCIES = (1, 4, 16)
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
# Command line.


def _parse_concurrencies(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError("concurrencies must be integers >= 1")
    return values


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cosyvoice bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model-dir", help="CosyVoice2 model directory (default: the tiny model, written if missing)")
    parser.add_argument("--address", help="benchmark this running gateway instead of starting the split stack "
                        "(the monolith still loads --model-dir: pass the gateway's)")
    parser.add_argument("--only", choices=SYSTEMS, help="benchmark one system only")
    parser.add_argument("--concurrency", type=_parse_concurrencies, default=list(DEFAULT_CONCURRENCIES),
                        help="comma-separated levels (default 1,4,16)")
    parser.add_argument("--requests", type=int, default=None,
                        help=f"requests per level (default: 2 × C, at least {MIN_REQUESTS})")
    parser.add_argument("--text", action="append", default=None,
                        help="a request text; repeat for several, used round-robin (default: 4 built-in sentences)")
    parser.add_argument("--texts-file", help="request texts, one per line")
    parser.add_argument("--seed", type=int, default=0, help="request i uses seed SEED + i (the same on both systems)")
    parser.add_argument("--speaker-id", default="", help="preset speaker (default: the model's)")
    parser.add_argument("--warmup", type=int, default=2, help="unmeasured requests per system before the levels")
    parser.add_argument("--num-threads", type=int, default=1,
                        help="torch CPU threads per stage, split and monolith alike (default 1; 0: torch's default)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="cuda: split stage i on GPU i mod count")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per request")
    parser.add_argument("--start-timeout", type=float, default=600.0, help="seconds to wait for each stage process")
    parser.add_argument("--json", dest="json_path", help="also write the results as JSON to this path")
    return parser


def _texts(args: argparse.Namespace) -> list[str]:
    texts = list(args.text or [])
    if args.texts_file:
        texts += [line.strip() for line in Path(args.texts_file).read_text().splitlines() if line.strip()]
    return texts or list(DEFAULT_TEXTS)


def _thread_env(num_threads: int) -> dict[str, str]:
    env = dict(os.environ)
    if num_threads > 0:
        env.update({name: str(num_threads) for name in THREAD_ENV})
    return env


async def _load_monolith(model_dir: Path, device: str, num_threads: int) -> Any:
    """The monolith with the settings the stage processes get: the same flags, and the same
    COSYVOICE_<STAGE>_* environment variables (so e.g. COSYVOICE_FLOW_MAX_BATCH_SIZE=1 applies
    to both systems); the chunk schedule and queue depth from the COSYVOICE_GATEWAY_* ones."""
    from gateway.config import GatewayConfig
    from services.common.config import load_config
    from services.flow.config import FlowServiceConfig
    from services.llm.config import LLMServiceConfig
    from services.pipeline.monolith import MonolithPipeline
    from services.vocoder.config import VocoderServiceConfig

    flags = ["--model-dir", str(model_dir), "--device", device, "--num-threads", str(num_threads)]
    unused = "unused:0"  # the gateway's stage addresses mean nothing here
    gateway = load_config(GatewayConfig, ["--llm-addr", unused, "--flow-addr", unused, "--vocoder-addr", unused,
                                          "--frontend-addr", unused])
    return await MonolithPipeline.start(
        load_config(LLMServiceConfig, flags), load_config(FlowServiceConfig, flags),
        load_config(VocoderServiceConfig, flags), gateway.chunk_policy, gateway.stage_queue_chunks,
    )


async def _run(args: argparse.Namespace, address: str | None, model_dir: Path | None, texts: list[str]) -> list[dict]:
    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    targets: dict[str, Any] = {}
    try:
        if address is not None:
            targets["split"] = GatewayTarget(address)
        if model_dir is not None:
            log(f"loading the monolith from {model_dir}")
            targets["monolith"] = MonolithTarget(await _load_monolith(model_dir, args.device, args.num_threads))
        return await run_bench(
            targets, args.concurrency, texts, args.seed, args.requests, args.warmup, args.timeout,
            args.speaker_id, log,
        )
    finally:
        for target in targets.values():
            await target.close()


def main(argv: Sequence[str] | None = None) -> None:
    from services.cli.up import ensure_model_dir, start_stack, stop_all, wait_serving

    if argv and argv[0] == "voices":  # `cosyvoice bench voices`: registered vs inline prompts
        from services.cli.bench_voices import main as voices_main

        voices_main(argv[1:])
        return
    args = build_parser().parse_args(argv)
    texts = _texts(args)
    if args.num_threads < 0 or (args.requests is not None and args.requests < 1) or args.warmup < 0:
        raise SystemExit("cosyvoice bench: --num-threads and --warmup must be >= 0, --requests >= 1")
    # Before torch is imported in this process (tiny-model writer, monolith): OpenMP reads it once.
    os.environ.update({k: v for k, v in _thread_env(args.num_threads).items() if k in THREAD_ENV})
    run_split = args.only in (None, "split")
    run_monolith = args.only in (None, "monolith")
    model_dir = ensure_model_dir(args.model_dir) if (run_monolith or not args.address) else None
    children = []
    address = args.address if run_split else None
    try:
        if run_split and not args.address:
            print(f"starting the split stack (5 processes, {args.num_threads or 'default'} torch thread(s) per stage)",
                  file=sys.stderr, flush=True)
            stage_args = ["--num-threads", str(args.num_threads), "--log-level", "WARNING"]
            children = start_stack(model_dir, args.device, "127.0.0.1", 0, args.start_timeout, stage_args,
                                   ["--log-level", "WARNING"], _thread_env(args.num_threads))
            address = children[0].address
            if not wait_serving(address, args.start_timeout):
                raise SystemExit(f"cosyvoice bench: the gateway at {address} did not become SERVING")
        levels = asyncio.run(_run(args, address, model_dir if run_monolith else None, texts))
    finally:
        stop_all(children, grace=10.0)
    targets = check_targets(levels)
    where = f"gateway {args.address}" if args.address else "split stack started here (5 processes, loopback)"
    print(f"\ncosyvoice bench: model {model_dir or '(the gateway’s)'}; {where}; device {args.device}; "
          f"torch threads per stage {args.num_threads or 'default'}; {len(texts)} texts, seeds from {args.seed}\n")
    print(format_table(levels))
    if targets:
        print("targets:")
        print(format_targets(targets))
    if args.json_path:
        result = {
            "config": {
                "model_dir": str(model_dir) if model_dir else None, "address": args.address,
                "device": args.device, "num_threads": args.num_threads, "concurrency": args.concurrency,
                "requests": args.requests, "warmup": args.warmup, "seed": args.seed, "texts": texts,
                "speaker_id": args.speaker_id, "cpu_count": os.cpu_count(),
            },
            "levels": levels,
            "targets": targets,
        }
        Path(args.json_path).write_text(json.dumps(jsonable(result), indent=2, ensure_ascii=False) + "\n")
        print(f"\nwrote {args.json_path}")
