"""`cosyvoice bench stages`: each model stage alone over gRPC, at several concurrency levels.

Where the end-to-end bench shows one number per level, this one shows what each stage does
with C streams on its own, so the stage that stops scaling is named:

- llm: `Generate` calls for the bench texts; throughput in speech tokens/s;
- flow: `Decode` streams replaying the LLM's own tokens, cut by the gateway's chunk schedule
  (COSYVOICE_GATEWAY_* settings); throughput in mel frames/s;
- vocoder: `Vocode` streams replaying the flow's own mel chunks; throughput in audio-s/s.

Before its levels each stage gets one unmeasured call per text (all at once): it warms the
stage for every input shape and records what the next stage replays, so request i of every
level sends input i mod #texts.

Each stream sends its whole input as fast as the stage takes it (a saturating closed loop with
at most C streams in flight), so this measures a stage's capacity, not a paced request. Every
level reports its throughput and the ratio to the first level's (normally C=1): the batching
gain; and, read from the stage's own /metrics, the mean batch size (items per compute call;
the LLM: sequences per engine step) and how busy the stage's compute thread was (its compute
time / the level's wall time: near 100 %, the stage is the bottleneck). The stages run in turn, never at once, so each has the CPU to itself.
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Sequence

from services.cli.bench_report import percentile

STAGE_UNITS = {"llm": "tokens/s", "flow": "mel frames/s", "vocoder": "audio-s/s"}
# Each stage's batch histograms (docs/metrics.md): items per compute call, and its wall time.
BATCH_METRICS = {
    "llm": ("cosyvoice_llm_step_batch_size", "cosyvoice_llm_step_duration_seconds"),
    "flow": ("cosyvoice_flow_batch_size", "cosyvoice_flow_batch_duration_seconds"),
    "vocoder": ("cosyvoice_vocoder_batch_size", "cosyvoice_vocoder_batch_duration_seconds"),
}
MEL_FRAMES_PER_SECOND = 50  # CosyVoice 2: 24 kHz audio, 480 samples a frame


@dataclass
class Outcome:
    units: float = 0.0  # tokens, mel frames or audio seconds
    first_output: float = math.nan  # seconds from the call to its first non-empty reply
    error: str | None = None


@dataclass
class StageLevel:
    stage: str
    concurrency: int
    requests: int
    errors: int
    wall_seconds: float
    units: float
    throughput: float  # units per wall second, all streams together
    first_output_p50: float
    ratio: float = math.nan  # throughput / the first level's
    mean_batch: float = math.nan  # items per compute call (LLM: sequences per step), from /metrics
    busy: float = math.nan  # the compute thread's busy time / the level's wall time
    first_errors: list[str] = field(default_factory=list)


def _describe(error: BaseException) -> str:
    code = getattr(error, "code", None)
    if callable(code):  # grpc.aio.AioRpcError
        return f"{code().name}: {error.details()}"  # type: ignore[attr-defined]
    return f"{type(error).__name__}: {error}"


async def closed_loop(
    call: Callable[[int], Awaitable[Outcome]], count: int, concurrency: int, timeout: float | None
) -> tuple[list[Outcome], float]:
    """`call(i)` for i < count with at most `concurrency` in flight; errors are recorded."""
    slots = asyncio.Semaphore(concurrency)

    async def one(index: int) -> Outcome:
        async with slots:
            try:
                async with asyncio.timeout(timeout):
                    return await call(index)
            except Exception as error:  # noqa: BLE001 - reported per request
                return Outcome(error=_describe(error))

    started = time.perf_counter()
    outcomes = await asyncio.gather(*(one(i) for i in range(count)))
    return list(outcomes), time.perf_counter() - started


def summarize_stage(stage: str, concurrency: int, outcomes: Sequence[Outcome], wall: float) -> StageLevel:
    done = [o for o in outcomes if o.error is None]
    units = sum(o.units for o in done)
    errors = sorted({o.error for o in outcomes if o.error is not None})
    return StageLevel(
        stage, concurrency, len(outcomes), len(outcomes) - len(done), wall, units,
        units / wall if wall > 0 else math.nan,
        percentile([o.first_output for o in done if not math.isnan(o.first_output)], 50),
        first_errors=errors[:3],
    )


def scrape_batches(url: str, stage: str) -> tuple[float, float, float]:
    """(calls, items, compute seconds) so far, from the stage's /metrics; nan if unreachable."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    size, duration = BATCH_METRICS[stage]
    values = {}
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            text = response.read().decode()
    except OSError:
        return math.nan, math.nan, math.nan
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            values[sample.name] = values.get(sample.name, 0.0) + sample.value
    return (values.get(f"{size}_count", math.nan), values.get(f"{size}_sum", math.nan),
            values.get(f"{duration}_sum", math.nan))


def add_ratios(levels: list[StageLevel]) -> list[StageLevel]:
    base = levels[0].throughput if levels else math.nan
    for level in levels:
        level.ratio = level.throughput / base if base and not math.isnan(base) else math.nan
    return levels


class StageClients:
    """Stubs of the three model stages and what each recorded for the next one."""

    def __init__(self, addresses: dict[str, str]) -> None:
        import grpc

        from services.common.pb import flow_pb2_grpc, llm_pb2_grpc, vocoder_pb2_grpc
        from services.common.server import CHANNEL_OPTIONS

        self.channels = {name: grpc.aio.insecure_channel(addresses[name], options=CHANNEL_OPTIONS)
                         for name in ("llm", "flow", "vocoder")}
        self.llm = llm_pb2_grpc.SpeechTokenGeneratorStub(self.channels["llm"])
        self.flow = flow_pb2_grpc.FlowDecoderStub(self.channels["flow"])
        self.vocoder = vocoder_pb2_grpc.VocoderStub(self.channels["vocoder"])
        self.tokens: dict[int, list[int]] = {}  # request index → the LLM's speech tokens
        self.mels: dict[int, list[tuple[Any, bool]]] = {}  # request index → the flow's mel chunks

    async def close(self) -> None:
        for channel in self.channels.values():
            await channel.close()


async def _llm_call(clients: StageClients, index: int, text: str, seed: int) -> Outcome:
    from services.common.pb import llm_pb2

    started = time.perf_counter()
    outcome = Outcome()
    tokens: list[int] = []
    request = llm_pb2.GenerateRequest(request_id=f"bench-llm-{index}", text=text,
                                      sampling=llm_pb2.SamplingParams(seed=seed))
    async for response in clients.llm.Generate(request):
        if response.tokens and math.isnan(outcome.first_output):
            outcome.first_output = time.perf_counter() - started
        tokens.extend(response.tokens)
    outcome.units = len(tokens)
    clients.tokens.setdefault(index, tokens)
    return outcome


async def _flow_call(clients: StageClients, index: int, tokens: list[int], policy: Any) -> Outcome:
    from services.common.chunking import TokenFeed
    from services.common.pb import flow_pb2

    started = time.perf_counter()
    outcome = Outcome()
    call = clients.flow.Decode()
    await call.write(flow_pb2.DecodeRequest(start=flow_pb2.DecodeStart(request_id=f"bench-flow-{index}")))
    for piece, chunk in TokenFeed(policy).push(tokens, finished=True):
        await call.write(flow_pb2.DecodeRequest(chunk=flow_pb2.TokenChunk(tokens=piece, finalize=chunk.is_final)))
    await call.done_writing()
    mels = []
    async for response in call:
        frames = int(response.mel.shape[-1]) if response.mel.shape else 0
        if frames and math.isnan(outcome.first_output):
            outcome.first_output = time.perf_counter() - started
        outcome.units += frames
        mels.append((response.mel, response.is_final))
    clients.mels.setdefault(index, mels)
    return outcome


async def _vocoder_call(clients: StageClients, index: int, mels: list[tuple[Any, bool]], seed: int) -> Outcome:
    from services.common.pb import vocoder_pb2

    started = time.perf_counter()
    outcome = Outcome()
    call = clients.vocoder.Vocode()
    await call.write(vocoder_pb2.VocodeRequest(start=vocoder_pb2.VocodeStart(request_id=f"bench-voc-{index}",
                                                                             seed=seed)))
    for mel, is_final in mels:
        await call.write(vocoder_pb2.VocodeRequest(chunk=vocoder_pb2.MelChunk(mel=mel, finalize=is_final)))
    await call.done_writing()
    async for response in call:
        samples = math.prod(response.audio.shape) if response.audio.shape else 0
        if samples and math.isnan(outcome.first_output):
            outcome.first_output = time.perf_counter() - started
        outcome.units += samples / response.sample_rate if response.sample_rate else 0.0
    return outcome


def requests_for(concurrency: int, requested: int | None) -> int:
    return requested if requested else max(4, 2 * concurrency)


async def run_stages(
    addresses: dict[str, str],
    concurrencies: Sequence[int],
    texts: Sequence[str],
    policy: Any,  # services.common.chunking.ChunkPolicy
    seed: int = 0,
    requests: int | None = None,
    timeout: float | None = None,
    log: Callable[[str], None] | None = None,
    metrics: dict[str, str] | None = None,
) -> dict[str, list[StageLevel]]:
    """Every level of the llm, then the flow on the recorded tokens, then the vocoder on the
    recorded mel; returns each stage's levels with ratios to its first level. With `metrics`
    (stage → its /metrics URL) each level also gets the mean batch size and how busy the
    stage's compute thread was."""
    clients = StageClients(addresses)
    inputs: dict[str, list[Any]] = {"llm": list(texts)}
    calls: dict[str, Callable[[int], Awaitable[Outcome]]] = {
        "llm": lambda i: _llm_call(clients, i, texts[i % len(texts)], seed + i),
        "flow": lambda i: _flow_call(clients, i, inputs["flow"][i % len(inputs["flow"])], policy),
        "vocoder": lambda i: _vocoder_call(clients, i, inputs["vocoder"][i % len(inputs["vocoder"])], seed + i),
    }
    results: dict[str, list[StageLevel]] = {}
    try:
        for stage, call in calls.items():
            # One recorded input per text (request i of every level replays input i mod #texts).
            if stage == "flow":
                inputs["flow"] = [clients.tokens[i] for i in range(len(texts)) if clients.tokens.get(i)]
            elif stage == "vocoder":
                inputs["vocoder"] = [clients.mels[i] for i in range(len(inputs["flow"])) if clients.mels.get(i)]
            if not inputs[stage]:
                raise RuntimeError(f"no {stage} inputs were recorded: the stage before it failed")
            # Unmeasured: one call per distinct input, which records the next stage's inputs
            # and warms each stage for every chunk length it will see.
            warm = len(inputs[stage])
            await closed_loop(call, warm, warm, timeout)
            levels = []
            url = (metrics or {}).get(stage)
            for concurrency in concurrencies:
                before = scrape_batches(url, stage) if url else None
                outcomes, wall = await closed_loop(call, requests_for(concurrency, requests), concurrency, timeout)
                level = summarize_stage(stage, concurrency, outcomes, wall)
                if before is not None:
                    after = scrape_batches(url, stage)
                    calls, items, busy = (a - b for a, b in zip(after, before))
                    level.mean_batch = items / calls if calls else math.nan
                    level.busy = busy / wall if wall > 0 else math.nan
                levels.append(level)
                if log:
                    log(f"  {stage:<8} C={concurrency:<3} {len(outcomes)} requests in {wall:.1f} s")
            results[stage] = add_ratios(levels)
    finally:
        await clients.close()
    return results


def _fmt(value: float, spec: str) -> str:
    return "—" if math.isnan(value) else format(value, spec)


def format_stage_table(results: dict[str, list[StageLevel]]) -> str:
    header = (f"{'stage':<8}{'C':>4}{'req':>5}{'err':>4}  {'throughput':>11}  {'unit':<13}{'× 1st':>7}"
              f"  {'first out p50':>13}  {'batch':>5}  {'busy':>5}")
    lines = [header, "-" * len(header)]
    for stage, levels in results.items():
        for s in levels:
            lines.append(f"{stage:<8}{s.concurrency:>4}{s.requests:>5}{s.errors:>4}  {_fmt(s.throughput, '.1f'):>11}  "
                         f"{STAGE_UNITS[stage]:<13}{_fmt(s.ratio, '.2f') + '×':>7}  "
                         f"{_fmt(s.first_output_p50 * 1000, '.1f') + ' ms':>13}  {_fmt(s.mean_batch, '.1f'):>5}  "
                         f"{_fmt(100 * s.busy, '.0f') + ' %':>5}")
            lines.extend(f"{'':>8}error: {e}" for e in s.first_errors)
    return "\n".join(lines)
