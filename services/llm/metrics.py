"""LLM stage metrics, fed by the async engine loop (never by the warm-up, which drives the
engine directly before the async engine exists)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from services.common.metrics import BATCH_SIZE_BUCKETS, LATENCY_BUCKETS_SECONDS


class LLMMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.streams = Gauge(
            "cosyvoice_llm_streams_active", "Open Generate streams (requests with engine state).", registry=registry
        )
        self.requests_running = Gauge(
            "cosyvoice_llm_requests_running", "Sequences holding a KV-cache slot.", registry=registry
        )
        self.requests_waiting = Gauge(
            "cosyvoice_llm_requests_waiting", "Requests queued for a KV-cache slot (the LLM's queue).",
            registry=registry,
        )
        self.kv_cache_usage = Gauge(
            "cosyvoice_llm_kv_cache_usage_ratio",
            "Fraction of KV-cache slots (max_num_seqs, each max_model_len positions) held by running sequences.",
            registry=registry,
        )
        self.requests_finished = Counter(
            "cosyvoice_llm_requests_finished", "Finished requests by finish reason.", ["finish_reason"],
            registry=registry,
        )
        self.prompt_tokens = Counter(
            "cosyvoice_llm_prompt_tokens", "LLM input positions prefilled.", registry=registry
        )
        self.generation_tokens = Counter(
            "cosyvoice_llm_generation_tokens", "Speech tokens sampled.", registry=registry
        )
        self.step_batch_size = Histogram(
            "cosyvoice_llm_step_batch_size", "Sequences advanced per engine step.",
            buckets=BATCH_SIZE_BUCKETS, registry=registry,
        )
        self.step_duration = Histogram(
            "cosyvoice_llm_step_duration_seconds", "Wall time of one engine step (prefill or decode).",
            buckets=LATENCY_BUCKETS_SECONDS, registry=registry,
        )
        self.time_to_first_token = Histogram(
            "cosyvoice_llm_time_to_first_token_seconds", "From request arrival to its first speech token.",
            buckets=LATENCY_BUCKETS_SECONDS, registry=registry,
        )
