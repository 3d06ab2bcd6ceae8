"""What the LLM is asked, as token ids, per synthesis mode; torch-free.

The LLM input is `[SOS, E_text(prompt_text ++ text), TASK_ID, E_speech(prompt_speech_tokens)]`.
Which prompt text and which prompt speech tokens go in depends on the mode (the reference's
frontend deletes the rest before calling the LLM); the flow stage still gets the prompt
tokens in every mode but sft, which is the caller's business, not the LLM's.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Sequence


class PromptError(ValueError):
    """An LLM request whose inputs cannot be assembled; the message names the field."""


class SynthesisMode(str, Enum):
    SFT = "sft"
    ZERO_SHOT = "zero_shot"
    CROSS_LINGUAL = "cross_lingual"
    INSTRUCT2 = "instruct2"


@dataclass(frozen=True)
class LLMPrompt:
    """The assembled request. `text_ids` is prompt text (or instruct text) ++ target text."""

    text_ids: tuple[int, ...]
    speech_tokens: tuple[int, ...]
    num_target_text_tokens: int  # N of the length rules: the target text only

    @property
    def num_positions(self) -> int:
        """Length of the LLM input: SOS + text + TASK_ID + prompt speech."""
        return len(self.text_ids) + len(self.speech_tokens) + 2


def _ids(name: str, values: Sequence[int]) -> tuple[int, ...]:
    ids = tuple(values)
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in ids):
        raise PromptError(f"{name} must be a sequence of integer ids")
    return ids


def build_prompt(
    mode: SynthesisMode | str,
    text_ids: Sequence[int],
    *,
    prompt_text_ids: Sequence[int] = (),
    prompt_speech_tokens: Sequence[int] = (),
    instruct_text_ids: Sequence[int] = (),
) -> LLMPrompt:
    """Pick the mode's LLM inputs (cosyvoice-facts §3.3):

    - sft, cross_lingual: target text only, no prompt speech;
    - zero_shot: prompt transcript ++ target text, then the prompt speech tokens;
    - instruct2: instruct text (raw, with its `<|endofprompt|>`) ++ target text, no prompt speech.
    """
    try:
        mode = SynthesisMode(mode)
    except ValueError:
        names = ", ".join(m.value for m in SynthesisMode)
        raise PromptError(f"mode {mode!r} is not one of {names}") from None
    text = _ids("text_ids", text_ids)
    if not text:
        raise PromptError("text_ids is empty: the LLM needs target text (its length sets the limits)")
    prefix: tuple[int, ...] = ()
    speech: tuple[int, ...] = ()
    if mode is SynthesisMode.ZERO_SHOT:
        prefix = _ids("prompt_text_ids", prompt_text_ids)
        speech = _ids("prompt_speech_tokens", prompt_speech_tokens)
        if not prefix or not speech:
            raise PromptError("zero_shot needs non-empty prompt_text_ids and prompt_speech_tokens")
    elif mode is SynthesisMode.INSTRUCT2:
        prefix = _ids("instruct_text_ids", instruct_text_ids)
        if not prefix:
            raise PromptError("instruct2 needs non-empty instruct_text_ids")
    return LLMPrompt(text_ids=prefix + text, speech_tokens=speech, num_target_text_tokens=len(text))


def check_prompt_ids(prompt: LLMPrompt, text_vocab_size: int, speech_token_size: int) -> None:
    """Every id must index its embedding table (prompt speech: real tokens, no specials)."""
    bad_text = [t for t in prompt.text_ids if not 0 <= t < text_vocab_size]
    if bad_text:
        raise PromptError(f"text_ids {bad_text[:5]} are outside the text vocabulary [0, {text_vocab_size})")
    bad_speech = [t for t in prompt.speech_tokens if not 0 <= t < speech_token_size]
    if bad_speech:
        raise PromptError(
            f"prompt_speech_tokens {bad_speech[:5]} are outside the speech codebook [0, {speech_token_size})"
        )


def length_limits(
    num_target_text_tokens: int, min_token_text_ratio: float, max_token_text_ratio: float
) -> tuple[int, int]:
    """(min_len, max_len) = (int(N * min_ratio), int(N * max_ratio)), N = target text tokens.

    EOS is masked for the first min_len steps; at most max_len tokens are emitted.
    """
    return (
        int(num_target_text_tokens * min_token_text_ratio),
        int(num_target_text_tokens * max_token_text_ratio),
    )


class SegmentKind(str, Enum):
    SOS = "sos"
    TASK_ID = "task_id"
    TEXT = "text"  # text token ids, through the Qwen text embedding
    SPEECH = "speech"  # speech token ids, through speech_embedding


@dataclass(frozen=True)
class InputSegment:
    """A run of LLM input rows described by ids, so torch-free code (the bistream feed, the
    scheduler) can say what to feed and the model runner embeds it."""

    kind: SegmentKind
    ids: tuple[int, ...] = ()

    @property
    def length(self) -> int:
        return 1 if self.kind in (SegmentKind.SOS, SegmentKind.TASK_ID) else len(self.ids)


def segments_length(segments: Sequence[InputSegment]) -> int:
    return sum(segment.length for segment in segments)
