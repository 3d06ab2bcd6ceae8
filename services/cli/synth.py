"""`cosyvoice synth "text" -o out.wav`: synthesize through a running gateway into a WAV file.

A client only: grpc and the generated stubs, no torch; the helpers it shares with
`cosyvoice speakers` are in services/cli/client.py, the WAV writing in wav_output.py.
Every failure is one stderr line (`cosyvoice synth: CODE: message` for the gateway's),
exit 1, and no new file.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Sequence

import grpc

from services.cli import connection as connection_flags
from services.cli.client import DEFAULT_ADDRESS, CliError, gateway_channel, in_flag_names, read_input, run_cli
from services.cli.wav_output import WavOutput, open_output
from services.common.pb import tts_pb2, tts_pb2_grpc

SYNTH_TIMEOUT_SECONDS = 600.0
MODES = {
    "sft": tts_pb2.SYNTHESIS_MODE_SFT,
    "zero_shot": tts_pb2.SYNTHESIS_MODE_ZERO_SHOT,
    "cross_lingual": tts_pb2.SYNTHESIS_MODE_CROSS_LINGUAL,
    "instruct2": tts_pb2.SYNTHESIS_MODE_INSTRUCT2,
}


def build_request(args: argparse.Namespace) -> tts_pb2.SynthesizeRequest:
    """The request the flags describe; conflicting flags are a CliError. The gateway checks
    everything else (mode rules, speed range), so its messages stay the single source."""
    if args.prompt_text is not None and args.prompt_audio is None:
        raise CliError("--prompt-text needs --prompt-audio (it is the transcript of that recording)")
    if args.speaker and args.prompt_audio is not None:
        raise CliError("give the voice as --speaker or as --prompt-audio, not both")
    # The gateway rejects speed with stream=true (as the reference): change speed, get one message.
    stream = args.speed is None or args.speed == 1.0
    request = tts_pb2.SynthesizeRequest(
        text=read_text(args.text), encoding=tts_pb2.AUDIO_ENCODING_PCM_S16LE, stream=stream,
        instruct_text=args.instruct or "",
    )
    if args.prompt_audio is not None:
        audio = read_input(args.prompt_audio, "prompt audio")
        request.prompt.CopyFrom(tts_pb2.PromptAudio(audio=audio, text=args.prompt_text or ""))
    elif args.speaker:
        request.speaker_id = args.speaker
    if args.mode is not None:
        request.mode = MODES[args.mode]
    if args.seed is not None:
        request.seed = args.seed
    if args.speed is not None:
        request.speed = args.speed
    if args.no_text_frontend:
        request.text_frontend = False
    return request


def read_text(value: str) -> str:
    """The TEXT argument; `-` reads UTF-8 text from stdin."""
    if value != "-":
        return value
    try:
        text = sys.stdin.buffer.read().decode("utf-8")
    except UnicodeDecodeError as error:
        raise CliError(f"the text on stdin is not UTF-8 ({error.reason} at byte {error.start})") from None
    except OSError as error:
        raise CliError(f"cannot read the text from stdin: {error.strerror or error}") from None
    if not text.strip():
        raise CliError("no text on stdin (TEXT is -)")
    return text.strip()


def _broken_stream(error: grpc.RpcError, sink: WavOutput) -> CliError:
    """An error after audio has arrived: a gateway that died mid-stream is not one that
    cannot be reached, whatever the channel's state says now."""
    code = error.code()
    details = in_flag_names(error.details() or "") or "no details"
    return CliError(f"{code.name}: the stream broke after {sink.audio_seconds:.2f} s of audio ({details})")


def synthesize_to_wav(address: str, request: tts_pb2.SynthesizeRequest, out_path: str,
                      timeout: float = SYNTH_TIMEOUT_SECONDS,
                      connection: connection_flags.Connection | None = None) -> dict[str, float]:
    """Write the audio into `out_path` (`-`: stdout); returns time to first audio, wall time,
    audio seconds, RTF. On any failure nothing is left at `out_path` that was not there before."""
    sink = open_output(out_path)
    started = time.perf_counter()
    first_audio: float | None = None
    try:
        with gateway_channel(address, connection) as channel:
            try:
                for response in tts_pb2_grpc.TextToSpeechStub(channel).Synthesize(request, timeout=timeout):
                    first_audio = first_audio if first_audio is not None else time.perf_counter() - started
                    sink.write(response.sample_rate, response.audio)
            except grpc.RpcError as error:
                if sink.data_bytes:
                    raise _broken_stream(error, sink) from None
                raise  # gateway_channel tells an unreachable gateway from the gateway's own errors
        sink.finish()
    except BaseException:
        sink.discard()
        raise
    wall = time.perf_counter() - started
    audio_seconds = sink.audio_seconds
    return {
        "time_to_first_audio_seconds": first_audio if first_audio is not None else wall,
        "wall_seconds": wall,
        "audio_seconds": audio_seconds,
        "real_time_factor": wall / audio_seconds if audio_seconds else float("inf"),
    }


def _seed(value: str) -> int:
    seed = int(value)
    if not 0 <= seed < 2**64:
        raise argparse.ArgumentTypeError(f"{value} is not in [0, 2^64)")
    return seed


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cosyvoice synth", description=__doc__.split("\n\n")[0])
    p.add_argument("text", help="text to speak; - reads it (UTF-8) from stdin")
    p.add_argument("-o", "--output", required=True, metavar="OUT.wav",
                   help="WAV file to write (16-bit mono). It is written under a temporary name beside it and "
                        "renamed when the call succeeds, so a failed call leaves no file and keeps an older one. "
                        "- streams the WAV to stdout as the audio arrives (header sizes 0xFFFFFFFF, the streaming "
                        "convention, patched when stdout is a file); messages then go to stderr")
    p.add_argument("--address", default=DEFAULT_ADDRESS, help=f"gateway host:port (default {DEFAULT_ADDRESS})")
    p.add_argument("--mode", choices=list(MODES),
                   help="inference mode (default: the gateway picks: instruct2 with --instruct, zero_shot for "
                        "a voice with a recording and transcript, cross_lingual for prompt audio alone, else sft)")
    p.add_argument("--speaker", "--speaker-id", dest="speaker", default="", metavar="ID",
                   help="a registered or preset speaker (default: the model's first preset)")
    p.add_argument("--prompt-audio", metavar="FILE",
                   help="a recording of the voice (WAV, FLAC, OGG/Opus, MP3; <= 30 s)")
    p.add_argument("--prompt-text", metavar="TEXT",
                   help="transcript of --prompt-audio (zero_shot needs it; cross_lingual and instruct2 do not use it)")
    p.add_argument("--instruct", metavar="TEXT", help='instruct2 instruction, e.g. "Speak slowly."')
    p.add_argument("--speed", type=float, metavar="X",
                   help="speaking rate in [0.5, 2] (default 1). The gateway changes speed only on non-streaming "
                        "requests, so a speed other than 1 sends stream=false: the audio arrives as one message "
                        "at the end instead of chunk by chunk")
    p.add_argument("--no-text-frontend", action="store_true",
                   help="send the text as is: no normalisation or sentence splitting (special tokens pass through)")
    p.add_argument("--seed", type=_seed, default=None, help="same seed, same audio (default: a fresh one)")
    connection_flags.add_arguments(p)  # --tls-ca, --tls-cert, --tls-key, --tls-server-name, --api-key
    return p


def main(argv: Sequence[str] | None = None) -> None:
    args = parser().parse_args(argv)

    def body() -> None:
        request = build_request(args)
        stats = synthesize_to_wav(args.address, request, args.output, connection=connection_flags.from_args(args))
        delivery = "streamed" if request.stream else "one message (speed needs stream=false)"
        print(
            f"wrote {'stdout' if args.output == '-' else args.output}: {stats['audio_seconds']:.2f} s of audio, "
            f"{delivery}; time to first audio {stats['time_to_first_audio_seconds'] * 1000:.0f} ms; "
            f"real-time factor {stats['real_time_factor']:.3f}",
            file=sys.stderr if args.output == "-" else sys.stdout,  # stdout carries the audio
        )

    run_cli("cosyvoice synth", body)
