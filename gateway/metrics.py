"""Gateway metrics: what a caller experiences (first-audio latency, real-time factor, outcomes)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from services.common.metrics import LATENCY_BUCKETS_SECONDS

_RTF_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 5.0, 10.0)


class GatewayMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "cosyvoice_gateway_requests", "Synthesize calls by final gRPC status code.", ["code"], registry=registry
        )
        self.in_flight = Gauge(
            "cosyvoice_gateway_requests_in_flight", "Synthesize calls currently running.", registry=registry
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
            "cosyvoice_gateway_real_time_factor",
            "Request duration divided by the duration of the audio it produced.",
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
