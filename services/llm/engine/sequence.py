"""One LLM request as the engine tracks it; torch-free (the generator is an opaque handle)."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any, Literal

from services.llm.model.prompt import LLMPrompt

if TYPE_CHECKING:
    from services.llm.engine.bistream import BistreamFeed
    from services.llm.model.sampling import SamplingParams

FinishReason = Literal["stop", "length", "abort"]


class SequenceStatus(Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass(eq=False)
class Sequence:
    request_id: str
    prompt: LLMPrompt | None  # None for a bistream sequence: its feed says what to prefill
    params: "SamplingParams"
    min_tokens: int  # EOS is masked while fewer tokens than this were emitted
    max_tokens: int  # finish with 'length' once this many were emitted
    output_tokens: list[int] = field(default_factory=list)
    status: SequenceStatus = SequenceStatus.WAITING
    finish_reason: FinishReason | None = None
    slot: int | None = None  # KV-cache slot while running (model runner's business)
    generator: Any = None  # the request's torch.Generator, created by the model runner
    bistream: "BistreamFeed | None" = None  # text-in streaming state (output_tokens excludes FILL)

    @property
    def num_prompt_tokens(self) -> int:
        return self.prompt.num_positions if self.prompt is not None else 0

    @property
    def num_prefill_tokens(self) -> int:
        """Input rows of this sequence's next prefill (its prompt, or a bistream extend)."""
        return self.bistream.num_pending if self.bistream is not None else self.num_prompt_tokens

    @property
    def prefill_start(self) -> int:
        """Cache position where the next prefill's rows go (an extend continues the cache)."""
        return self.bistream.num_cached if self.bistream is not None else 0

    @property
    def decode_position(self) -> int:
        """Cache position of the fed-back token in a decode step."""
        return self.bistream.num_cached if self.bistream is not None else self.num_tokens - 1

    @property
    def num_tokens(self) -> int:
        """Positions this sequence occupies once its last output token is fed back."""
        return self.num_prompt_tokens + len(self.output_tokens)

    @property
    def last_token(self) -> int:
        return self.output_tokens[-1]

    @property
    def is_finished(self) -> bool:
        return self.status is SequenceStatus.FINISHED

    def finish(self, reason: FinishReason) -> None:
        self.status = SequenceStatus.FINISHED
        self.finish_reason = reason
