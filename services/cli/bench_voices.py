"""`cosyvoice bench voices`: what a registered speaker saves over sending the prompt each time.

A zero-shot request with an inline prompt pays for prompt processing before the LLM can start:
the upload, decoding, two resamplings, three feature transforms and two ONNX models in the
frontend stage. A registered speaker skips all of it (the features are read from the registry).
This runs the same requests both ways in one run, pair by pair in alternating order (same
text, same seed, same recording), one at a time so queueing does not blur the difference, and
reports time to first audio (client side) for each and their difference and ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import AsyncIterator, Callable, Sequence

from services.cli.bench import BenchRequest, Received, measure
from services.cli.bench_report import RequestRecord, percentile

DEFAULT_TEXTS = ("Hello world.", "Thanks for calling, how can I help?", "The meeting starts at noon.")
SPEAKER = "bench-voice"


class VoiceTarget:
    """Streaming zero-shot Synthesize calls with the voice inline (`prompt`) or by name."""

    def __init__(self, channel: object, audio: bytes | None, transcript: str, speaker: str = "") -> None:
        from services.common.pb import tts_pb2, tts_pb2_grpc

        self._pb = tts_pb2
        self.stub = tts_pb2_grpc.TextToSpeechStub(channel)
        self.audio, self.transcript, self.speaker = audio, transcript, speaker

    async def stream(self, request: BenchRequest) -> AsyncIterator[Received]:
        pb = self._pb
        message = pb.SynthesizeRequest(
            text=request.text, seed=request.seed, stream=True, mode=pb.SYNTHESIS_MODE_ZERO_SHOT,
            encoding=pb.AUDIO_ENCODING_PCM_F32LE,
        )
        if self.audio is not None:
            message.prompt.CopyFrom(pb.PromptAudio(audio=self.audio, text=self.transcript))
        else:
            message.speaker_id = self.speaker
        async for response in self.stub.Synthesize(message):
            yield Received(len(response.audio) // 4, response.sample_rate, None)


def _ttfa(records: Sequence[RequestRecord]) -> list[float]:
    return [r.arrivals[0] - r.submitted for r in records if r.error is None and r.arrivals]


async def run(address: str, audio: bytes, transcript: str, texts: Sequence[str], pairs: int, seed: int,
              warmup: int, timeout: float,
              scrape: Callable[[], dict[str, tuple[int, float]] | None] | None = None) -> dict:
    import grpc

    from services.common.pb import speakers_pb2, speakers_pb2_grpc, tts_pb2
    from services.common.server import CHANNEL_OPTIONS

    async with grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS) as channel:
        await speakers_pb2_grpc.SpeakersStub(channel).RegisterSpeaker(
            speakers_pb2.RegisterSpeakerRequest(
                name=SPEAKER, prompt=tts_pb2.PromptAudio(audio=audio, text=transcript), overwrite=True
            ),
            timeout=timeout,
        )
        targets = {"inline": VoiceTarget(channel, audio, transcript), "registered": VoiceTarget(channel, None, "", SPEAKER)}
        records: dict[str, list[RequestRecord]] = {name: [] for name in targets}
        before = None
        for index in range(warmup + pairs):
            if index == warmup and scrape is not None:
                before = scrape()
            request = BenchRequest(index, texts[index % len(texts)], seed + index)
            order = list(targets) if index % 2 == 0 else list(reversed(targets))
            for name in order:  # alternate who goes first: neither side always runs on a warmer cache
                record = await measure(targets[name], request, timeout)
                if index >= warmup:
                    records[name].append(record)
    result: dict = {"pairs": pairs, "systems": {}}
    after = scrape() if scrape is not None else None
    if before is not None and after is not None:  # only the measured requests: no warm-up
        result["voice_resolution"] = {
            kind: (count - before.get(kind, (0, 0.0))[0], (total - before.get(kind, (0, 0.0))[1])
                   / max(1, count - before.get(kind, (0, 0.0))[0]))
            for kind, (count, total) in after.items() if count > before.get(kind, (0, 0.0))[0]
        }
    for name, recs in records.items():
        ttfa = _ttfa(recs)
        result["systems"][name] = {
            "requests": len(recs), "errors": sum(r.error is not None for r in recs),
            "ttfa_p50": percentile(ttfa, 50), "ttfa_p90": percentile(ttfa, 90), "ttfa_mean": sum(ttfa) / max(1, len(ttfa)),
            "first_error": next((r.error for r in recs if r.error), None),
        }
    # Paired: the same text and seed both ways, so per-pair differences cancel what the two
    # requests share (LLM, flow and vocoder work) and leave the voice path plus noise.
    pairs_ok = [(a, b) for a, b in zip(records["inline"], records["registered"])
                if a.error is None and b.error is None and a.arrivals and b.arrivals]
    differences = [(a.arrivals[0] - a.submitted) - (b.arrivals[0] - b.submitted) for a, b in pairs_ok]
    result["paired_saving_median_seconds"] = percentile(differences, 50) if differences else float("nan")
    inline, registered = result["systems"]["inline"], result["systems"]["registered"]
    result["saving_p50_seconds"] = inline["ttfa_p50"] - registered["ttfa_p50"]
    result["ratio_p50"] = registered["ttfa_p50"] / inline["ttfa_p50"] if inline["ttfa_p50"] else float("nan")
    return result


def voice_seconds(metrics_address: str) -> dict[str, tuple[int, float]] | None:
    """{voice kind: (requests, total seconds)} of the gateway's voice-resolution histogram: the
    server-side cost a registered speaker skips, free of the noise around time to first audio."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    try:
        with urllib.request.urlopen(f"http://{metrics_address}/metrics", timeout=10) as response:
            text = response.read().decode()
    except OSError:
        return None
    totals: dict[str, list[float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.startswith("cosyvoice_gateway_voice_duration_seconds_"):
                entry = totals.setdefault(sample.labels.get("voice", ""), [0, 0.0])
                if sample.name.endswith("_count"):
                    entry[0] = int(sample.value)
                elif sample.name.endswith("_sum"):
                    entry[1] = sample.value
    return {kind: (int(count), total) for kind, (count, total) in totals.items()}


def format_result(result: dict) -> str:
    lines = [f"{'voice':<12}{'req':>5}{'err':>5}{'TTFA p50':>12}{'TTFA p90':>12}{'TTFA mean':>12}"]
    for name, s in result["systems"].items():
        lines.append(f"{name:<12}{s['requests']:>5}{s['errors']:>5}{s['ttfa_p50'] * 1000:>10.1f}ms"
                     f"{s['ttfa_p90'] * 1000:>10.1f}ms{s['ttfa_mean'] * 1000:>10.1f}ms")
    lines.append(f"registered saves {result['saving_p50_seconds'] * 1000:.1f} ms of time to first audio at p50 "
                 f"(registered / inline = {result['ratio_p50']:.3f}); median of the per-pair differences "
                 f"{result.get('paired_saving_median_seconds', float('nan')) * 1000:.1f} ms")
    for kind, (count, mean) in sorted(result.get("voice_resolution", {}).items()):
        lines.append(f"gateway voice resolution, {kind}: {mean * 1000:.1f} ms on average over {count} requests")
    if "voice_resolution" in result:
        lines.append("(inline: the frontend encodes the recording; registered: one store read. The rest of the "
                     "difference in time to first audio is noise between runs of the same work.)")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    from services.cli.bench import _thread_env
    from services.cli.up import ensure_model_dir, start_stack, stop_all, wait_serving

    parser = argparse.ArgumentParser(prog="cosyvoice bench voices", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--address", help="a running gateway (default: start the stack here)")
    parser.add_argument("--model-dir", help="model directory (default: the tiny model)")
    parser.add_argument("--prompt-audio", help="prompt recording (default: the tiny model's prompt_sample.wav)")
    parser.add_argument("--prompt-text", help="its transcript (default: prompt_sample.txt)")
    parser.add_argument("--pairs", type=int, default=10, help="measured request pairs")
    parser.add_argument("--warmup", type=int, default=2, help="unmeasured pairs first")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-threads", type=int, default=1, help="torch threads per stage")
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument("--json", dest="json_path", help="also write the result as JSON")
    args = parser.parse_args(argv)
    if args.pairs < 1 or args.warmup < 0:
        raise SystemExit("cosyvoice bench voices: --pairs must be >= 1 and --warmup >= 0")
    model_dir = ensure_model_dir(args.model_dir) if not (args.address and args.prompt_audio) else None
    audio_path = Path(args.prompt_audio) if args.prompt_audio else model_dir / "prompt_sample.wav"
    try:
        audio = audio_path.read_bytes()
        transcript = args.prompt_text or (audio_path.with_suffix(".txt")).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise SystemExit(f"cosyvoice bench voices: cannot read the prompt: {exc}") from None
    children = []
    try:
        address = args.address
        if not address:
            print("starting the stack (5 processes)", file=sys.stderr, flush=True)
            children = start_stack(model_dir, "cpu", "127.0.0.1", 0, 600.0,
                                   ["--num-threads", str(args.num_threads), "--log-level", "WARNING",
                                    "--metrics-port", "0"],
                                   ["--log-level", "WARNING", "--speaker-db", ":memory:", "--metrics-port", "0"],
                                   _thread_env(args.num_threads))
            address = children[0].address
            if not wait_serving(address, 600.0):
                raise SystemExit(f"cosyvoice bench voices: the gateway at {address} did not become SERVING")
        gateway = next((c for c in children if c.name == "gateway" and c.metrics_address), None)
        scrape = (lambda: voice_seconds(gateway.metrics_address)) if gateway is not None else None
        result = asyncio.run(run(address, audio, transcript, DEFAULT_TEXTS, args.pairs, args.seed, args.warmup,
                                 args.timeout, scrape))
    finally:
        stop_all(children, grace=10.0)
    result["config"] = {"address": args.address, "model_dir": str(model_dir) if model_dir else None,
                        "prompt_audio": str(audio_path), "num_threads": args.num_threads}
    print(format_result(result))
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.json_path}")
