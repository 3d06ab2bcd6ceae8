"""Gateway metrics: what a caller experiences (first-audio latency, real-time factor, outcomes),
how full the inter-stage queues are, and which stage fails with which code."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Iterator

import grpc
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from services.common.metrics import LATENCY_BUCKETS_SECONDS

_RTF_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 5.0, 10.0)
# The bounded queues of one request: tokens waiting for the flow, mel waiting for the
# vocoder, audio waiting to be sent (for a long text, later segments' audio waits here too).
QUEUES = ("llm_to_flow", "flow_to_vocoder", "vocoder_to_client")


class LiveQueues:
    """The inter-stage queues of every request in flight, summed per kind when scraped (no
    bookkeeping on the relay path; the scrape thread only reads sizes)."""

    def __init__(self) -> None:
        self._queues: dict[str, dict[int, asyncio.Queue]] = {kind: {} for kind in QUEUES}

    @contextlib.contextmanager
    def tracking(self, kind: str, queue: asyncio.Queue) -> Iterator[asyncio.Queue]:
        self._queues[kind][id(queue)] = queue
        try:
            yield queue
        finally:
            self._queues[kind].pop(id(queue), None)

    def depth(self, kind: str) -> int:
        # tuple() copies the values in one C call, so the event loop cannot change the dict
        # under the scrape thread's iteration.
        return sum(queue.qsize() for queue in tuple(self._queues[kind].values()))


class GatewayMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "cosyvoice_gateway_requests",
            "Synthesis calls (Synthesize, SynthesizeTextStream, the official Inference) by final gRPC status code.",
            ["code"], registry=registry,
        )
        for code in grpc.StatusCode:  # every code from zero, so rate() and alerts see a series at once
            self.requests.labels(code.name)
        self.in_flight = Gauge(
            "cosyvoice_gateway_requests_in_flight", "Synthesis calls currently running (the autoscaling load).",
            registry=registry,
        )
        self.time_to_first_audio = Histogram(
            "cosyvoice_gateway_time_to_first_audio_seconds",
            "From receiving a streaming request to sending its first audio chunk.",
            buckets=LATENCY_BUCKETS_SECONDS,
            registry=registry,
        )
        self.request_duration = Histogram(
            "cosyvoice_gateway_request_duration_seconds",
            "From receiving a request to sending its last audio.",
            buckets=LATENCY_BUCKETS_SECONDS,
            registry=registry,
        )
        self.real_time_factor = Histogram(
            "cosyvoice_gateway_real_time_factor_ratio",
            "Request duration divided by the duration of the audio it produced (below 1: faster than real time).",
            buckets=_RTF_BUCKETS,
            registry=registry,
        )
        self.voice_duration = Histogram(
            "cosyvoice_gateway_voice_duration_seconds",
            "Resolving a request's voice before any model stage starts, by kind: preset, registered (a store "
            "read) or inline (the frontend stage encoding the prompt recording).",
            ["voice"],
            buckets=LATENCY_BUCKETS_SECONDS,
            registry=registry,
        )
        self.audio = Counter(
            "cosyvoice_gateway_audio_seconds", "Seconds of audio sent to callers.", registry=registry
        )
        self.queues = LiveQueues()
        self.queue_depth = Gauge(
            "cosyvoice_gateway_queue_depth",
            "Items waiting in the gateway's bounded queues, summed over requests in flight: llm_to_flow (token "
            "chunks), flow_to_vocoder (mel chunks), vocoder_to_client (audio not yet sent).",
            ["queue"], registry=registry,
        )
        for kind in QUEUES:
            self.queue_depth.labels(kind).set_function(lambda kind=kind: self.queues.depth(kind))
        self.upstream_errors = Counter(
            "cosyvoice_gateway_upstream_errors",
            "Failed calls from the gateway to a stage, by stage and the status code the stage's call ended with.",
            ["stage", "code"], registry=registry,
        )

    def upstream_error(self, stage: str, code: grpc.StatusCode) -> None:
        self.upstream_errors.labels(stage, code.name).inc()

