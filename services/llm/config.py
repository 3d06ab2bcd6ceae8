"""LLM stage settings (flags or COSYVOICE_LLM_* environment variables)."""

from __future__ import annotations

import dataclasses

from services.common.config import MIB, check, metrics_port_setting, setting
from services.common.stage_config import StageConfig


@dataclasses.dataclass
class LLMServiceConfig(StageConfig):
    """The LLM stage: text in, speech tokens out."""

    ENV_PREFIX = "COSYVOICE_LLM_"
    PROG = "cosyvoice serve llm"

    metrics_port: int = metrics_port_setting("llm")
    # A request is text and ids: 2 × 4000 characters (up to 4 bytes each in UTF-8) and 1500
    # prompt tokens (5 bytes each) are 40 kB; a response is at most max_model_len tokens (20 kB).
    max_receive_message_bytes: int = setting(MIB, "largest gRPC message accepted (text, prompt tokens)")
    max_send_message_bytes: int = setting(MIB, "largest gRPC message sent (speech tokens)")

    max_num_seqs: int = setting(16, "sequences decoded together in one step (KV-cache slots)")
    max_num_batched_tokens: int = setting(4096, "prompt positions admitted per prefill step")
    max_model_len: int = setting(4096, "prompt + generated positions per sequence")
    max_waiting_requests: int = setting(256, "queued requests before RESOURCE_EXHAUSTED")
    max_text_chars: int = setting(4000, "longest text, in characters")
    max_prompt_speech_tokens: int = setting(1500, "longest voice prompt, in speech tokens (25 per second)")
    max_bistream_text_chars: int = setting(16000, "longest total text of one GenerateBistream, in characters")
    cuda_graphs: bool = setting(True, "decode through CUDA graphs captured at start per batch size (cuda only; ignored on cpu)")
    cuda_graph_max_batch: int = setting(0, "largest batch size with a CUDA graph; 0 = max_num_seqs; larger batches run eagerly")

    @property
    def decode_graphs(self) -> str:
        """The engine's decode_graphs mode: CUDA graphs only where there is CUDA."""
        return "cuda" if self.cuda_graphs and self.device.startswith("cuda") else "off"

    def validate(self) -> None:
        super().validate()
        for name in ("max_num_seqs", "max_num_batched_tokens", "max_model_len", "max_waiting_requests",
                     "max_text_chars", "max_prompt_speech_tokens", "max_bistream_text_chars"):
            check(getattr(self, name) >= 1, self, name, "must be >= 1")
        check(0 <= self.cuda_graph_max_batch <= self.max_num_seqs, self, "cuda_graph_max_batch",
              f"must be in 0..max_num_seqs ({self.max_num_seqs})")
        check(self.max_receive_message_bytes >= self.largest_request_bytes, self, "max_receive_message_bytes",
              f"must hold the largest request the other limits allow ({self.largest_request_bytes} bytes)")

    @property
    def largest_request_bytes(self) -> int:
        """text and prompt_text at max_text_chars (4 bytes a character at most), prompt speech
        tokens at 5 bytes (varint), 1 KiB for the rest."""
        return 2 * 4 * self.max_text_chars + 5 * self.max_prompt_speech_tokens + 1024
