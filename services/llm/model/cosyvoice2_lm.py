"""CosyVoice 2's LLM (`Qwen2LM` in the reference): a Qwen2 backbone between speech heads.

State-dict keys equal the reference's: `llm_embedding` (row 0 SOS, row 1 TASK_ID),
`llm.model.*` (the HF-shaped Qwen2ForCausalLM), `llm_decoder` (speech head with bias) and
`speech_embedding` (speech tokens plus 3 special rows). The head reads the hidden state after
the backbone's final RMSNorm and returns log-probs over speech_token_size + 3 ids.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from services.common.modeldir.layout import ModelDirError
from services.llm.model.kv_cache import AttentionPlan, KVCache, long_tensor
from services.llm.model.prompt import InputSegment, LLMPrompt, SegmentKind, check_prompt_ids
from services.llm.model.qwen2 import Qwen2Config, Qwen2ForCausalLM

SOS_ROW = 0
TASK_ID_ROW = 1


class Qwen2Encoder(nn.Module):
    """Holds the backbone as `.model`, giving the reference's `llm.model.model.*` key path."""

    def __init__(self, config: Qwen2Config) -> None:
        super().__init__()
        self.model = Qwen2ForCausalLM(config)


class CosyVoice2LM(nn.Module):
    def __init__(
        self,
        qwen_config: Qwen2Config,
        llm_input_size: int,
        llm_output_size: int,
        speech_token_size: int,
    ) -> None:
        super().__init__()
        hidden = qwen_config.hidden_size
        if llm_input_size != hidden or llm_output_size != hidden:
            raise ModelDirError(
                f"llm_input_size {llm_input_size} / llm_output_size {llm_output_size} must equal "
                f"the Qwen hidden_size {hidden} of CosyVoice-BlankEN/config.json"
            )
        if speech_token_size < 1:
            raise ModelDirError(f"speech_token_size must be >= 1, got {speech_token_size}")
        self.speech_token_size = speech_token_size
        # Same attribute order as the reference, so state_dict() iterates in the same order.
        self.llm_embedding = nn.Embedding(2, llm_input_size)
        self.llm = Qwen2Encoder(qwen_config)
        self.llm_decoder = nn.Linear(llm_output_size, speech_token_size + 3)
        self.speech_embedding = nn.Embedding(speech_token_size + 3, llm_input_size)

    # Special ids in speech-token space (cosyvoice-facts §3.2).
    @property
    def eos_token(self) -> int:
        return self.speech_token_size

    @property
    def fill_token(self) -> int:
        return self.speech_token_size + 2

    @property
    def stop_token_ids(self) -> tuple[int, ...]:
        return tuple(self.speech_token_size + i for i in range(3))

    @property
    def backbone(self) -> Qwen2ForCausalLM:
        return self.llm.model

    @property
    def text_vocab_size(self) -> int:
        return self.backbone.model.config.vocab_size

    def reset_non_persistent_state(self) -> None:
        """After `to_empty()` from meta: recompute RoPE tables and re-tie lm_head."""
        self.backbone.model.reset_rope_tables()
        self.backbone.tie_weights()

    def check_prompt(self, prompt: LLMPrompt) -> None:
        check_prompt_ids(prompt, self.text_vocab_size, self.speech_token_size)

    def embed_prompt(self, prompt: LLMPrompt) -> torch.Tensor:
        """[SOS, E_text(text_ids), TASK_ID, E_speech(speech_tokens)] as [num_positions, D]."""
        device = self.llm_embedding.weight.device
        text = long_tensor(prompt.text_ids, device)
        speech = long_tensor(prompt.speech_tokens, device)
        rows = self.llm_embedding.weight
        return torch.cat(
            [
                rows[SOS_ROW : SOS_ROW + 1],
                self.backbone.model.embed_tokens(text),
                rows[TASK_ID_ROW : TASK_ID_ROW + 1],
                self.speech_embedding(speech),  # no scaling, as in the reference
            ],
            dim=0,
        )

    def embed_segments(self, segments: Sequence[InputSegment]) -> torch.Tensor:
        """Bistream input runs (SOS, text, TASK_ID, speech in any order) → [rows, D]."""
        device = self.llm_embedding.weight.device
        rows = self.llm_embedding.weight
        parts = []
        for segment in segments:
            ids = long_tensor(segment.ids, device)
            if segment.kind is SegmentKind.SOS:
                parts.append(rows[SOS_ROW : SOS_ROW + 1])
            elif segment.kind is SegmentKind.TASK_ID:
                parts.append(rows[TASK_ID_ROW : TASK_ID_ROW + 1])
            elif segment.kind is SegmentKind.TEXT:
                parts.append(self.backbone.model.embed_tokens(ids))
            else:
                parts.append(self.speech_embedding(ids))
        return torch.cat(parts, dim=0)

    def embed_speech_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """Fed-back tokens [B] → [B, D]."""
        return self.speech_embedding(tokens)

    def new_kv_cache(
        self,
        num_slots: int,
        max_model_len: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> KVCache:
        return self.backbone.new_kv_cache(num_slots, max_model_len, device, dtype)

    def forward(self, inputs_embeds: torch.Tensor, plan: AttentionPlan, cache: KVCache) -> torch.Tensor:
        """inputs_embeds [B, T, D] → final-norm hidden states [B, T, D]."""
        return self.backbone(inputs_embeds, plan, cache)

    def log_probs(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden [..., D] → log_softmax(llm_decoder(hidden)) [..., speech_token_size + 3]."""
        return self.llm_decoder(hidden).log_softmax(dim=-1)
