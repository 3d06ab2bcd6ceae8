"""TLS material of a gRPC port or channel: PEM files read once at start, checked, and turned into
grpc credentials.

Every service serves its port with TLS when `tls_cert` and `tls_key` are set, and requires and
verifies client certificates (mutual TLS) when `tls_client_ca` is set too. The gateway dials
its stages with `stage_tls_*` (gateway/config.py), the command-line clients with `--tls-*`.

A bad file stops the process with one ConfigError line naming the setting; the file's content
never appears in a message (a key must not end up in a log). The check is for the PEM block a
setting needs, with a body that decodes as base64; whether a key matches its certificate is
found out by gRPC when it binds (see ServiceHost.start), and whether a certificate is trusted
only at the handshake.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass

import grpc

from services.common.config import ConfigError

CERTIFICATE = "CERTIFICATE"
PRIVATE_KEY = "PRIVATE KEY"  # also matches "RSA PRIVATE KEY", "EC PRIVATE KEY", "ENCRYPTED ..."
_BLOCK = re.compile(r"-----BEGIN ([A-Z0-9 ]+)-----\s*(.*?)\s*-----END \1-----", re.DOTALL)


def read_pem(path: str, label: str, kind: str) -> bytes:
    """The bytes of a PEM file that holds at least one `kind` block; ConfigError naming `label`
    (the setting, both ways) otherwise."""
    try:
        with open(path, "rb") as file:
            data = file.read()
    except OSError as exc:
        raise ConfigError(f"{label}: cannot read {path!r} ({exc.strerror or exc})") from None
    text = data.decode("ascii", errors="replace")
    blocks = [(name, body) for name, body in _BLOCK.findall(text) if name.endswith(kind)]
    if not blocks:
        what = "a certificate" if kind == CERTIFICATE else "a private key"
        raise ConfigError(f"{label}: {path!r} is not a PEM file with {what} (no -----BEGIN ...{kind}----- block)")
    if "ENCRYPTED" in blocks[0][0] or "Proc-Type: 4,ENCRYPTED" in blocks[0][1]:
        raise ConfigError(f"{label}: {path!r} holds an encrypted private key; gRPC needs it unencrypted")
    for _, body in blocks:
        try:
            base64.b64decode("".join(line for line in body.splitlines() if ":" not in line), validate=True)
        except (binascii.Error, ValueError):
            raise ConfigError(f"{label}: {path!r} has a damaged PEM block (its body is not base64)") from None
    return data


@dataclass(frozen=True)
class ServerTls:
    """What a TLS port needs, read from the files."""

    cert_chain: bytes
    private_key: bytes
    client_ca: bytes | None  # set: client certificates are required and verified (mutual TLS)

    def credentials(self) -> grpc.ServerCredentials:
        return grpc.ssl_server_credentials(
            [(self.private_key, self.cert_chain)],
            root_certificates=self.client_ca,
            require_client_auth=self.client_ca is not None,
        )


def load_server_tls(cert: str, key: str, client_ca: str, names: dict[str, str]) -> ServerTls | None:
    """The TLS material of a port, or None for plaintext. `names` maps "cert", "key" and
    "client_ca" to each setting's name, both ways, for the messages."""
    if not cert and not key:
        if client_ca:
            raise ConfigError(f"{names['client_ca']} needs {names['cert']} and {names['key']} (mutual TLS is TLS)")
        return None
    if not (cert and key):
        given, missing = (names["cert"], names["key"]) if cert else (names["key"], names["cert"])
        raise ConfigError(f"{given} is set but {missing} is not: TLS needs both")
    return ServerTls(
        cert_chain=read_pem(cert, names["cert"], CERTIFICATE),
        private_key=read_pem(key, names["key"], PRIVATE_KEY),
        client_ca=read_pem(client_ca, names["client_ca"], CERTIFICATE) if client_ca else None,
    )


@dataclass(frozen=True)
class ClientTls:
    """What a TLS channel needs: the CA that verifies the server (None: the system's roots), and
    a client certificate for mutual TLS."""

    root_ca: bytes | None = None
    cert_chain: bytes | None = None
    private_key: bytes | None = None
    server_name: str = ""  # verify the server's certificate for this name instead of the address's

    def credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(self.root_ca, self.private_key, self.cert_chain)

    def options(self) -> list[tuple[str, str]]:
        """Channel options to add: the name override, when set."""
        return [("grpc.ssl_target_name_override", self.server_name)] if self.server_name else []


def load_client_tls(ca: str, cert: str, key: str, server_name: str, names: dict[str, str]) -> ClientTls | None:
    """A channel's TLS material, or None for plaintext (nothing set). `names` maps "ca", "cert",
    "key" and "server_name" to each setting's name, for the messages."""
    if not (ca or cert or key):
        if server_name:
            raise ConfigError(f"{names['server_name']} needs TLS: set {names['ca']}")
        return None
    if bool(cert) != bool(key):
        given, missing = (names["cert"], names["key"]) if cert else (names["key"], names["cert"])
        raise ConfigError(f"{given} is set but {missing} is not: a client certificate needs both")
    return ClientTls(
        root_ca=read_pem(ca, names["ca"], CERTIFICATE) if ca else None,
        cert_chain=read_pem(cert, names["cert"], CERTIFICATE) if cert else None,
        private_key=read_pem(key, names["key"], PRIVATE_KEY) if key else None,
        server_name=server_name,
    )
