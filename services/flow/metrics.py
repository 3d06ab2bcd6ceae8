"""Flow stage metrics."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from services.common.metrics import BATCH_SIZE_BUCKETS, LATENCY_BUCKETS_SECONDS


class FlowMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.sessions = Gauge("cosyvoice_flow_sessions_active", "Open Decode streams.", registry=registry)
        self.batch_size = Histogram(
            "cosyvoice_flow_batch_size", "Token chunks decoded together in one flow call.",
            buckets=BATCH_SIZE_BUCKETS, registry=registry,
        )
        self.batch_duration = Histogram(
            "cosyvoice_flow_batch_duration_seconds", "Wall time of one batched flow call.",
            buckets=LATENCY_BUCKETS_SECONDS, registry=registry,
        )
        self.chunk_duration = Histogram(
            "cosyvoice_flow_chunk_duration_seconds", "From receiving a token chunk to its mel, queueing included.",
            buckets=LATENCY_BUCKETS_SECONDS, registry=registry,
        )
        self.frames = Counter("cosyvoice_flow_mel_frames", "Mel frames produced.", registry=registry)
