"""`cosyvoice up`'s security flags (docs/security.md): TLS and API keys on the public gateway
port, mutual TLS between the gateway and the stages, the reflection switch. (Client certificates on the
public port: COSYVOICE_GATEWAY_TLS_CLIENT_CA, but then `up` cannot see the gateway get ready.)

Each flag becomes the services' own setting (`serve NAME --tls-cert ...`), so `up` adds no
behaviour of its own; it only reads every file before any process starts, so a bad path stops
`up` at once with the flag named, instead of the gateway failing after the stages have loaded.
Nothing is generated here: certificates and keys are paths an operator made (docs/security.md
has a recipe).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field

from gateway.auth import load_api_keys
from services.common.config import ConfigError
from services.common.tls import ClientTls, load_client_tls, load_server_tls


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("security (docs/security.md)")
    group.add_argument("--tls-cert", default="", metavar="PEM",
                       help="the gateway's certificate (chain): the public port serves TLS only")
    group.add_argument("--tls-key", default="", metavar="PEM", help="the private key of --tls-cert")
    group.add_argument("--tls-ca", default="", metavar="PEM",
                       help="the CA `up` verifies the gateway with when it waits for SERVING "
                            "(default: --tls-cert itself, right for a self-signed certificate)")
    group.add_argument("--tls-server-name", default="", metavar="NAME",
                       help="the name in --tls-cert, when it is not the host `up` prints")
    group.add_argument("--api-keys-file", default="", metavar="FILE",
                       help="API keys the gateway accepts, one `KEY [synthesize]` a line")
    group.add_argument("--internal-tls-cert", default="", metavar="PEM",
                       help="mutual TLS between the gateway and the stages: the stages serve this certificate "
                            "and the gateway presents it (it needs serverAuth and clientAuth use)")
    group.add_argument("--internal-tls-key", default="", metavar="PEM", help="the private key of --internal-tls-cert")
    group.add_argument("--internal-tls-ca", default="", metavar="PEM",
                       help="the CA that signed --internal-tls-cert; both sides verify the other with it")
    group.add_argument("--internal-tls-server-name", default="", metavar="NAME",
                       help="the name in --internal-tls-cert, when it is not --internal-host")
    group.add_argument("--no-reflection", action="store_true", help="no gRPC server reflection on any service")


@dataclass
class UpSecurity:
    stage_args: list[str] = field(default_factory=list)  # for every `serve STAGE`
    gateway_args: list[str] = field(default_factory=list)  # for `serve gateway`
    ready_tls: ClientTls | None = None  # how `up` dials the gateway to wait for SERVING


def _flags(**values: str) -> list[str]:
    """`--name value` for each value that is set."""
    return [arg for name, value in values.items() if value for arg in (f"--{name.replace('_', '-')}", value)]


def from_args(args: argparse.Namespace) -> UpSecurity:
    """The services' flags for `args`; every file read once now. SystemExit naming the flag."""
    try:
        load_server_tls(args.tls_cert, args.tls_key, "", {"cert": "--tls-cert", "key": "--tls-key", "client_ca": ""})
        internal_names = {"ca": "--internal-tls-ca", "cert": "--internal-tls-cert", "key": "--internal-tls-key",
                          "server_name": "--internal-tls-server-name"}
        internal = load_client_tls(args.internal_tls_ca, args.internal_tls_cert, args.internal_tls_key,
                                   args.internal_tls_server_name, internal_names)
        if internal is not None and not (args.internal_tls_cert and args.internal_tls_ca):
            raise ConfigError("mutual TLS between the gateway and the stages needs --internal-tls-cert, "
                              "--internal-tls-key and --internal-tls-ca")
        if args.api_keys_file:
            load_api_keys(args.api_keys_file, "--api-keys-file")
        ready_tls = None
        if args.tls_cert:
            ca = args.tls_ca or args.tls_cert
            ready_tls = load_client_tls(ca, "", "", args.tls_server_name,
                                        {"ca": "--tls-ca", "cert": "", "key": "", "server_name": "--tls-server-name"})
        elif args.tls_ca or args.tls_server_name:
            raise ConfigError("--tls-ca and --tls-server-name only mean something with --tls-cert and --tls-key")
    except ConfigError as exc:
        raise SystemExit(f"cosyvoice up: {exc}") from None
    reflection = ["--reflection", "false"] if args.no_reflection else []
    stage_args = [*_flags(tls_cert=args.internal_tls_cert, tls_key=args.internal_tls_key,
                          tls_client_ca=args.internal_tls_ca), *reflection]
    gateway_args = [
        *_flags(tls_cert=args.tls_cert, tls_key=args.tls_key, api_keys_file=args.api_keys_file, stage_tls_ca=args.internal_tls_ca,
                stage_tls_cert=args.internal_tls_cert, stage_tls_key=args.internal_tls_key,
                stage_tls_server_name=args.internal_tls_server_name),
        *reflection,
    ]
    return UpSecurity(stage_args, gateway_args, ready_tls)
