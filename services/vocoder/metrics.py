"""Vocoder stage metrics."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from services.common.metrics import BATCH_SIZE_BUCKETS, LATENCY_BUCKETS_SECONDS


class VocoderMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.streams = Gauge("cosyvoice_vocoder_streams_active", "Open Vocode streams.", registry=registry)
        self.batch_size = Histogram(
            "cosyvoice_vocoder_batch_size", "Mel chunks vocoded together in one HiFT call.",
            buckets=BATCH_SIZE_BUCKETS, registry=registry,
        )
        self.batch_duration = Histogram(
            "cosyvoice_vocoder_batch_duration_seconds", "Wall time of one batched HiFT call.",
            buckets=LATENCY_BUCKETS_SECONDS, registry=registry,
        )
        self.chunk_duration = Histogram(
            "cosyvoice_vocoder_chunk_duration_seconds", "From receiving a mel chunk to its audio, queueing included.",
            buckets=LATENCY_BUCKETS_SECONDS, registry=registry,
        )
        self.audio = Counter("cosyvoice_vocoder_audio_seconds", "Seconds of audio produced.", registry=registry)
