"""What the gateway's command-line clients share (`cosyvoice synth`, `cosyvoice speakers`): the
default address, one-line errors, the gateway channel, reading input files. grpc only, no torch."""

from __future__ import annotations

import contextlib
import re
import sys
from typing import Callable, Iterator

import grpc

from services.cli.connection import Connection
from services.common.config import ConfigError
from services.common.server import CHANNEL_OPTIONS

DEFAULT_ADDRESS = "127.0.0.1:50051"
# After an UNAVAILABLE, how long to wait for the channel to connect before calling the
# gateway unreachable (an UNAVAILABLE the gateway itself sent comes over a READY channel).
REACH_PROBE_SECONDS = 0.5


class CliError(Exception):
    """An error the user can act on; `run_cli` prints its message as one line and exits 1."""


def one_line(text: str) -> str:
    return " ".join(str(text).split())


# The gateway names API fields; a CLI user knows the flags. Whole field names only.
_FLAGS = {
    "prompt.text": "--prompt-text", "prompt.audio": "--prompt-audio", "instruct_text": "--instruct",
    "speaker_id": "--speaker", "overwrite": "--overwrite", "skip_existing": "--skip-existing",
    "text_frontend=false": "--no-text-frontend",
}
_FIELD = re.compile(r"(?<![\w.-])(" + "|".join(re.escape(f) for f in _FLAGS) + r")(?![\w.])")


def in_flag_names(details: str) -> str:
    """A gateway message with the API's field names replaced by this CLI's flags."""
    return _FIELD.sub(lambda match: _FLAGS[match.group(1)], details)


def run_cli(prog: str, body: Callable[[], None]) -> None:
    """Run `body`, turning every error a user can reach into one stderr line and exit 1."""
    try:
        body()
    except CliError as error:
        print(f"{prog}: {one_line(str(error))}", file=sys.stderr)
        raise SystemExit(1) from None
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        raise SystemExit(130) from None


def _is_connected(channel: grpc.Channel) -> bool:
    future = grpc.channel_ready_future(channel)
    try:
        future.result(timeout=REACH_PROBE_SECONDS)
        return True
    except grpc.FutureTimeoutError:
        return False
    finally:
        future.cancel()


@contextlib.contextmanager
def gateway_channel(address: str, connection: Connection | None = None) -> Iterator[grpc.Channel]:
    """A channel to the gateway, with TLS and the API key of `connection` when set
    (services/cli/connection.py); an RPC error raised inside becomes a one-line CliError."""
    connection = connection or Connection()
    try:
        channel = connection.open_channel(address, CHANNEL_OPTIONS)
    except ConfigError as error:  # a TLS file: the message names the flag
        raise CliError(str(error)) from None
    except (ValueError, RuntimeError) as error:
        raise CliError(f"bad --address {address!r}: {error}") from None
    with channel:
        try:
            yield connection.with_api_key(channel)
        except grpc.RpcError as error:
            code = error.code()
            # A refused connection and a gateway reporting a stage down are both UNAVAILABLE;
            # only the channel state tells them apart.
            if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED) and not _is_connected(channel):
                hint = " over TLS (a TLS port? a certificate --tls-ca signed, for this host?)" if connection.uses_tls else ""
                raise CliError(f"{code.name}: cannot reach the gateway at {address}{hint}") from None
            if code == grpc.StatusCode.UNAUTHENTICATED:  # the gateway's message names the metadata
                raise CliError(f"{code.name}: {error.details()} (--api-key or COSYVOICE_API_KEY)") from None
            raise CliError(f"{code.name}: {in_flag_names(error.details() or '')}") from None


def read_input(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as file:
            return file.read()
    except OSError as error:
        raise CliError(f"cannot read {what} {path!r}: {error.strerror or error}") from None
