"""Vocoder stage settings (flags or COSYVOICE_VOCODER_* environment variables)."""

from __future__ import annotations

import dataclasses

from services.common.config import check, metrics_port_setting, setting
from services.common.stage_config import BatchingStageConfig


@dataclasses.dataclass
class VocoderServiceConfig(BatchingStageConfig):
    """The vocoder stage: mel frames in, 24 kHz PCM out."""

    ENV_PREFIX = "COSYVOICE_VOCODER_"
    PROG = "cosyvoice serve vocoder"

    metrics_port: int = metrics_port_setting("vocoder")

    max_chunk_frames: int = setting(15000, "largest mel chunk, in frames (50 per second; the flow's own limit)")

    def validate(self) -> None:
        super().validate()
        check(self.max_chunk_frames >= 8, self, "max_chunk_frames", "must be >= 8")
