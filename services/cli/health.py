"""`cosyvoice health`: ask a service's gRPC health service whether it is SERVING.

This is the healthcheck command of the images (compose `healthcheck.test`), so it imports no
torch and starts fast: grpcio and the generated health stubs only. Exit code 0 means SERVING;
anything else is one line on stderr and exit code 1.
"""

from __future__ import annotations

import argparse
import os
from typing import Sequence

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.cli import connection as connection_flags
from services.cli.connection import Connection
from services.common.config import ConfigError

# The images' HEALTHCHECK runs `cosyvoice health` with no argument; a stage's container sets
# COSYVOICE_HEALTH_ADDRESS to its own port (the default is the gateway's).
DEFAULT_ADDRESS = os.environ.get("COSYVOICE_HEALTH_ADDRESS", "127.0.0.1:50051")


def check(address: str, service: str = "", timeout: float = 3.0, connection: Connection | None = None) -> str:
    """The status name the service reports (e.g. SERVING); raises grpc.RpcError if unreachable,
    ConfigError for a bad --tls-* file. `connection`: TLS (health needs no API key)."""
    with (connection or Connection()).open_channel(address) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=timeout
        )
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="cosyvoice health", description=__doc__.split("\n\n")[0])
    parser.add_argument("address", nargs="?", default=DEFAULT_ADDRESS, help=f"host:port (default {DEFAULT_ADDRESS})")
    parser.add_argument("--service", default="", help="a service name, e.g. cosyvoice.v1.TextToSpeech ('' = the whole server)")
    parser.add_argument("--timeout", type=float, default=3.0, help="seconds to wait for the answer")
    connection_flags.add_arguments(parser, api_key=False)  # a TLS port: --tls-ca, and --tls-cert/--tls-key for mTLS
    args = parser.parse_args(argv)
    if args.timeout <= 0:
        raise SystemExit(f"cosyvoice health: --timeout must be > 0 (got {args.timeout})")
    try:
        status = check(args.address, args.service, args.timeout, connection_flags.from_args(args))
    except ConfigError as error:
        raise SystemExit(f"cosyvoice health: {error}") from None
    except grpc.RpcError as error:
        code = error.code().name if hasattr(error, "code") else "UNKNOWN"
        if code == "NOT_FOUND":
            raise SystemExit(f"cosyvoice health: {args.address} serves no {args.service!r}") from None
        raise SystemExit(f"cosyvoice health: {args.address} is not reachable ({code})") from None
    if status != "SERVING":
        target = f"{args.address} {args.service}".strip()
        raise SystemExit(f"cosyvoice health: {target} is {status}")
    print(f"{args.address} SERVING")
