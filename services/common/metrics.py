"""Prometheus helpers shared by the services. Every service takes an injected registry."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

# Latency buckets from 5 ms to 60 s: first-chunk latency on a GPU is ~0.1-0.3 s, whole
# requests on a CPU can take tens of seconds.
LATENCY_BUCKETS_SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64)


def make_registry() -> CollectorRegistry:
    """A fresh registry: never the process-global default, so tests and processes stay isolated."""
    return CollectorRegistry(auto_describe=True)
