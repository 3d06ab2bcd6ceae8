"""The LLM's position budget, checked at the gateway before the LLM is called.

A character limit does not bound tokens: 2,000 emoji are 8,000 tokens. The LLM refuses such a
prompt itself, but only once called, in its own terms (positions of its input, not the
caller's field and what fits with this voice), and for a text split into sentences only when
that sentence's turn comes, after the earlier ones were already spoken. So the gateway counts
first, before any stage starts work:

    SOS + prompt text + text + TASK_ID + prompt speech tokens <= the LLM's max_model_len

(services/llm/engine/llm_engine.py applies the same rule). The tokens are counted by the
frontend stage, which holds the model's tokenizer and tokenizes each text on its own exactly
as the LLM does; max_model_len is asked of the LLM stage once (GetLimits) and kept. The check
is per LLM call: each segment of a split text is its own call, and so is a text stream, whose
pieces are counted as they arrive, each and all together.
"""

from __future__ import annotations

from typing import Awaitable, Callable, Protocol, Sequence

import grpc

from services.common.errors import InvalidRequest, upstream_error
from services.common.pb import llm_pb2, llm_pb2_grpc

# SOS and TASK_ID: the two positions of every LLM prompt besides text and prompt speech.
SPECIAL_POSITIONS = 2
PieceCheck = Callable[[str], Awaitable["str | None"]]


class TokenCounter(Protocol):
    async def count_tokens(self, texts: Sequence[str], timeout: float | None = None) -> list[int]: ...


class TokenBudget:
    def __init__(self, llm: llm_pb2_grpc.SpeechTokenGeneratorStub, counter: TokenCounter, timeout: float) -> None:
        self.llm = llm
        self.counter = counter
        self.timeout = timeout
        self._limits: llm_pb2.LLMLimits | None = None  # asked once; every LLM replica shares its settings

    async def limits(self, timeout: float | None = None) -> llm_pb2.LLMLimits:
        if self._limits is None:
            deadline = self.timeout if timeout is None else min(timeout, self.timeout)
            try:
                self._limits = await self.llm.GetLimits(llm_pb2.GetLimitsRequest(), timeout=deadline)
            except grpc.aio.AioRpcError as error:
                raise upstream_error("llm", error) from None
        return self._limits

    async def _check_prompt_chars(self, prompt_text: str, prompt_field: str, timeout: float | None) -> None:
        """A transcript longer than the LLM takes is refused here, naming the caller's field."""
        limit = (await self.limits(timeout)).max_text_chars
        if len(prompt_text) > limit:
            raise InvalidRequest(f"{prompt_field}: {len(prompt_text)} characters exceed the limit of {limit}")

    def _room(self, max_model_len: int, prompt_text_tokens: int, prompt_speech_tokens: int) -> int:
        """How many text tokens one LLM call may carry with this voice."""
        return max(0, max_model_len - SPECIAL_POSITIONS - prompt_text_tokens - prompt_speech_tokens)

    async def check_segments(
        self, segments: Sequence[str], prompt_text: str, prompt_speech_tokens: int, field: str,
        timeout: float | None = None, prompt_field: str = "prompt.text",
    ) -> None:
        """Every segment (one LLM call each) fits with the voice's prompt; else INVALID_ARGUMENT
        naming `field` with both numbers."""
        await self._check_prompt_chars(prompt_text, prompt_field, timeout)
        prompt_tokens, *counts = await self.counter.count_tokens([prompt_text, *segments], timeout)
        room = self._room((await self.limits(timeout)).max_model_len, prompt_tokens, prompt_speech_tokens)
        for index, count in enumerate(counts):
            if count > room:
                which = "" if len(segments) == 1 else f" sentence {index + 1} of {len(segments)} has"
                raise InvalidRequest(
                    f"{field}:{which} {count} tokens after the text frontend; at most {room} fit with this voice"
                )

    async def piece_check(self, prompt_text: str, prompt_speech_tokens: int, field: str = "text",
                          timeout: float | None = None, prompt_field: str = "prompt.text") -> PieceCheck:
        """A check of a text stream's pieces as they arrive (one LLM call: all of them
        together must fit); it answers the problem, or None."""
        await self._check_prompt_chars(prompt_text, prompt_field, timeout)
        prompt_tokens = (await self.counter.count_tokens([prompt_text], timeout))[0] if prompt_text else 0
        room = self._room((await self.limits(timeout)).max_model_len, prompt_tokens, prompt_speech_tokens)
        total = 0

        async def check(piece: str) -> str | None:
            nonlocal total
            count = (await self.counter.count_tokens([piece], timeout))[0]
            if count > room:
                return f"{field}: a piece of {count} tokens; at most {room} fit with this voice"
            total += count
            if total > room:
                return f"{field}: the pieces total {total} tokens; at most {room} fit with this voice"
            return None

        return check
