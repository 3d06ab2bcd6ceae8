"""Frontend stage settings (flags or COSYVOICE_FRONTEND_* environment variables)."""

from __future__ import annotations

import dataclasses

from services.common.config import MIB, check, metrics_port_setting, setting
from services.common.stage_config import StageConfig

PROMPT_24K_SOURCES = ("file", "16k")


@dataclasses.dataclass
class FrontendServiceConfig(StageConfig):
    """The frontend stage: prompt recordings and texts in, conditioning and segments out."""

    ENV_PREFIX = "COSYVOICE_FRONTEND_"
    PROG = "cosyvoice serve frontend"

    metrics_port: int = metrics_port_setting("frontend")
    # In: a prompt upload of max_audio_bytes (32 MiB) and its fields, or an uploaded spk2info.pt.
    # Out: speaker tables and spk2info files, about 0.5 MB per 30 s speaker.
    max_receive_message_bytes: int = setting(
        40 * MIB, "largest gRPC message accepted (a prompt upload, a spk2info file); >= max_audio_bytes + 64 KiB"
    )
    max_send_message_bytes: int = setting(64 * MIB, "largest gRPC message sent (speaker tables, spk2info files)")

    num_workers: int = setting(2, "prompt recordings processed at once (threads; ONNX Runtime releases the GIL)")
    onnx_threads: int = setting(1, "intra-op threads of each ONNX Runtime session")
    max_prompt_seconds: float = setting(30.0, "longest prompt recording (the speech tokenizer's limit is 30 s)")
    max_audio_bytes: int = setting(32 * 1024 * 1024, "largest prompt audio upload, in bytes")
    max_text_chars: int = setting(20000, "longest text to normalise, in characters")
    prompt_24k_source: str = setting(
        "file", "where the 24 kHz prompt comes from: file (upstream: resampled from the original) or 16k "
        "(cosyvoice2-eu 0.2.8: resampled from the 16 kHz signal)"
    )

    def validate(self) -> None:
        super().validate()
        check(self.num_workers >= 1, self, "num_workers", "must be >= 1")
        check(self.onnx_threads >= 1, self, "onnx_threads", "must be >= 1")
        check(0 < self.max_prompt_seconds <= 30, self, "max_prompt_seconds", "must be in (0, 30]")
        check(self.max_audio_bytes >= 1024, self, "max_audio_bytes", "must be >= 1024")
        check(self.max_receive_message_bytes >= self.max_audio_bytes + 64 * 1024, self, "max_receive_message_bytes",
              f"must hold a prompt upload of max_audio_bytes ({self.max_audio_bytes}) + 65536")
        check(self.max_text_chars >= 1, self, "max_text_chars", "must be >= 1")
        check(self.prompt_24k_source in PROMPT_24K_SOURCES, self, "prompt_24k_source", "must be file or 16k")

    @property
    def onnx_providers(self) -> list[str]:
        # The speech tokenizer runs on the GPU when there is one (as the reference's); CAM++
        # is small and the reference keeps it on the CPU, and so do we (see runner.py).
        if self.device.startswith("cuda"):
            return ["CUDAExecutionProvider", "CPUExecutionProvider"]
        return ["CPUExecutionProvider"]
