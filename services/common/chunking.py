"""The CosyVoice 2 streaming token schedule (upstream `CosyVoice2Model.tts(stream=True)`).

Pure Python, shared by the gateway and the in-process pipeline, so both cut tokens into
exactly the same flow calls. Per request:
- the first hop is `base_hop` plus a pad that makes prompt + first hop a multiple of
  `base_hop`, so the flow's chunk-attention boundaries (counted from the prompt start)
  coincide with emitted chunk boundaries;
- every later hop is the previous base hop × `scale_factor`, capped at `max_hop`
  (25 → 50 → 100 → 100 …);
- a chunk is cut once `hop + lookahead` tokens are waiting past the offset; the look-ahead
  tokens only serve as right context and are decoded again with the next chunk;
- when the LLM is done, whatever remains goes in one final chunk (full attention).

Upstream keeps the growing hop on the model object, so a second request starts at 100
(cosyvoice-facts §10 quirk 1). Here the state lives in one `TokenChunker` per request.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence


@dataclass(frozen=True)
class ChunkPolicy:
    base_hop: int = 25  # must equal the flow's training static_chunk_size (upstream NOTE)
    max_hop: int = 100  # upstream: 4 × token_hop_len
    scale_factor: int = 2  # upstream stream_scale_factor
    lookahead: int = 3  # the flow's pre_lookahead_len

    def __post_init__(self) -> None:
        if self.base_hop < 1:
            raise ValueError(f"base_hop must be >= 1, got {self.base_hop}")
        if self.max_hop < self.base_hop:
            raise ValueError(f"max_hop ({self.max_hop}) must be >= base_hop ({self.base_hop})")
        if self.scale_factor < 1:
            raise ValueError(f"scale_factor must be >= 1, got {self.scale_factor}")
        if self.lookahead < 0:
            raise ValueError(f"lookahead must be >= 0, got {self.lookahead}")


@dataclass(frozen=True)
class Chunk:
    """One flow call: decode tokens[:end]; emit the frames of tokens[offset:emit_end]."""

    end: int  # tokens the flow sees (look-ahead included when not final)
    offset: int  # tokens whose frames earlier chunks emitted
    emit_end: int  # end minus the look-ahead, or end when final
    is_final: bool
    index: int

    @property
    def num_new_tokens(self) -> int:
        return self.emit_end - self.offset


class TokenChunker:
    """Per-request chunk state: feed the running token count, get the chunks it completes."""

    def __init__(self, policy: ChunkPolicy, num_prompt_tokens: int) -> None:
        if num_prompt_tokens < 0:
            raise ValueError(f"num_prompt_tokens must be >= 0, got {num_prompt_tokens}")
        self.policy = policy
        self.prompt_pad = math.ceil(num_prompt_tokens / policy.base_hop) * policy.base_hop - num_prompt_tokens
        self.offset = 0
        self._hop = policy.base_hop
        self._index = 0
        self._finished = False

    @property
    def next_hop(self) -> int:
        return self._hop + self.prompt_pad if self.offset == 0 else self._hop

    def _make(self, end: int, is_final: bool) -> Chunk:
        emit_end = end if is_final else end - self.policy.lookahead
        chunk = Chunk(end=end, offset=self.offset, emit_end=emit_end, is_final=is_final, index=self._index)
        self._index += 1
        return chunk

    def ready(self, num_tokens: int) -> list[Chunk]:
        """The non-final chunks that `num_tokens` generated tokens complete (often none)."""
        if self._finished:
            raise RuntimeError("chunker already finished")
        chunks = []
        while num_tokens - self.offset >= self.next_hop + self.policy.lookahead:
            hop = self.next_hop
            chunks.append(self._make(self.offset + hop + self.policy.lookahead, is_final=False))
            self.offset += hop
            self._hop = min(self.policy.max_hop, self._hop * self.policy.scale_factor)
        return chunks

    def finish(self, num_tokens: int) -> list[Chunk]:
        """All remaining chunks once generation has ended: full ones, then the final one."""
        chunks = self.ready(num_tokens)
        chunks.append(self._make(num_tokens, is_final=True))
        self._finished = True
        return chunks


def whole_utterance(num_tokens: int) -> Chunk:
    """The one chunk of a non-streaming request: every token, full attention (upstream
    `tts(stream=False)`), which sounds better than the chunked path."""
    return Chunk(end=num_tokens, offset=0, emit_end=num_tokens, is_final=True, index=0)


class TokenFeed:
    """What a sender forwards to the flow: feed it each batch of new speech tokens, get back
    (tokens not yet sent, chunk) pairs. Streaming requests follow the chunk schedule; a
    non-streaming one sends everything as one final chunk once generation has finished."""

    def __init__(self, policy: ChunkPolicy, num_prompt_tokens: int = 0, stream: bool = True) -> None:
        self.stream = stream
        self.chunker = TokenChunker(policy, num_prompt_tokens)
        self.tokens: list[int] = []
        self._sent = 0

    def push(self, new_tokens: Sequence[int], finished: bool) -> list[tuple[list[int], Chunk]]:
        self.tokens.extend(new_tokens)
        count = len(self.tokens)
        if not self.stream:
            chunks = [whole_utterance(count)] if finished else []
        else:
            chunks = self.chunker.finish(count) if finished else self.chunker.ready(count)
        sends = []
        for chunk in chunks:
            sends.append((self.tokens[self._sent : chunk.end], chunk))
            self._sent = chunk.end
        return sends
