"""`cosyvoice speakers`: register, list, remove, import and export voices on a running gateway.

A registered speaker is a prompt recording the gateway encoded once; synthesize with it by
name (`cosyvoice synth --speaker NAME`). A client only: grpc and the stubs, no torch.
"""

from __future__ import annotations

import argparse
import sys
from typing import Callable, Sequence

from services.cli import connection as connection_flags
from services.cli.client import DEFAULT_ADDRESS, CliError, gateway_channel, read_input, run_cli
from services.common.pb import speakers_pb2, speakers_pb2_grpc, tts_pb2

PROG = "cosyvoice speakers"
TOKENS_PER_SECOND = 25  # CosyVoice 2's speech tokenizer rate
RPC_TIMEOUT_SECONDS = 120.0  # registration encodes the recording; import/export move whole files
SCHEMAS = {"official": speakers_pb2.SPK2INFO_SCHEMA_OFFICIAL, "async": speakers_pb2.SPK2INFO_SCHEMA_ASYNC}
COLUMNS = ("NAME", "KIND", "TOKENS", "SECONDS", "TRANSCRIPT")


def _stub(channel: object) -> speakers_pb2_grpc.SpeakersStub:
    return speakers_pb2_grpc.SpeakersStub(channel)


def _printable(text: str) -> str:
    """One table cell on one line: control characters (tabs, newlines) are escaped."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def format_table(speakers: Sequence[speakers_pb2.Speaker]) -> list[str]:
    """Rows of NAME, KIND, TOKENS, SECONDS, TRANSCRIPT. Cells are padded to a common width for
    the eye and separated by a tab for programs: split a line on '\\t' and strip each cell
    (names never start or end with whitespace, so stripping is lossless)."""
    rows = [COLUMNS] + [
        (
            _printable(s.name),
            "preset" if s.preset else "registered",
            str(s.num_prompt_tokens),
            f"{s.num_prompt_tokens / TOKENS_PER_SECOND:.2f}",
            _printable(s.prompt_text),
        )
        for s in speakers
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS) - 1)]
    return ["\t".join([*(cell.ljust(w) for cell, w in zip(row, widths)), row[-1]]) for row in rows]


def add(args: argparse.Namespace) -> None:
    request = speakers_pb2.RegisterSpeakerRequest(
        name=args.name,
        prompt=tts_pb2.PromptAudio(audio=read_input(args.prompt_audio, "prompt audio"), text=args.prompt_text),
        overwrite=args.overwrite,
    )
    if args.no_text_frontend:
        request.text_frontend = False
    with gateway_channel(args.address, connection_flags.from_args(args)) as channel:
        speaker = _stub(channel).RegisterSpeaker(request, timeout=RPC_TIMEOUT_SECONDS)
    seconds = speaker.num_prompt_tokens / TOKENS_PER_SECOND
    print(f"registered {speaker.name}: {speaker.num_prompt_tokens} prompt tokens ({seconds:.2f} s); "
          f"transcript {speaker.prompt_text!r}")


def list_(args: argparse.Namespace) -> None:
    with gateway_channel(args.address, connection_flags.from_args(args)) as channel:
        response = _stub(channel).ListSpeakers(speakers_pb2.ListSpeakersRequest(), timeout=RPC_TIMEOUT_SECONDS)
    print("\n".join(format_table(response.speakers)))


def rm(args: argparse.Namespace) -> None:
    with gateway_channel(args.address, connection_flags.from_args(args)) as channel:
        _stub(channel).DeleteSpeaker(speakers_pb2.DeleteSpeakerRequest(name=args.name), timeout=RPC_TIMEOUT_SECONDS)
    print(f"removed {args.name}")


def import_(args: argparse.Namespace) -> None:
    data = read_input(args.file, "speaker file")
    with gateway_channel(args.address, connection_flags.from_args(args)) as channel:
        response = _stub(channel).ImportSpeakers(
            speakers_pb2.ImportSpeakersRequest(
                spk2info=data, overwrite=args.overwrite, skip_existing=args.skip_existing
            ),
            timeout=RPC_TIMEOUT_SECONDS,
        )
    for name in response.names:  # one per line, so a script can read them back
        print(f"registered {name}")
    for name in response.skipped:
        print(f"skipped {name} (the name is taken)")


def export(args: argparse.Namespace) -> None:
    request = speakers_pb2.ExportSpeakersRequest(schema=SCHEMAS[args.schema], names=args.name or [])
    with gateway_channel(args.address, connection_flags.from_args(args)) as channel:
        response = _stub(channel).ExportSpeakers(request, timeout=RPC_TIMEOUT_SECONDS)
    # Written only after the call succeeded, so a refused export leaves no empty file behind.
    try:
        with open(args.file, "wb") as file:
            file.write(response.spk2info)
    except OSError as error:
        raise CliError(f"cannot write {args.file!r}: {error.strerror or error}") from None
    which = ", ".join(args.name) if args.name else "every registered speaker"
    print(f"wrote {args.file} ({args.schema} schema, {len(response.spk2info)} bytes): {which}")


def parser() -> argparse.ArgumentParser:
    # --address lives on each subcommand (it comes after it), with synth's default.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--address", default=DEFAULT_ADDRESS, help=f"gateway host:port (default {DEFAULT_ADDRESS})")
    connection_flags.add_arguments(common)  # --tls-ca, --tls-cert, --tls-key, --tls-server-name, --api-key
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    commands = p.add_subparsers(dest="command", required=True, metavar="{add,list,rm,import,export}")

    c = commands.add_parser("add", parents=[common], help="register a voice from a prompt recording")
    c.add_argument("name", metavar="NAME", help="1-128 printable characters, no '/'; not a preset's name")
    c.add_argument("--prompt-audio", required=True, metavar="FILE",
                   help="a recording of the voice (WAV, FLAC, OGG/Opus, MP3; mono or stereo; >= 16 kHz; <= 30 s)")
    c.add_argument("--prompt-text", required=True, metavar="TEXT", help="transcript of the recording")
    c.add_argument("--overwrite", action="store_true", help="replace a registered speaker of the same name")
    c.add_argument("--no-text-frontend", action="store_true", help="store the transcript as given, not normalised")
    c.set_defaults(run=add)

    c = commands.add_parser("list", parents=[common],
                            help="every speaker: NAME, KIND (preset|registered), TOKENS, SECONDS, TRANSCRIPT")
    c.set_defaults(run=list_)

    c = commands.add_parser("rm", parents=[common], help="remove a registered speaker (presets are read-only)")
    c.add_argument("name", metavar="NAME")
    c.set_defaults(run=rm)

    c = commands.add_parser("import", parents=[common],
                            help="register every speaker of a spk2info.pt file (official or async schema)")
    c.add_argument("file", metavar="FILE")
    taken = c.add_mutually_exclusive_group()
    taken.add_argument("--overwrite", action="store_true", help="replace registered speakers of the same names")
    taken.add_argument("--skip-existing", action="store_true",
                       help="import only the speakers whose names are free (registered and preset names are kept)")
    c.set_defaults(run=import_)

    c = commands.add_parser("export", parents=[common], help="write registered speakers as a spk2info.pt file")
    c.add_argument("file", metavar="FILE")
    c.add_argument("--schema", choices=list(SCHEMAS), default="official",
                   help="official: CosyVoice2's add_zero_shot_spk layout; async: async_cosyvoice's (default official)")
    c.add_argument("--name", action="append", metavar="NAME",
                   help="a speaker to export; repeat for more (default: every registered speaker)")
    c.set_defaults(run=export)
    return p


def main(argv: Sequence[str] | None = None) -> None:
    args = parser().parse_args(argv)
    run: Callable[[argparse.Namespace], None] = args.run
    run_cli(PROG, lambda: run(args))


if __name__ == "__main__":  # pragma: no cover
    main(sys.argv[1:])
