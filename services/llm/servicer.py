"""SpeechTokenGenerator servicer: converts protos, delegates to the engine. Imports no torch."""

from __future__ import annotations

import time
from typing import AsyncIterator

import grpc

from services.common.bidi import open_stream
from services.common.errors import InvalidRequest, Unavailable, map_errors
from services.common.pb import common_pb2, llm_pb2, llm_pb2_grpc
from services.common.request_limits import check_request_id
from services.llm.api import BistreamStart, GenerationRequest, TokenEvent, TokenGenerator
from services.llm.request_limits import sampling_overrides

_FINISH_REASONS = {
    "stop": common_pb2.FINISH_REASON_STOP,
    "length": common_pb2.FINISH_REASON_LENGTH,
    "abort": common_pb2.FINISH_REASON_ABORT,
}


class SpeechTokenGeneratorServicer(llm_pb2_grpc.SpeechTokenGeneratorServicer):
    def __init__(
        self, max_text_chars: int, max_prompt_speech_tokens: int = 1500, max_bistream_text_chars: int = 16000,
        max_model_len: int = 4096,
    ) -> None:
        self.engine: TokenGenerator | None = None  # set once weights are loaded
        self.max_text_chars = max_text_chars
        self.max_prompt_speech_tokens = max_prompt_speech_tokens
        self.max_bistream_text_chars = max_bistream_text_chars
        self.max_model_len = max_model_len

    @map_errors
    async def GetLimits(self, request: llm_pb2.GetLimitsRequest, context: grpc.aio.ServicerContext) -> llm_pb2.LLMLimits:
        return llm_pb2.LLMLimits(
            max_model_len=self.max_model_len, max_text_chars=self.max_text_chars,
            max_prompt_speech_tokens=self.max_prompt_speech_tokens, max_bistream_text_chars=self.max_bistream_text_chars,
        )

    def _check_prompt_speech(self, tokens: object) -> None:
        count = len(tokens)  # type: ignore[arg-type]
        if count > self.max_prompt_speech_tokens:  # checked before any copy
            raise InvalidRequest(
                f"prompt_speech_tokens: {count} tokens exceed the limit of {self.max_prompt_speech_tokens}"
            )

    @map_errors
    async def Generate(
        self, request: llm_pb2.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[llm_pb2.GenerateResponse]:
        received = time.perf_counter()
        if self.engine is None:
            raise Unavailable("the LLM is still loading")
        check_request_id(request.request_id)
        if not request.text.strip():
            raise InvalidRequest("text: must not be empty")
        for name in ("text", "prompt_text"):
            if len(getattr(request, name)) > self.max_text_chars:
                raise InvalidRequest(f"{name}: longer than {self.max_text_chars} characters")
        self._check_prompt_speech(request.prompt_speech_tokens)
        source = GenerationRequest(
            request.text, request.prompt_text, tuple(request.prompt_speech_tokens), sampling_overrides(request.sampling)
        )
        first = True
        async for event in self.engine.generate(source):
            response = _response(event, received)
            if first:
                response.num_text_tokens = event.num_text_tokens
                first = False
            yield response

    @map_errors
    async def GenerateBistream(
        self, requests: AsyncIterator[llm_pb2.GenerateBistreamRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[llm_pb2.GenerateResponse]:
        received = time.perf_counter()
        if self.engine is None:
            raise Unavailable("the LLM is still loading")
        opened = await open_stream(requests, "GenerateBistream", chunk_field="text")
        if opened is None:
            raise InvalidRequest("start: the stream ended before its `start` message")
        start, pieces = opened
        check_request_id(start.request_id, "start.request_id")
        if len(start.prompt_text) > self.max_text_chars:
            raise InvalidRequest(f"prompt_text: longer than {self.max_text_chars} characters")
        self._check_prompt_speech(start.prompt_speech_tokens)
        sampling = sampling_overrides(start.sampling, "start.sampling")
        source = BistreamStart(start.prompt_text, tuple(start.prompt_speech_tokens), sampling)
        async for event in self.engine.generate_bistream(source, self._checked_pieces(pieces)):
            yield _response(event, received)

    async def _checked_pieces(self, pieces: AsyncIterator[str]) -> AsyncIterator[str]:
        """The text pieces, each and all together within the limits (checked as they come)."""
        total = 0
        async for piece in pieces:
            if len(piece) > self.max_text_chars:
                raise InvalidRequest(f"text: a piece of {len(piece)} characters exceeds the limit of {self.max_text_chars}")
            total += len(piece)
            if total > self.max_bistream_text_chars:
                raise InvalidRequest(
                    f"text: the pieces total more than {self.max_bistream_text_chars} characters (max_bistream_text_chars)"
                )
            yield piece


def _response(event: TokenEvent, received: float) -> llm_pb2.GenerateResponse:
    response = llm_pb2.GenerateResponse(elapsed_seconds=time.perf_counter() - received)
    response.tokens.extend(event.tokens)
    if event.finished:
        response.finish_reason = _FINISH_REASONS.get(event.finish_reason or "", common_pb2.FINISH_REASON_STOP)
    return response
