"""Channels and stubs of the four stages, one set per gateway process.

A stage address may name several replicas: `dns:///llm:50052` (every address the name resolves
to: compose service replicas, a Kubernetes headless Service), `ipv4:10.0.0.1:50052,10.0.0.2:50052`,
or a comma list of `IP:PORT`. Each channel balances calls round robin over the replicas and skips
those whose health service does not report SERVING (a replica loading, draining or gone). A
stream is one call, so a request's stream to a stage stays on the replica that accepted it.
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass

import grpc

from services.common.pb import flow_pb2_grpc, frontend_pb2_grpc, llm_pb2_grpc, vocoder_pb2_grpc
from services.common.server import CHANNEL_OPTIONS
from services.common.tls import ClientTls

# Client-side health checking: round_robin only picks replicas whose Health.Watch("") says SERVING.
SERVICE_CONFIG = json.dumps({
    "loadBalancingConfig": [{"round_robin": {}}],
    "healthCheckConfig": {"serviceName": ""},
    # For ~50-120 ms after a replica dies, before its connection is seen reset, round robin
    # can still pick it, and a call sent there fails UNAVAILABLE "Stream removed". gRPC retries
    # a call only while nothing has come back from the server (not committed; what was sent is
    # replayed from a buffer), so a new request moves to another replica, and a draining
    # replica's UNAVAILABLE refusal does too. A stream that has had a reply is never retried:
    # only the streams a dead replica was serving fail.
    "methodConfig": [{
        "name": [{}],
        "retryPolicy": {
            "maxAttempts": 3,
            "initialBackoff": "0.02s",
            "maxBackoff": "0.2s",
            "backoffMultiplier": 2,
            "retryableStatusCodes": ["UNAVAILABLE"],
        },
    }],
})
BALANCED_CHANNEL_OPTIONS = [
    *CHANNEL_OPTIONS,
    ("grpc.service_config", SERVICE_CONFIG),
    # A stage that restarts (`up`'s supervisor, a Kubernetes pod) is back within seconds: retry
    # the connection at most every 2 s instead of gRPC's default back-off of up to 120 s.
    ("grpc.initial_reconnect_backoff_ms", 250),
    ("grpc.min_reconnect_backoff_ms", 250),
    ("grpc.max_reconnect_backoff_ms", 2_000),
    # Never go IDLE between requests: the gateway's health follows these channels' state
    # (gateway/stage_health.py), and an idle channel would only reconnect on the next call.
    ("grpc.client_idle_timeout_ms", 2**31 - 1),
]
_SCHEMES = ("dns:", "ipv4:", "ipv6:", "unix:")


class AddressError(ValueError):
    """A stage address that cannot name its replicas."""


def _is_ip_port(item: str) -> bool:
    host, sep, port = item.rpartition(":")
    if not sep or not port.isdigit():
        return False
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


def channel_target(address: str) -> str:
    """The gRPC target of a stage address (see the module doc); raises AddressError."""
    address = address.strip()
    if address.startswith(_SCHEMES):
        return address
    items = [item.strip() for item in address.split(",") if item.strip()]
    if len(items) <= 1:
        if not items or ":" not in items[0]:
            raise AddressError("must be host:port, a comma list of IP:PORT, or a gRPC target such as dns:///NAME:PORT")
        return items[0]
    if not all(_is_ip_port(item) for item in items):
        raise AddressError("lists replicas by IP:PORT only; for a name that resolves to every replica, use dns:///NAME:PORT")
    family = "ipv6" if any(item.startswith("[") for item in items) else "ipv4"
    return f"{family}:{','.join(items)}"


def balanced_channel(address: str, tls: ClientTls | None = None) -> grpc.aio.Channel:
    """A channel to every replica of a stage; with `tls`, each connection is TLS (mutual TLS
    when it carries a client certificate), and health checking runs over it too."""
    if tls is None:
        return grpc.aio.insecure_channel(channel_target(address), options=BALANCED_CHANNEL_OPTIONS)
    return grpc.aio.secure_channel(
        channel_target(address), tls.credentials(), options=[*BALANCED_CHANNEL_OPTIONS, *tls.options()]
    )


@dataclass
class StageClients:
    llm: llm_pb2_grpc.SpeechTokenGeneratorStub
    flow: flow_pb2_grpc.FlowDecoderStub
    vocoder: vocoder_pb2_grpc.VocoderStub
    frontend: frontend_pb2_grpc.FrontendStub
    channels: list[grpc.aio.Channel]
    tls: ClientTls | None = None  # how the channels were dialled; other channels to the stages use it too

    @classmethod
    def connect(
        cls, llm_addr: str, flow_addr: str, vocoder_addr: str, frontend_addr: str, tls: ClientTls | None = None
    ) -> "StageClients":
        # One HTTP/2 channel per stage replica multiplexes every request's stream; when no
        # replica is up, calls fail at once with UNAVAILABLE (no wait_for_ready), which the
        # gateway reports naming the stage.
        addresses = (llm_addr, flow_addr, vocoder_addr, frontend_addr)
        llm, flow, vocoder, frontend = (balanced_channel(a, tls) for a in addresses)
        return cls(
            llm=llm_pb2_grpc.SpeechTokenGeneratorStub(llm),
            flow=flow_pb2_grpc.FlowDecoderStub(flow),
            vocoder=vocoder_pb2_grpc.VocoderStub(vocoder),
            frontend=frontend_pb2_grpc.FrontendStub(frontend),
            channels=[llm, flow, vocoder, frontend],
            tls=tls,
        )

    @property
    def by_stage(self) -> dict[str, grpc.aio.Channel]:
        return dict(zip(("llm", "flow", "vocoder", "frontend"), self.channels))

    async def close(self) -> None:
        for channel in self.channels:
            await channel.close()
