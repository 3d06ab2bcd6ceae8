"""Vocoder stage settings (flags or COSYVOICE_VOCODER_* environment variables)."""

from __future__ import annotations

import dataclasses

from services.common.config import check, setting
from services.common.stage_config import StageConfig


@dataclasses.dataclass
class VocoderServiceConfig(StageConfig):
    """The vocoder stage: mel frames in, 24 kHz PCM out."""

    ENV_PREFIX = "COSYVOICE_VOCODER_"
    PROG = "cosyvoice serve vocoder"

    max_batch_size: int = setting(8, "mel chunks of concurrent streams vocoded in one call")
    max_batch_wait_ms: float = setting(0.0, "how long a chunk may wait for others to batch with")

    def validate(self) -> None:
        super().validate()
        check(self.max_batch_size >= 1, self, "max_batch_size", "must be >= 1")
        check(self.max_batch_wait_ms >= 0, self, "max_batch_wait_ms", "must be >= 0")
