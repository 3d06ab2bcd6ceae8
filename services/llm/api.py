"""The contract between the LLM servicer and its engine, free of torch."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Protocol


@dataclass(frozen=True)
class GenerationRequest:
    text: str
    prompt_text: str = ""
    prompt_speech_tokens: tuple[int, ...] = ()
    sampling: dict[str, Any] = field(default_factory=dict)  # overrides of the yaml's defaults


@dataclass(frozen=True)
class BistreamStart:
    """Opens a text-in streaming generation; the text follows as pieces."""

    prompt_text: str = ""
    prompt_speech_tokens: tuple[int, ...] = ()
    sampling: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TokenEvent:
    """Every token sampled since the previous event: one per decode step while the caller
    keeps up, several when it fell behind (so a slow reader costs fewer, larger messages)."""

    tokens: tuple[int, ...]
    finished: bool
    finish_reason: str | None  # 'stop' | 'length' | 'abort' once finished
    num_text_tokens: int  # target text tokens (the length rules' N)


class TokenGenerator(Protocol):
    def generate(self, request: GenerationRequest) -> AsyncIterator[TokenEvent]: ...

    def generate_bistream(self, start: BistreamStart, pieces: AsyncIterator[str]) -> AsyncIterator[TokenEvent]: ...
