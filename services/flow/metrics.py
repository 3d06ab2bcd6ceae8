"""Flow stage metrics."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

from services.common.metrics import StreamingStageMetrics


class FlowMetrics(StreamingStageMetrics):
    def __init__(self, registry: CollectorRegistry) -> None:
        super().__init__(
            registry,
            "flow",
            streams=("sessions_active", "Open Decode streams."),
            batch_help="Token chunks decoded together in one flow call.",
            chunk_help="From receiving a token chunk to its mel, queueing included.",
        )
        self.frames = Counter("cosyvoice_flow_mel_frames", "Mel frames produced.", registry=registry)
        self.incremental_cache = Gauge(
            "cosyvoice_flow_incremental_cache_bytes",
            "Bytes held by the incremental flow's per-stream caches (capped by incremental_cache_mib).",
            registry=registry,
        )
