"""Text-in streaming ("bistream") for one sequence: what to feed as text pieces arrive, when
FILL is forced, and when the sequence waits for more text. Torch-free, so every rule is
unit-testable without a model; the scheduler drives it and the model runner embeds what it
says to feed.

The rules follow the reference's `Qwen2LM.inference_bistream` (CosyVoice 2) token for
token (see docs/bistream.md):

- the prompt text starts the text cache; the input starts as [SOS];
- each piece is one iteration of the reference's loop: while prompt speech remains, append
  blocks of 5 text + 15 prompt-speech tokens; once it is used up, decode until FILL. After a
  FILL (or at the very start) the next input is 5 cached text tokens; with fewer cached,
  wait for the next piece. Pieces are processed one at a time, in order, even when several
  arrived while the LLM was decoding, so the tokens never depend on arrival timing;
- FILL is forced when the output count (FILL included) reaches next_fill_index; a sampled
  FILL sets it to 16 outputs later. EOS is masked until the text ends;
- at the end of the text: [remaining text, TASK_ID] is appended and decoding runs with EOS
  allowed. `refeed_quirk` keeps the reference's behaviour of also re-feeding the input the
  last step already fed (and dropping unused prompt speech); False feeds the training
  layout instead: [remaining text, TASK_ID, remaining prompt speech].
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from enum import Enum
from typing import Sequence

from services.llm.model.prompt import InputSegment, SegmentKind, segments_length

MIX_TEXT = 5  # text tokens per interleaved block (the yaml's mix_ratio[0])
MIX_SPEECH = 15  # speech tokens per block (mix_ratio[1])
SOS = InputSegment(SegmentKind.SOS)
TASK_ID = InputSegment(SegmentKind.TASK_ID)


class BistreamError(ValueError):
    """Text pushed after the end of text; the message names the field."""


class FeedState(Enum):
    WAITING_TEXT = "waiting_text"  # holds its KV slot (once it has one); never scheduled
    EXTEND = "extend"  # has unfed input rows: a prefill that continues at num_cached
    DECODE = "decode"  # feeds back its last sampled token


class TokenOutcome(Enum):
    EMIT = "emit"  # a speech token for the caller
    FILL = "fill"  # the LLM wants more text: not sent, the sequence pauses
    STOP = "stop"  # EOS at the end, or a special id the reference rejects


@dataclass(eq=False)
class BistreamFeed:
    speech_token_size: int
    text_cache: list[int]
    prompt_speech: list[int]
    next_fill_index: int
    max_token_text_ratio: float
    refeed_quirk: bool = True
    pieces: deque[tuple[int, ...]] = field(default_factory=deque)
    text_ended: bool = False
    final: bool = False  # the text ended: EOS allowed, no more FILL
    state: FeedState = FeedState.WAITING_TEXT
    pending: list[InputSegment] = field(default_factory=lambda: [SOS])  # the reference's lm_input
    last_fed: list[InputSegment] = field(default_factory=list)
    history: list[int] = field(default_factory=list)  # every sampled id, FILL included
    num_cached: int = 0  # positions already in the KV cache
    num_target_text_tokens: int = 0  # text tokens of the pieces (not the prompt text)

    @classmethod
    def start(
        cls,
        prompt_text_ids: Sequence[int],
        prompt_speech_tokens: Sequence[int],
        speech_token_size: int,
        max_token_text_ratio: float,
        refeed_quirk: bool = True,
    ) -> "BistreamFeed":
        num_prompt = len(prompt_speech_tokens)
        # The first FILL closes the 15-token block that the prompt speech left open.
        next_fill = (num_prompt // MIX_SPEECH + 1) * MIX_SPEECH - num_prompt
        return cls(speech_token_size, list(prompt_text_ids), list(prompt_speech_tokens), next_fill,
                   max_token_text_ratio, refeed_quirk)

    @property
    def fill_token(self) -> int:
        return self.speech_token_size + 2

    @property
    def eos_token(self) -> int:
        return self.speech_token_size

    @property
    def num_pending(self) -> int:
        return segments_length(self.pending)

    @property
    def positions_needed(self) -> int:
        """Cache positions the next step of this sequence writes (0 while waiting)."""
        if self.state is FeedState.EXTEND:
            return self.num_pending
        return 1 if self.state is FeedState.DECODE else 0

    @property
    def max_tokens(self) -> int | None:
        """Emitted-token cap, known once the text ended (None before: the FILL cadence bounds
        the text phases to 15 tokens per 5 text tokens anyway)."""
        if not self.final:
            return None
        return int(self.num_target_text_tokens * self.max_token_text_ratio)

    # --- text in -------------------------------------------------------------------------
    def push_piece(self, ids: Sequence[int]) -> None:
        if self.text_ended:
            raise BistreamError("text: a piece arrived after the end of text")
        self.pieces.append(tuple(ids))
        self.num_target_text_tokens += len(ids)
        self._advance()

    def end_text(self) -> None:
        if self.text_ended:
            raise BistreamError("text: the end of text was already signalled")
        self.text_ended = True
        self._advance()

    def _advance(self) -> None:
        """While waiting, take queued pieces (one reference iteration each), then the end."""
        while self.state is FeedState.WAITING_TEXT:
            if self.pieces:
                self._iterate(self.pieces.popleft())
            elif self.text_ended and not self.final:
                self._begin_final()
            else:
                return

    def _take_text(self, count: int) -> InputSegment:
        taken, self.text_cache = self.text_cache[:count], self.text_cache[count:]
        return InputSegment(SegmentKind.TEXT, tuple(taken))

    def _iterate(self, piece: tuple[int, ...]) -> None:
        self.text_cache.extend(piece)
        while self.prompt_speech and len(self.text_cache) >= MIX_TEXT:
            speech, self.prompt_speech = self.prompt_speech[:MIX_SPEECH], self.prompt_speech[MIX_SPEECH:]
            self.pending += [self._take_text(MIX_TEXT), InputSegment(SegmentKind.SPEECH, tuple(speech))]
        if self.prompt_speech:
            return  # not enough text to interleave the rest of the prompt speech yet
        after_fill = bool(self.history) and self.history[-1] == self.fill_token
        at_start = not self.history and self.pending == [SOS]
        if after_fill or at_start:
            if len(self.text_cache) < MIX_TEXT:
                return  # wait for more text
            # After a FILL the reference *replaces* its input: what it held was already fed.
            self.pending = [self._take_text(MIX_TEXT)] if after_fill else self.pending + [self._take_text(MIX_TEXT)]
        # Otherwise the interleaved prompt blocks were just completed: decode from them as they are.
        self.state = FeedState.EXTEND

    def _begin_final(self) -> None:
        self.final = True
        tail = [self._take_text(len(self.text_cache)), TASK_ID]
        if self.pending:  # nothing decoded yet: the unfed input goes first, as in the reference
            head = self.pending
        else:  # after a FILL the reference's input still holds what the last step fed
            head = list(self.last_fed) if self.refeed_quirk else []
        if not self.refeed_quirk and self.prompt_speech:
            tail.append(InputSegment(SegmentKind.SPEECH, tuple(self.prompt_speech)))
        self.prompt_speech = []  # the reference drops what was not interleaved
        self.pending = head + tail
        self.state = FeedState.EXTEND

    # --- tokens out ----------------------------------------------------------------------
    def forced_token(self) -> int | None:
        """FILL when the output count reaches next_fill_index (no draw from the generator)."""
        if not self.final and len(self.history) == self.next_fill_index:
            return self.fill_token
        return None

    def masked_token(self) -> int | None:
        """EOS is masked in every text-waiting phase (the reference's ignore_eos=True)."""
        return None if self.final else self.eos_token

    def on_step(self, token: int) -> TokenOutcome:
        """Account for what the step fed, then apply the token it produced."""
        if self.state is FeedState.EXTEND:
            self.num_cached += self.num_pending
            self.last_fed, self.pending = self.pending, []
        elif self.state is FeedState.DECODE:
            self.num_cached += 1
            self.last_fed = [InputSegment(SegmentKind.SPEECH, (self.history[-1],))]
        else:
            raise BistreamError("a step ran for a sequence that was waiting for text")
        if token == self.fill_token and not self.final:
            self.next_fill_index = len(self.history) + MIX_SPEECH + 1
            self.history.append(token)
            self.state = FeedState.WAITING_TEXT
            self._advance()
            return TokenOutcome.FILL
        self.history.append(token)
        if token >= self.speech_token_size:
            # EOS once the text ended; any other special id the reference raises on.
            return TokenOutcome.STOP
        self.state = FeedState.DECODE
        return TokenOutcome.EMIT
