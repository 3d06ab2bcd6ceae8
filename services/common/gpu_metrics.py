"""GPU memory of a model stage, read from torch's allocator when Prometheus scrapes.

A gauge set now and then would be stale between updates and cost work on the hot path; a
collector asks torch at scrape time instead (two cheap counters of the caching allocator,
safe from the HTTP server's thread). Registered only when the stage's device is cuda, so a
CPU process never imports torch.cuda for it.
"""

from __future__ import annotations

from typing import Callable, Iterator

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

MemoryReader = Callable[[int], int]


def _torch_reader(kind: str) -> MemoryReader:
    def read(index: int) -> int:
        import torch

        return int(getattr(torch.cuda, f"memory_{kind}")(index))

    return read


def device_index(device: str) -> int:
    """'cuda' → 0 (torch's default device in a stage process), 'cuda:N' → N."""
    _, _, index = device.partition(":")
    return int(index) if index else 0


class GpuMemoryCollector(Collector):
    def __init__(
        self, device: str, allocated: MemoryReader | None = None, reserved: MemoryReader | None = None
    ) -> None:
        self.index = device_index(device)
        self.label = f"cuda:{self.index}"
        self.allocated = allocated or _torch_reader("allocated")
        self.reserved = reserved or _torch_reader("reserved")

    def describe(self) -> Iterator[GaugeMetricFamily]:
        # Without this the registry would call collect() at registration, touching CUDA.
        yield from self._families(with_samples=False)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        yield from self._families(with_samples=True)

    def _families(self, with_samples: bool) -> Iterator[GaugeMetricFamily]:
        for name, help_text, read in (
            ("cosyvoice_gpu_memory_allocated_bytes", "GPU memory held by live tensors of this process.",
             self.allocated),
            ("cosyvoice_gpu_memory_reserved_bytes",
             "GPU memory this process's caching allocator holds from the driver (allocated plus cached free blocks).",
             self.reserved),
        ):
            family = GaugeMetricFamily(name, help_text, labels=["device"])
            if with_samples:
                family.add_metric([self.label], float(read(self.index)))
            yield family
