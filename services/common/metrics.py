"""Prometheus helpers shared by the services. Every service takes an injected registry.

Names and labels are a contract (dashboards, alerts and the deploy files use them); the full
list with meanings is docs/metrics.md.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from prometheus_client import CollectorRegistry, Gauge, Histogram, ProcessCollector

# Latency buckets from 5 ms to 60 s: first-chunk latency on a GPU is ~0.1-0.3 s, whole
# requests on a CPU can take tens of seconds.
LATENCY_BUCKETS_SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
# Whole RPCs: a streaming synthesis or a text-in stream can last minutes.
RPC_BUCKETS_SECONDS = (*LATENCY_BUCKETS_SECONDS, 120.0, 300.0, 600.0)
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64)
PACKAGE = "cosyvoice-serving"


def make_registry() -> CollectorRegistry:
    """A fresh registry: never the process-global default, so tests and processes stay isolated."""
    return CollectorRegistry(auto_describe=True)


def package_version() -> str:
    try:
        return version(PACKAGE)
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


def register_process_metrics(registry: CollectorRegistry, service: str) -> None:
    """What every process exports about itself: process_* (RSS, CPU seconds, open fds, start
    time; read from /proc at scrape time) and cosyvoice_build_info{service,version} = 1."""
    ProcessCollector(registry=registry)
    info = Gauge(
        "cosyvoice_build_info", "Always 1; the labels say which service and package version this process runs.",
        ["service", "version"], registry=registry,
    )
    info.labels(service, package_version()).set(1)


def register_model_info(
    registry: CollectorRegistry, service: str, device: str, dtype: str, gpu_memory: bool = True
) -> None:
    """cosyvoice_model_info{service,device,dtype} = 1 for a model stage, plus its torch GPU
    memory when it runs on one and `gpu_memory` (read at scrape time; gpu_metrics.py)."""
    info = Gauge(
        "cosyvoice_model_info", "Always 1; the labels say where and in which precision this stage runs its model.",
        ["service", "device", "dtype"], registry=registry,
    )
    info.labels(service, device, dtype).set(1)
    if gpu_memory and device.startswith("cuda"):
        from services.common.gpu_metrics import GpuMemoryCollector

        registry.register(GpuMemoryCollector(device))


class StreamingStageMetrics:
    """What every batching stream stage (flow, vocoder) reports: open streams, chunks waiting
    for the batcher, batch sizes, batch compute time, and per-chunk latency including the wait
    for a batch."""

    def __init__(
        self, registry: CollectorRegistry, stage: str, streams: tuple[str, str], batch_help: str, chunk_help: str
    ) -> None:
        streams_name, streams_help = streams
        self.streams = Gauge(f"cosyvoice_{stage}_{streams_name}", streams_help, registry=registry)
        self.max_sessions = Gauge(
            f"cosyvoice_{stage}_max_sessions",
            f"The max_sessions setting: open {stage} streams beyond it get RESOURCE_EXHAUSTED.",
            registry=registry,
        )
        self.queue_depth = Gauge(
            f"cosyvoice_{stage}_queue_depth",
            f"Chunks handed to the {stage} batcher and not yet answered (waiting for a batch or in one).",
            registry=registry,
        )
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
