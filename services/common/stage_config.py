"""Settings every model stage (llm, flow, vocoder) has on top of the server settings."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

from services.common.config import ConfigError, ServerConfig, check, setting, setting_names

DTYPES = ("float32", "float16", "bfloat16")


@dataclasses.dataclass
class StageConfig(ServerConfig):
    model_dir: Path | None = setting(None, "CosyVoice2 model directory (required)")
    device: str = setting("cpu", "torch device: cpu, cuda or cuda:N")
    dtype: str = setting("float32", "float32, float16 or bfloat16")
    num_threads: int = setting(0, "torch CPU threads; 0 keeps torch's default")
    compute_nice: int = setting(5, "nice increment of the compute thread, so relaying chunks preempts compute")
    gil_switch_interval_ms: float = setting(
        1.0, "Python's GIL switch interval: how long the compute thread may keep the event loop waiting"
    )

    def validate(self) -> None:
        super().validate()
        if self.model_dir is None:
            raise ConfigError(f"{setting_names(type(self), 'model_dir')} is required: a CosyVoice2 model directory")
        check(self.device == "cpu" or self.device.startswith("cuda"), self, "device", "must be cpu, cuda or cuda:N")
        check(self.dtype in DTYPES, self, "dtype", f"must be one of {', '.join(DTYPES)}")
        check(self.num_threads >= 0, self, "num_threads", "must be >= 0")
        check(0 <= self.compute_nice <= 19, self, "compute_nice", "must be in 0..19")
        check(0 < self.gil_switch_interval_ms <= 100, self, "gil_switch_interval_ms", "must be in (0, 100]")

    def torch_dtype(self):  # noqa: ANN201 - torch imported lazily: servicers stay torch-free
        import torch

        return getattr(torch, self.dtype)

    def apply_threads(self) -> None:
        """Thread settings of a stage process: one event loop thread and one compute thread.

        The event loop relays every chunk; with CPython's default 5 ms switch interval a busy
        compute thread can make each relay wait that long for the GIL, hop after hop."""
        sys.setswitchinterval(self.gil_switch_interval_ms / 1000)
        if self.num_threads:
            import torch

            torch.set_num_threads(self.num_threads)


@dataclasses.dataclass
class BatchingStageConfig(StageConfig):
    """A stage that batches the chunks of concurrent streams (flow, vocoder)."""

    max_batch_size: int = setting(8, "chunks of concurrent streams computed in one call")
    max_batch_wait_ms: float = setting(0.0, "how long a chunk may wait for others to batch with")
    # 128 = the gateway's default max_concurrent_requests (64) × the two segments of one request
    # that may be alive at once (gateway/segments.py): one default gateway never meets the cap.
    max_sessions: int = setting(128, "open streams (each holds its caches) before RESOURCE_EXHAUSTED")

    def validate(self) -> None:
        super().validate()
        check(self.max_batch_size >= 1, self, "max_batch_size", "must be >= 1")
        check(self.max_batch_wait_ms >= 0, self, "max_batch_wait_ms", "must be >= 0")
        check(self.max_sessions >= 1, self, "max_sessions", "must be >= 1")
