"""`cosyvoice synth "text" -o out.wav`: stream from a running gateway into a WAV file."""

from __future__ import annotations

import argparse
import sys
import time
import wave
from typing import Sequence

import grpc

from services.common.pb import tts_pb2, tts_pb2_grpc
from services.common.server import CHANNEL_OPTIONS

DEFAULT_ADDRESS = "127.0.0.1:50051"


def synthesize_to_wav(address: str, text: str, out_path: str, speaker_id: str = "", seed: int | None = None,
                      timeout: float = 600.0) -> dict[str, float]:
    """Stream PCM into `out_path`; returns time to first audio, wall time, audio seconds, RTF."""
    request = tts_pb2.SynthesizeRequest(
        text=text, speaker_id=speaker_id, encoding=tts_pb2.AUDIO_ENCODING_PCM_S16LE, stream=True
    )
    if seed is not None:
        request.seed = seed
    started = time.perf_counter()
    first_audio = None
    num_bytes = 0
    with grpc.insecure_channel(address, options=CHANNEL_OPTIONS) as channel, wave.open(out_path, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        for response in tts_pb2_grpc.TextToSpeechStub(channel).Synthesize(request, timeout=timeout):
            if first_audio is None:
                first_audio = time.perf_counter() - started
                wav.setframerate(response.sample_rate)
            wav.writeframes(response.audio)  # each chunk lands on disk as it arrives
            num_bytes += len(response.audio)
            sample_rate = response.sample_rate
    wall = time.perf_counter() - started
    audio_seconds = num_bytes / 2 / sample_rate if num_bytes else 0.0
    return {
        "time_to_first_audio_seconds": first_audio or wall,
        "wall_seconds": wall,
        "audio_seconds": audio_seconds,
        "real_time_factor": wall / audio_seconds if audio_seconds else float("inf"),
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="cosyvoice synth", description=__doc__)
    parser.add_argument("text")
    parser.add_argument("-o", "--output", required=True, help="WAV file to write")
    parser.add_argument("--address", default=DEFAULT_ADDRESS, help=f"gateway host:port (default {DEFAULT_ADDRESS})")
    parser.add_argument("--speaker-id", default="", help="preset speaker (default: the model's)")
    parser.add_argument("--seed", type=int, default=None, help="same seed, same audio")
    args = parser.parse_args(argv)
    try:
        stats = synthesize_to_wav(args.address, args.text, args.output, args.speaker_id, args.seed)
    except grpc.RpcError as error:
        print(f"cosyvoice synth: {error.code().name}: {error.details()}", file=sys.stderr)
        raise SystemExit(1) from None
    print(
        f"wrote {args.output}: {stats['audio_seconds']:.2f} s of audio; "
        f"time to first audio {stats['time_to_first_audio_seconds'] * 1000:.0f} ms; "
        f"real-time factor {stats['real_time_factor']:.3f}"
    )
