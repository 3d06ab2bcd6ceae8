"""How a command-line client reaches a service (docs/security.md): TLS, a client certificate
for mutual TLS, and the gateway's API key. Shared by `synth`, `speakers` and `health`; grpc
only, no torch, so `cosyvoice health` stays fast.

Each flag has an environment default, so a container's healthcheck or a shell session sets
them once: COSYVOICE_TLS_CA, COSYVOICE_CLIENT_CERT, COSYVOICE_CLIENT_KEY,
COSYVOICE_TLS_SERVER_NAME, COSYVOICE_API_KEY.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import grpc

from services.common.tls import load_client_tls

ENVIRONMENT = {
    "tls_ca": "COSYVOICE_TLS_CA",
    "tls_cert": "COSYVOICE_CLIENT_CERT",
    "tls_key": "COSYVOICE_CLIENT_KEY",
    "tls_server_name": "COSYVOICE_TLS_SERVER_NAME",
    "api_key": "COSYVOICE_API_KEY",
}


@dataclass(frozen=True)
class Connection:
    tls_ca: str = ""
    tls_cert: str = ""
    tls_key: str = ""
    tls_server_name: str = ""
    api_key: str = ""

    @property
    def uses_tls(self) -> bool:
        return bool(self.tls_ca or self.tls_cert or self.tls_key)

    def open_channel(self, address: str, options: Sequence[tuple[str, Any]] = ()) -> grpc.Channel:
        """A plaintext or TLS channel to `address`; ConfigError (naming the flag) for a bad file."""
        names = {name: f"--{name.replace('_', '-')}" for name in ("tls_ca", "tls_cert", "tls_key", "tls_server_name")}
        tls = load_client_tls(self.tls_ca, self.tls_cert, self.tls_key, self.tls_server_name,
                              {"ca": names["tls_ca"], "cert": names["tls_cert"], "key": names["tls_key"],
                               "server_name": names["tls_server_name"]})
        if tls is None:
            return grpc.insecure_channel(address, options=list(options))
        return grpc.secure_channel(address, tls.credentials(), options=[*options, *tls.options()])

    def with_api_key(self, channel: grpc.Channel) -> grpc.Channel:
        """`channel`, sending `authorization: Bearer KEY` on every call when a key is set."""
        if not self.api_key:
            return channel
        return grpc.intercept_channel(channel, _BearerKey(self.api_key))


def add_arguments(parser: argparse.ArgumentParser, api_key: bool = True) -> None:
    """--tls-ca, --tls-cert, --tls-key, --tls-server-name (and --api-key), with env defaults."""

    def env(name: str) -> str:
        return os.environ.get(ENVIRONMENT[name], "")

    parser.add_argument("--tls-ca", default=env("tls_ca"), metavar="PEM",
                        help=f"connect with TLS, trusting this CA [env {ENVIRONMENT['tls_ca']}]")
    parser.add_argument("--tls-cert", default=env("tls_cert"), metavar="PEM",
                        help=f"client certificate, for a port with mutual TLS [env {ENVIRONMENT['tls_cert']}]")
    parser.add_argument("--tls-key", default=env("tls_key"), metavar="PEM",
                        help=f"private key of --tls-cert [env {ENVIRONMENT['tls_key']}]")
    parser.add_argument("--tls-server-name", default=env("tls_server_name"), metavar="NAME",
                        help="the name the server's certificate is issued for, when it is not the address's host "
                             f"[env {ENVIRONMENT['tls_server_name']}]")
    if api_key:
        parser.add_argument("--api-key", default=env("api_key"), metavar="KEY",
                            help=f"the gateway's API key, sent as `authorization: Bearer KEY` [env {ENVIRONMENT['api_key']}]")


def from_args(args: argparse.Namespace) -> Connection:
    return Connection(args.tls_ca, args.tls_cert, args.tls_key, args.tls_server_name, getattr(args, "api_key", ""))


class _CallDetails(grpc.ClientCallDetails):
    def __init__(self, details: grpc.ClientCallDetails, metadata: list[tuple[str, str]]) -> None:
        self.method = details.method
        self.timeout = details.timeout
        self.metadata = metadata
        self.credentials = details.credentials
        self.wait_for_ready = getattr(details, "wait_for_ready", None)
        self.compression = getattr(details, "compression", None)


class _BearerKey(
    grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor, grpc.StreamStreamClientInterceptor,
):
    def __init__(self, key: str) -> None:
        self._header = ("authorization", f"Bearer {key}")

    def _call(self, continuation: Callable[..., Any], details: grpc.ClientCallDetails, request: Any) -> Any:
        metadata = [*(details.metadata or ()), self._header]
        return continuation(_CallDetails(details, metadata), request)

    intercept_unary_unary = _call
    intercept_unary_stream = _call
    intercept_stream_unary = _call
    intercept_stream_stream = _call
