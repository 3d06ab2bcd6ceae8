"""Prometheus helpers shared by the services. Every service takes an injected registry."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Gauge, Histogram

# Latency buckets from 5 ms to 60 s: first-chunk latency on a GPU is ~0.1-0.3 s, whole
# requests on a CPU can take tens of seconds.
LATENCY_BUCKETS_SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64)


def make_registry() -> CollectorRegistry:
    """A fresh registry: never the process-global default, so tests and processes stay isolated."""
    return CollectorRegistry(auto_describe=True)


class StreamingStageMetrics:
    """What every batching stream stage (flow, vocoder) reports: open streams, batch sizes,
    batch compute time, and per-chunk latency including the wait for a batch."""

    def __init__(
        self, registry: CollectorRegistry, stage: str, streams: tuple[str, str], batch_help: str, chunk_help: str
    ) -> None:
        streams_name, streams_help = streams
        self.streams = Gauge(f"cosyvoice_{stage}_{streams_name}", streams_help, registry=registry)
        self.batch_size = Histogram(
            f"cosyvoice_{stage}_batch_size", batch_help, buckets=BATCH_SIZE_BUCKETS, registry=registry
        )
        self.batch_duration = Histogram(
            f"cosyvoice_{stage}_batch_duration_seconds", f"Wall time of one batched {stage} call.",
            buckets=LATENCY_BUCKETS_SECONDS, registry=registry,
        )
        self.chunk_duration = Histogram(
            f"cosyvoice_{stage}_chunk_duration_seconds", chunk_help, buckets=LATENCY_BUCKETS_SECONDS, registry=registry
        )

    def observe_batch(self, size: int, seconds: float) -> None:
        self.batch_size.observe(size)
        self.batch_duration.observe(seconds)
