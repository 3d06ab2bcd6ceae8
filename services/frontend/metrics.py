"""Frontend stage metrics: prompt encodings by outcome and their latency, text requests."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from services.common.metrics import LATENCY_BUCKETS_SECONDS


class FrontendMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.prompts = Counter(
            "cosyvoice_frontend_prompts", "Prompt recordings processed, by outcome (ok, invalid, error).",
            ["outcome"], registry=registry,
        )
        self.prompt_duration = Histogram(
            "cosyvoice_frontend_prompt_duration_seconds",
            "From receiving a prompt recording to its features: decoding, resampling, features, ONNX models.",
            buckets=LATENCY_BUCKETS_SECONDS, registry=registry,
        )
        self.queue_depth = Gauge(
            "cosyvoice_frontend_queue_depth",
            "Frontend jobs (prompts, texts, speaker tables) waiting for a worker thread or running on one.",
            registry=registry,
        )
        self.texts = Counter(
            "cosyvoice_frontend_texts", "Texts normalised and split.", registry=registry
        )
        self.segments = Counter(
            "cosyvoice_frontend_text_segments", "Segments the texts were split into.", registry=registry
        )
