"""The contract between the flow servicer and its runner, free of torch."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np


@dataclass(frozen=True)
class VoicePrompt:
    """Conditioning computed from a prompt recording (numpy, as it came off the wire)."""

    prompt_tokens: np.ndarray  # int32 [N]
    prompt_mel: np.ndarray  # float32 [2N, 80]
    speaker_embedding: np.ndarray  # float32 [192]


@dataclass(frozen=True)
class MelChunkResult:
    mel: np.ndarray  # float32 [80, frames]
    token_offset: int  # tokens whose frames have been emitted so far
    compute_seconds: float


class FlowSessionHandle(Protocol):
    token_offset: int


class MelDecoder(Protocol):
    speech_token_size: int

    def open_session(self, speaker_id: str | None, prompt: VoicePrompt | None) -> FlowSessionHandle: ...

    async def decode(self, session: FlowSessionHandle, tokens: list[int], finalize: bool) -> MelChunkResult: ...

    def close_session(self, session: FlowSessionHandle) -> None: ...
