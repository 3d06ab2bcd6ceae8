"""The HTTP front's Prometheus metrics (docs/metrics.md, "HTTP front"), on its own registry
and its own port like every service. Every outcome is counted: each request under its final
HTTP status (WebSocket sessions under their close code), and a stream that fails after its
status was sent under cosyvoice_http_stream_failures_total too."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from services.common.metrics import LATENCY_BUCKETS_SECONDS, RPC_BUCKETS_SECONDS, register_process_metrics

# Label for a path that matched no route: keeps the label set bounded whatever clients send.
UNMATCHED = "unmatched"


class HttpMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        register_process_metrics(registry, "http")
        self.requests = Counter(
            "cosyvoice_http_requests", "HTTP requests and WebSocket sessions by route template and final status "
            "(HTTP status; a WebSocket's close code).", ["endpoint", "status"], registry=registry,
        )
        self.duration = Histogram(
            "cosyvoice_http_request_duration_seconds", "From the request's arrival to its response's last byte "
            "(a WebSocket: its session).", ["endpoint"], buckets=RPC_BUCKETS_SECONDS, registry=registry,
        )
        self.first_audio = Histogram(
            "cosyvoice_http_first_audio_seconds", "From the request's arrival to the gateway's first audio chunk.",
            ["endpoint"], buckets=LATENCY_BUCKETS_SECONDS, registry=registry,
        )
        self.in_flight = Gauge(
            "cosyvoice_http_requests_in_flight", "HTTP requests and WebSocket sessions being served.", registry=registry,
        )
        self.stream_failures = Counter(
            "cosyvoice_http_stream_failures", "Streams that failed after their status was sent (chunked audio cut, "
            "an SSE error event, a WebSocket error message), by gateway code.", ["endpoint", "code"],
            registry=registry,
        )
