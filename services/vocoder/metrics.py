"""Vocoder stage metrics."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter

from services.common.metrics import StreamingStageMetrics


class VocoderMetrics(StreamingStageMetrics):
    def __init__(self, registry: CollectorRegistry) -> None:
        super().__init__(
            registry,
            "vocoder",
            streams=("streams_active", "Open Vocode streams."),
            batch_help="Mel chunks vocoded together in one HiFT call.",
            chunk_help="From receiving a mel chunk to its audio, queueing included.",
        )
        self.audio = Counter("cosyvoice_vocoder_audio_seconds", "Seconds of audio produced.", registry=registry)
