"""Vocoder stage settings (flags or COSYVOICE_VOCODER_* environment variables)."""

from __future__ import annotations

import dataclasses

from services.common.stage_config import BatchingStageConfig


@dataclasses.dataclass
class VocoderServiceConfig(BatchingStageConfig):
    """The vocoder stage: mel frames in, 24 kHz PCM out."""

    ENV_PREFIX = "COSYVOICE_VOCODER_"
    PROG = "cosyvoice serve vocoder"
