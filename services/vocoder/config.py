"""Vocoder stage settings (flags or COSYVOICE_VOCODER_* environment variables)."""

from __future__ import annotations

import dataclasses

from services.common.backends.settings import BackendStageConfig
from services.common.config import MIB, check, metrics_port_setting, setting
from services.vocoder.api import SPEED_RANGE

MEL_BINS = 80
SAMPLES_PER_FRAME = 480  # 24 kHz audio from 50 Hz mel frames (CosyVoice 2's HiFT)


@dataclasses.dataclass
class VocoderServiceConfig(BackendStageConfig):  # backend settings: docs/backends.md
    """The vocoder stage: mel frames in, 24 kHz PCM out."""

    ENV_PREFIX = "COSYVOICE_VOCODER_"
    PROG = "cosyvoice serve vocoder"

    metrics_port: int = metrics_port_setting("vocoder")
    # In: a mel chunk of max_chunk_frames × 80 × 4 B (4.8 MB). Out: its audio, 480 float32
    # samples a frame, twice as long at the slowest speed (0.5): 57.6 MB.
    max_receive_message_bytes: int = setting(8 * MIB, "largest gRPC message accepted (a mel chunk)")
    max_send_message_bytes: int = setting(64 * MIB, "largest gRPC message sent (a chunk's audio)")

    max_chunk_frames: int = setting(15000, "largest mel chunk, in frames (50 per second; the flow's own limit)")

    def validate(self) -> None:
        super().validate()
        check(self.max_chunk_frames >= 8, self, "max_chunk_frames", "must be >= 8")
        mel_bytes = self.max_chunk_frames * MEL_BINS * 4 + 1024
        audio_bytes = int(self.max_chunk_frames * SAMPLES_PER_FRAME * 4 / SPEED_RANGE.low) + 1024
        check(self.max_receive_message_bytes >= mel_bytes, self, "max_receive_message_bytes",
              f"must hold a mel chunk of max_chunk_frames ({mel_bytes} bytes)")
        check(self.max_send_message_bytes >= audio_bytes, self, "max_send_message_bytes",
              f"must hold the audio of a mel chunk of max_chunk_frames at the slowest speed ({audio_bytes} bytes)")
