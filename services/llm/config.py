"""LLM stage settings (flags or COSYVOICE_LLM_* environment variables)."""

from __future__ import annotations

import dataclasses

from services.common.config import check, metrics_port_setting, setting
from services.common.stage_config import StageConfig


@dataclasses.dataclass
class LLMServiceConfig(StageConfig):
    """The LLM stage: text in, speech tokens out."""

    ENV_PREFIX = "COSYVOICE_LLM_"
    PROG = "cosyvoice serve llm"

    metrics_port: int = metrics_port_setting("llm")

    max_num_seqs: int = setting(16, "sequences decoded together in one step (KV-cache slots)")
    max_num_batched_tokens: int = setting(4096, "prompt positions admitted per prefill step")
    max_model_len: int = setting(4096, "prompt + generated positions per sequence")
    max_waiting_requests: int = setting(256, "queued requests before RESOURCE_EXHAUSTED")
    max_text_chars: int = setting(4000, "longest text, in characters")
    max_prompt_speech_tokens: int = setting(1500, "longest voice prompt, in speech tokens (25 per second)")
    max_bistream_text_chars: int = setting(16000, "longest total text of one GenerateBistream, in characters")

    def validate(self) -> None:
        super().validate()
        for name in ("max_num_seqs", "max_num_batched_tokens", "max_model_len", "max_waiting_requests",
                     "max_text_chars", "max_prompt_speech_tokens", "max_bistream_text_chars"):
            check(getattr(self, name) >= 1, self, name, "must be >= 1")
